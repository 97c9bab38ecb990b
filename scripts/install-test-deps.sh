#!/usr/bin/env bash
# install-test-deps.sh installs what the tests need beyond Go, when it is missing:
# Debian's python3-websockets (the Python client's one dependency), Debian's chromium
# (the browser test), the browser test's pinned npm packages, and Debian's nginx (the
# test of docs/deploy/nginx.conf in front of two replicas, through scripts/nginx.sh). Idempotent; needs
# root (or sudo) only when something must be installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'test-deps: %s\n' "$*" >&2; }

apt_install() {
	local sudo=
	[ "$(id -u)" = 0 ] || sudo=sudo
	if [ -z "${APT_UPDATED:-}" ]; then
		$sudo apt-get update -qq >/dev/null || { say "apt-get update failed"; exit 1; }
		APT_UPDATED=1
	fi
	say "installing $*"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null ||
		{ say "could not install $* with apt-get"; exit 1; }
}

want=()
/usr/bin/python3 -c 'import websockets' 2>/dev/null || want+=(python3-websockets)
[ -x /usr/bin/chromium ] || want+=(chromium)
[ ${#want[@]} -eq 0 ] || apt_install "${want[@]}"

"$root/scripts/nginx.sh" >/dev/null

if [ -f "$root/web/test/package-lock.json" ] && [ ! -d "$root/web/test/node_modules/playwright-core" ]; then
	say "installing the browser test's npm packages (npm ci)"
	(cd "$root/web/test" && npm ci --silent --no-audit --no-fund)
fi
