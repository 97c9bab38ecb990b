#!/usr/bin/env bash
# scripts/nginx.sh: prints the path of an nginx binary, installing Debian's nginx
# package (apt-get, as root or through sudo) when there is none. For the tests that
# run replicas behind docs/deploy/nginx.conf, and for trying that file by hand:
#   "$(scripts/nginx.sh)" -t -c "$PWD/docs/deploy/nginx.conf" -p /tmp/nginx-prefix
# Messages go to stderr; stdout holds only the path.
set -euo pipefail

say() { echo "nginx.sh: $*" >&2; }

find_nginx() {
	command -v nginx 2>/dev/null && return 0
	# Debian installs it in /usr/sbin, which a non-root PATH may lack.
	[ -x /usr/sbin/nginx ] && { echo /usr/sbin/nginx; return 0; }
	return 1
}

if bin=$(find_nginx); then
	echo "$bin"
	exit 0
fi

say "installing Debian's nginx (apt-get)"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
# The package's service is not wanted: its default site would take port 80. Where
# invoke-rc.d honours policy-rc.d (containers, chroots), keep it from starting.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
	policy=/usr/sbin/policy-rc.d
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod 755 "$policy"
fi
unpolicy() { [ -z "$policy" ] || $sudo rm -f "$policy"; }
trap unpolicy EXIT
$sudo apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx >/dev/null ||
	{ say "could not install nginx: install it, or put it on PATH"; exit 1; }
bin=$(find_nginx) || { say "nginx installed, but no binary found"; exit 1; }
echo "$bin"
