#!/usr/bin/env bash
# run_tests.sh: the Python client's tests, against a server they build and start
# themselves. Installs Debian's python3-websockets first when /usr/bin/python3 cannot
# import websockets (apt-get, as root or with sudo). Run from anywhere:
#   bash clients/python/run_tests.sh
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
py=/usr/bin/python3
say() { printf 'python-client: %s\n' "$*" >&2; }

if [ ! -x "$py" ]; then
	say "$py is missing: install Debian's python3"
	exit 1
fi

if ! "$py" -c 'import websockets' 2>/dev/null; then
	sudo=
	[ "$(id -u)" = 0 ] || sudo=sudo
	say "installing python3-websockets (apt-get)"
	$sudo apt-get update -qq >/dev/null &&
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-websockets >/dev/null ||
		say "could not install python3-websockets; the tests will say what is missing"
fi

cd "$root"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$py" -m unittest discover -s clients/python/tests -v 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# One plain summary line: "N passed, N failed" (unittest itself prints "Ran N tests").
ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$log" | tail -1)
failed=$(grep -cE '^(FAIL|ERROR): ' "$log")
skipped=$(grep -cE ' \.\.\. skipped' "$log")
if [ -n "$ran" ]; then
	echo "python-client: $((ran - failed - skipped)) passed, $failed failed, $skipped skipped"
fi
if [ "$status" -eq 0 ] && { [ -z "$ran" ] || [ "$ran" -eq 0 ]; }; then
	say "no test ran"
	exit 1
fi
exit "$status"
