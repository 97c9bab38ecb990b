#!/usr/bin/env bash
# run.sh runs the browser test of the demo page against a real server:
#   1. installs what is missing: Debian's chromium, the test's npm packages (npm ci),
#      and the model, labels and ONNX Runtime (scripts/setup.sh, idempotent);
#   2. builds infergate into a temporary folder and starts it on a free loopback port
#      with a fresh database, whose first start writes the demo user's key;
#   3. runs `node --test web/test/` with INFERGATE_URL and INFERGATE_API_KEY set (and
#      INFERGATE_SLOW_API_KEY, a key limited to 3 frames per second; INFERGATE_BIN and
#      INFERGATE_DB, the binary and its database, with which the 1.1 tests create the
#      users and keys they need: `infergate keys create`);
#   4. stops the server (SIGTERM) and exits with the test's status.
# Screenshots land in out/screenshots/. Set KEEP_TMP=1 to keep the temp folder (the
# server's log is there).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
say() { printf 'web/test: %s\n' "$*" >&2; }
die() { printf 'web/test: error: %s\n' "$*" >&2; exit 1; }

# --- 1. What the test needs ---------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
	sudo=
	[ "$(id -u)" = 0 ] || sudo=sudo
	say "installing Debian's chromium"
	$sudo apt-get update -qq >/dev/null || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null ||
		die "could not install chromium with apt-get"
fi
command -v node >/dev/null || die "node is needed (apt-get install nodejs npm)"
command -v go >/dev/null || die "go is needed to build the server"
if [ ! -d web/test/node_modules/playwright-core ]; then
	command -v npm >/dev/null || die "npm is needed (apt-get install npm)"
	say "installing the test's npm packages (npm ci)"
	(cd web/test && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in web/test"
fi
scripts/setup.sh || die "scripts/setup.sh could not install the model and ONNX Runtime"

# --- 2. Build and start the server --------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/infergate-webtest.XXXXXX")
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			say "the server did not stop within 10 s of SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	fi
	if [ "${KEEP_TMP:-}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building the server"
CGO_ENABLED=1 go build -o "$tmp/infergate" ./cmd/infergate || die "go build failed"

# Port 0: the server picks a free port and prints "listening on http://ADDR".
"$tmp/infergate" serve --db "$tmp/ig.db" --addr 127.0.0.1:0 >"$tmp/server.log" 2>&1 &
pid=$!
url=
for _ in $(seq 1 600); do # up to 60 s: the model loads first
	url=$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$tmp/server.log" | head -n 1)
	[ -n "$url" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; die "the server exited before listening"; }
	sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/server.log" >&2; die "the server did not print its address within 60 s"; }
keyfile="$tmp/demo-api-key.txt"
[ -s "$keyfile" ] || { cat "$tmp/server.log" >&2; die "the server wrote no demo key to $keyfile"; }
key=$(tr -d '[:space:]' <"$keyfile")
# A second key, limited to 3 frames per second, for the webcam test's rate limiting.
slow_key=$("$tmp/infergate" keys create --email webcam-test@localhost --fps 3 --db "$tmp/ig.db" 2>/dev/null) ||
	die "infergate keys create failed"
say "server at $url"

# --- 3. Run the test ----------------------------------------------------------------
mkdir -p out/screenshots
status=0
INFERGATE_URL="$url" INFERGATE_API_KEY="$key" INFERGATE_SLOW_API_KEY="$slow_key" \
	INFERGATE_BIN="$tmp/infergate" INFERGATE_DB="$tmp/ig.db" node --test web/test/ || status=$?
if [ "$status" != 0 ]; then
	say "the browser test failed (status $status); the server's log:"
	tail -n 40 "$tmp/server.log" >&2
else
	say "screenshots in out/screenshots/"
fi
exit "$status"
