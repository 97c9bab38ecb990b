#!/usr/bin/env bash
# scripts/with-services.sh CMD...: runs CMD with INFERGATE_TEST_POSTGRES naming a
# PostgreSQL server and INFERGATE_TEST_REDIS naming a Redis server that answer, for
# the tests that need them (storage, cmd/infergate, the shared store of replicas).
# Each is resolved on its own, in this order:
#   - the one the variable names, if set (used as it is);
#   - else the machine's own, if it answers: PostgreSQL
#     postgres://postgres@127.0.0.1:5432 (trust auth), Redis redis://127.0.0.1:6379/0;
#   - else a private server started here, in a temporary folder on a free port, from
#     Debian's postgresql or redis-server package (installed when missing), and
#     stopped after CMD.
# INFERGATE_TEST_PRIVATE_SERVICES=1 starts private ones even when the machine's answer
# (to try that path); a variable that is set still wins. Nothing is ever skipped: if a
# server cannot be had, this says why and fails.
set -euo pipefail

say() { echo "with-services: $*" >&2; }

private=0
[ "${INFERGATE_TEST_PRIVATE_SERVICES:-}" = 1 ] && private=1
why="the machine's did not answer"
[ $private = 1 ] && why="INFERGATE_TEST_PRIVATE_SERVICES=1"

# What to stop when this script ends, in the reverse order of starting.
stops=()
cleanup() {
	local i
	for ((i = ${#stops[@]} - 1; i >= 0; i--)); do "${stops[i]}"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

apt_install() { # apt_install PACKAGE: Debian's package, as root or through sudo
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	say "installing Debian's $1 (apt-get) for a private test server"
	$sudo apt-get update -qq >/dev/null 2>&1 || true
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------

pg_answers() { # pg_answers URL: PostgreSQL at URL takes connections
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -d "$1" -t 3
	else # no client tools: the port at least (the tests' own check says more)
		timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null
	fi
}

pg_bindir="" pg_dir="" pg_as=()
pg_stop() {
	"${pg_as[@]}" "$pg_bindir/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$pg_dir"
}

pg_private() { # starts a private PostgreSQL; sets INFERGATE_TEST_POSTGRES
	pg_bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
	if [ -z "$pg_bindir" ] || [ ! -x "$pg_bindir/initdb" ]; then
		apt_install postgresql ||
			{ say "could not install postgresql: set INFERGATE_TEST_POSTGRES to a server"; exit 1; }
		pg_bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
	fi
	pg_dir=$(mktemp -d)
	if [ "$(id -u)" = 0 ]; then
		# initdb refuses to run as root: the package's postgres user runs the server.
		chown postgres "$pg_dir"
		pg_as=(runuser -u postgres --)
	fi
	local port
	port=$(free_port)
	stops+=(pg_stop)
	"${pg_as[@]}" "$pg_bindir/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync >"$pg_dir/initdb.log" 2>&1 ||
		{ cat "$pg_dir/initdb.log" >&2; say "initdb failed"; exit 1; }
	"${pg_as[@]}" "$pg_bindir/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
		-o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
		{ cat "$pg_dir/server.log" >&2; say "the private PostgreSQL did not start"; exit 1; }
	INFERGATE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	say "private PostgreSQL on 127.0.0.1:$port ($why)"
}

pg_machine="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
if [ -z "${INFERGATE_TEST_POSTGRES:-}" ]; then
	if [ $private = 0 ] && pg_answers "$pg_machine"; then
		INFERGATE_TEST_POSTGRES=$pg_machine
	else
		pg_private
	fi
fi
export INFERGATE_TEST_POSTGRES

# --- Redis ------------------------------------------------------------------------

redis_answers() { # redis_answers PORT: a Redis on 127.0.0.1:PORT answers PING
	local line=""
	if command -v redis-cli >/dev/null 2>&1; then
		line=$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) || return 1
		[ "$line" = PONG ]
	else
		line=$(timeout 3 bash -c '
			exec 3<>/dev/tcp/127.0.0.1/$1 || exit 1
			printf "PING\r\n" >&3
			IFS= read -r line <&3 && printf "%s" "$line"' _ "$1" 2>/dev/null) || return 1
		[ "${line%$'\r'}" = +PONG ]
	fi
}

redis_pid="" redis_dir=""
redis_stop() {
	if [ -n "$redis_pid" ]; then
		kill "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	rm -rf "$redis_dir"
}

redis_private() { # starts a private Redis; sets INFERGATE_TEST_REDIS
	local bin
	bin=$(command -v redis-server || true)
	if [ -z "$bin" ]; then
		apt_install redis-server ||
			{ say "could not install redis-server: set INFERGATE_TEST_REDIS to a server"; exit 1; }
		bin=$(command -v redis-server)
	fi
	redis_dir=$(mktemp -d)
	local port
	port=$(free_port)
	stops+=(redis_stop)
	"$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" \
		--daemonize no >"$redis_dir/server.log" 2>&1 &
	redis_pid=$!
	local i
	for ((i = 0; i < 100; i++)); do # up to 10 s
		redis_answers "$port" && break
		if ! kill -0 "$redis_pid" 2>/dev/null; then
			cat "$redis_dir/server.log" >&2
			say "the private Redis exited"
			exit 1
		fi
		sleep 0.1
	done
	redis_answers "$port" ||
		{ cat "$redis_dir/server.log" >&2; say "the private Redis did not answer PING"; exit 1; }
	INFERGATE_TEST_REDIS=redis://127.0.0.1:$port/0
	say "private Redis on 127.0.0.1:$port, pid $redis_pid ($why)"
}

if [ -z "${INFERGATE_TEST_REDIS:-}" ]; then
	if [ $private = 0 ] && redis_answers 6379; then
		INFERGATE_TEST_REDIS=redis://127.0.0.1:6379/0
	else
		redis_private
	fi
fi
export INFERGATE_TEST_REDIS

# --- the command ------------------------------------------------------------------

if [ ${#stops[@]} = 0 ]; then
	exec "$@" # nothing to stop after
fi
rc=0
"$@" || rc=$?
exit $rc
