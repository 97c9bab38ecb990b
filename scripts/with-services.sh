#!/usr/bin/env bash
# scripts/with-services.sh CMD...: runs CMD with INFERGATE_TEST_POSTGRES naming a
# PostgreSQL server that answers, for the tests that need one (storage, cmd/infergate):
#   - the one INFERGATE_TEST_POSTGRES names, if set (used as it is);
#   - else the machine's own, postgres://postgres@127.0.0.1:5432 (trust auth), if it
#     answers;
#   - else a private server started here, in a temporary folder on a free port, from
#     Debian's postgresql package (installed when missing), and stopped after CMD.
# INFERGATE_TEST_PRIVATE_SERVICES=1 starts the private one even when the machine's
# answers (to try this path). Nothing is ever skipped: if no server can be had, this
# says why and fails.
set -euo pipefail

say() { echo "with-services: $*" >&2; }

answers() { # answers URL: PostgreSQL at URL takes connections
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -d "$1" -t 3
	else # no client tools: the port at least (the tests' own check says more)
		timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null
	fi
}

machine=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable
if [ -n "${INFERGATE_TEST_POSTGRES:-}" ]; then
	exec "$@"
fi
if [ "${INFERGATE_TEST_PRIVATE_SERVICES:-}" != 1 ] && answers "$machine"; then
	INFERGATE_TEST_POSTGRES=$machine exec "$@"
fi

# A private server.
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
	say "installing Debian's postgresql (apt-get) for a private test server"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq >/dev/null 2>&1 || true
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null ||
		{ say "could not install postgresql: set INFERGATE_TEST_POSTGRES to a server"; exit 1; }
	bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
dir=$(mktemp -d)
as=()
if [ "$(id -u)" = 0 ]; then
	# initdb refuses to run as root: the package's postgres user runs the server.
	chown postgres "$dir"
	as=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
	"${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap stop EXIT
"${as[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
	{ cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
"${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
	-o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
	{ cat "$dir/server.log" >&2; say "the private PostgreSQL did not start"; exit 1; }
url=postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable
why="the machine's did not answer"
[ "${INFERGATE_TEST_PRIVATE_SERVICES:-}" = 1 ] && why="INFERGATE_TEST_PRIVATE_SERVICES=1"
say "private PostgreSQL on 127.0.0.1:$port ($why)"
rc=0
INFERGATE_TEST_POSTGRES=$url "$@" || rc=$?
exit $rc
