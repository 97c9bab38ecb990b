#!/usr/bin/env bash
# scripts/ab.sh: measure two builds of infergate against each other, the same way.
#
#   scripts/ab.sh [-r ROUNDS] [-d DURATION] REV_A REV_B [-- LOADGEN FLAGS...]
#
# Builds infergate at two git revisions (a commit, a branch, or "." for the working
# tree), starts one server of each on its own fresh database, and runs cmd/loadgen
# (built from the working tree) against them in turn, A then B, ROUNDS times (default
# 3), each run DURATION long (default 8s) after 2 s of warm-up. Alternating spreads
# the machine's drift over both. It prints one line per run and the mean of each side.
#
# The servers take extra flags from A_FLAGS and B_FLAGS (e.g. B_FLAGS="--max-batch 2",
# with REV_A = REV_B, to measure a flag), and their databases from A_DB and B_DB
# (default a SQLite file each; a postgres:// URL names an existing database, e.g.
# B_DB=postgres://... B_FLAGS="--redis redis://127.0.0.1:6379/0" to measure the
# shared store), and environment variables from A_ENV and B_ENV (e.g.
# B_ENV="GOMAXPROCS=4"). Both run at once, so the idle one costs a
# little; the machine should otherwise be idle (the script says when it is not).
# Examples:
#   scripts/ab.sh 3d61229 . -- --mode ws-binary --clients 8 --depth 4 --size 224x224
#   B_FLAGS="--max-batch 2" scripts/ab.sh . . -- --mode fairness --greedy 8 --size 224x224
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
duration=8s
while getopts "r:d:" o; do
	case $o in
	r) rounds=$OPTARG ;;
	d) duration=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || {
	sed -n '2,20p' "$0"
	exit 2
}
rev_a=$1 rev_b=$2
shift 2
[ "${1:-}" = "--" ] && shift

scripts/setup.sh >/dev/null
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for w in "$tmp"/wt-*; do [ -d "$w" ] && git worktree remove --force "$w" >/dev/null 2>&1; done
	rm -rf "$tmp"
}
trap cleanup EXIT

build() { # build SIDE REV
	local out=$tmp/infergate-$1
	if [ "$2" = "." ]; then
		go build -o "$out" ./cmd/infergate
	else
		git worktree add -q --detach "$tmp/wt-$1" "$2"
		(cd "$tmp/wt-$1" && go build -o "$out" ./cmd/infergate)
	fi
}
build a "$rev_a"
build b "$rev_b"
go build -o "$tmp/loadgen" ./cmd/loadgen

declare -A url key light pid
port=18300
for side in a b; do
	dbvar=${side^^}_DB
	db=${!dbvar:-$tmp/$side.db}
	run=$(basename "$tmp" | tr 'A-Z.' 'a-z-')
	key[$side]=$("$tmp/infergate-$side" keys create --db "$db" --email "$side-$run@ab.local" --rpm 1000000 --fps 100000 --max-connections 4096 | head -n1)
	light[$side]=$("$tmp/infergate-$side" keys create --db "$db" --email "light-$side-$run@ab.local" --rpm 1000000 --fps 100000 --max-connections 8 | head -n1)
	flags=A_FLAGS
	[ $side = b ] && flags=B_FLAGS
	# shellcheck disable=SC2086 # the flags are a list
	envs=A_ENV
	[ $side = b ] && envs=B_ENV
	env ${!envs:-} "$tmp/infergate-$side" serve --db "$db" --addr 127.0.0.1:$port ${!flags:-} >"$tmp/$side.log" 2>&1 &
	pid[$side]=$!
	pids+=("${pid[$side]}")
	url[$side]=http://127.0.0.1:$port
	port=$((port + 1))
done
for side in a b; do
	for _ in $(seq 1 300); do
		curl -fsS -o /dev/null "${url[$side]}/readyz" 2>/dev/null && break
		sleep 0.1
	done
done

echo "A = $rev_a ${A_ENV:-} ${A_FLAGS:-}; B = $rev_b ${B_ENV:-} ${B_FLAGS:-}; loadgen $*; $rounds rounds of $duration"
for r in $(seq 1 "$rounds"); do
	for side in a b; do
		INFERGATE_API_KEY=${key[$side]} INFERGATE_LIGHT_KEY=${light[$side]} "$tmp/loadgen" --url "${url[$side]}" \
			--server-pid "${pid[$side]}" --duration "$duration" --warmup 2s "$@" >"$tmp/$side-$r.json"
	done
done
python3 - "$tmp" "$rounds" <<'PY'
import json, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
def line(d):
    f = d.get("fairness")
    if f:
        l = f["light_loaded_ms"]
        return {"greedy_fps": round(f["greedy_fps"]), "light_p50": l["p50"], "light_p90": l["p90"], "light_p99": l["p99"]}
    return {"fps": d["throughput_fps"], "p50": d["latency_ms"]["p50"], "p99": d["latency_ms"]["p99"],
            "server_cores": d.get("server_cpu_cores")}
sums = {}
for r in range(1, rounds + 1):
    for side in "ab":
        v = line(json.load(open(f"{tmp}/{side}-{r}.json")))
        print(side.upper(), r, v)
        for k, x in v.items():
            if isinstance(x, (int, float)):
                sums.setdefault(side, {}).setdefault(k, []).append(x)
for side in "ab":
    print(side.upper(), "mean", {k: round(sum(v) / len(v), 1) for k, v in sums[side].items()})
PY
