#!/usr/bin/env bash
# bench.sh measures the raw ONNX Runtime throughput of a model and then the server
# under load with the same model, in the same run, and prints a markdown table of
# frames/s, latency and the ratio server ÷ raw ONNX Runtime, then the scenarios of
# issue 9's goals (burst, fairness, idle cost) in a second table. `make bench` runs it.
#
# Steps, one at a time (the measurements never overlap, since they share the cores):
#   1. build infergate, loadgen and ortbench into a temporary folder;
#   2. start a server on a free port of 127.0.0.1 with a temporary database, and
#      create a key with limits high enough not to get in the way;
#   3. ortbench, while the server is idle;
#   4. loadgen: ws-binary and ws-text x 1 and 8 clients x 224x224 and 640x480 frames
#      (depth DEPTH); one client one frame at a time (ws-text and post, 224x224);
#      post with 1 and 8 clients (the original photo), 8 clients 640x480; sse with 1
#      client (224x224, depth DEPTH); then ortbench and POST 640x480 x 8 clients on
#      the ResNet-18-sized model (RESNET_MODEL), in a table of their own; ortbench
#      runs again after the MobileNet rows, to show the machine's drift;
#   5. the scenarios (SCENARIOS), on a fresh server started with --max-streams raised
#      to STREAMS + 64 and keys allowing that many connections: idle first (while the
#      server has not yet grown its heap under load, so that its RSS growth is the
#      streams'), then burst, burst-post and fairness;
#   6. the tables, on stdout and in OUT/table.md, with issue 11's goals checked;
#      every run's JSON, ortbench's and the
#      servers' logs stay in OUT. A goal missed is information, not a failure.
#
# Environment (all optional):
#   MODEL         model file (default assets/models/mobilenetv2-12-int8.onnx); both
#                 ortbench and the server use it
#   DURATION      measured window of each load run (default 10s)
#   WARMUP        load before each window, not measured (default 2s)
#   DEPTH         frames a stream client keeps unanswered (default 4)
#   ORT_DURATION  duration of each ortbench configuration (default 5s)
#   IMAGE         photo to send (default assets/images/dog.jpg)
#   SERVER_FLAGS  extra flags for `infergate serve`, e.g. "--workers 1 --threads 2"
#   QUIET_WAIT    before each measurement, wait up to this many seconds for the other
#                 processes of the machine to use under 0.3 of a core (default 5; 0
#                 skips); the table shows how much CPU they used anyway
#   SCENARIOS     goal scenarios to run, in order (default "idle burst burst-post
#                 fairness"; empty skips them)
#   STREAMS       streams of the idle and burst scenarios, POSTs of burst-post
#                 (default 2000); the open-file limit (ulimit -Hn) must allow them
#   THROUGHPUT    0 skips ortbench and the throughput rows (only the scenarios)
#   RESNET_MODEL  the ResNet-18-sized model of the second table (default
#                 assets/models/resnet18-untrained.onnx, skipped when missing; empty
#                 skips it): ortbench on it, then POST 640x480 from 8 clients to a
#                 server running it
#   DB            the server's --db (default a SQLite file in a temporary folder): a
#                 postgres:// URL measures the server on PostgreSQL (the database must
#                 exist; this run's users have names of their own, bench-<time>@local)
#   REDIS         a redis://host:port/db URL: the server runs with --redis (needs a
#                 postgres:// DB), its keys under a prefix of this run's own
#   ORT_LIB       ONNX Runtime library (default third_party/onnxruntime/lib/libonnxruntime.so.1.24.1)
#   OUT           output folder (default out/bench/<UTC time>; out/bench/latest links to it)
#
# The exit status is 1 if a step failed (the table is still printed, with the
# failures under it), 0 otherwise.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MODEL=${MODEL:-assets/models/mobilenetv2-12-int8.onnx}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
DEPTH=${DEPTH:-4}
ORT_DURATION=${ORT_DURATION:-5s}
IMAGE=${IMAGE:-assets/images/dog.jpg}
SERVER_FLAGS=${SERVER_FLAGS:-}
QUIET_WAIT=${QUIET_WAIT:-5}
SCENARIOS=${SCENARIOS-idle burst burst-post fairness}
STREAMS=${STREAMS:-2000}
THROUGHPUT=${THROUGHPUT:-1}
resnet_asked=${RESNET_MODEL+set} # set by the caller: a missing file is then a failure
RESNET_MODEL=${RESNET_MODEL-assets/models/resnet18-untrained.onnx}
ORT_LIB=${ORT_LIB:-third_party/onnxruntime/lib/libonnxruntime.so.1.24.1}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-out/bench/$stamp}

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[ -f "$MODEL" ] || die "no model at $MODEL (run make setup, or set MODEL=...)"
[ -f "$ORT_LIB" ] || die "no ONNX Runtime library at $ORT_LIB (run make setup, or set ORT_LIB=...)"
[ -f "$IMAGE" ] || die "no image at $IMAGE (run make setup, or set IMAGE=...)"
command -v go >/dev/null || die "go is not on PATH"
command -v curl >/dev/null || die "curl is not on PATH"
for s in $SCENARIOS; do
	case "$s" in idle | burst | burst-post | fairness) ;; *) die "SCENARIOS: unknown scenario $s" ;; esac
done
case "$STREAMS" in '' | *[!0-9]*) die "STREAMS=$STREAMS: want a number" ;; esac
if [ -n "$SCENARIOS" ]; then
	# The server and loadgen each hold a descriptor per stream: raise the soft limit
	# to the hard one for both (children inherit it).
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((STREAMS + 256)) ] ||
		die "STREAMS=$STREAMS needs an open-file limit of at least $((STREAMS + 256)); it is $(ulimit -n) (hard $(ulimit -Hn))"
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/infergate-bench.XXXXXX")
server_pid=""

stop_server() {
	[ -n "$server_pid" ] || return 0
	if kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		# A graceful shutdown waits for what is in flight (bounded by
		# --shutdown-timeout); the bench has stopped sending, so 15 s is plenty.
		for _ in $(seq 1 150); do
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$server_pid" 2>/dev/null; then
			say "server did not stop within 15 s; killing it"
			kill -KILL "$server_pid" 2>/dev/null || true
		fi
	fi
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}
cleanup() {
	stop_server
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failures=()
fail() {
	say "FAILED: $*"
	failures+=("$*")
}

# machine_busy prints the busy CPU time of the whole machine so far, in clock ticks
# (1/100 s): user, nice, system, irq, softirq and steal of /proc/stat.
machine_busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# wait_quiet waits, at most QUIET_WAIT seconds, until the machine spends under 0.3 of
# a core in a second: the bench shares the cores with whatever else runs.
wait_quiet() {
	[ "$QUIET_WAIT" -gt 0 ] 2>/dev/null && [ -r /proc/stat ] || return 0
	local deadline=$((SECONDS + QUIET_WAIT)) a b
	while :; do
		a=$(machine_busy)
		sleep 1
		b=$(machine_busy)
		[ $((b - a)) -lt 30 ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			say "the machine is busy ($((b - a))% of a core used by other processes); measuring anyway"
			return 0
		fi
	done
}

# 1. Build.
say "building infergate, loadgen and ortbench"
export CGO_ENABLED=1
go build -o "$tmp/infergate" ./cmd/infergate || die "could not build cmd/infergate"
go build -o "$tmp/loadgen" ./cmd/loadgen || die "could not build cmd/loadgen"
have_ortbench=0
if [ -d cmd/ortbench ]; then
	if go build -o "$tmp/ortbench" ./cmd/ortbench; then
		have_ortbench=1
	else
		fail "could not build cmd/ortbench: the table will have no ratios"
	fi
else
	fail "cmd/ortbench does not exist: the table will have no ratios"
fi

# 2. Server and key.
db=${DB:-$tmp/bench.db}
if [ -n "${REDIS:-}" ]; then
	case "$db" in postgres://* | postgresql://*) ;; *) die "REDIS needs a postgres:// DB" ;; esac
	SERVER_FLAGS="$SERVER_FLAGS --redis $REDIS --redis-prefix bench-$stamp:"
fi
run=${stamp,,}
"$tmp/infergate" keys create --email bench-$run@local --rpm 1000000 --fps 100000 --max-connections 64 \
	--db "$db" >"$tmp/key" 2>"$tmp/key.err" || die "could not create the bench key: $(cat "$tmp/key.err")"
INFERGATE_API_KEY=$(head -n1 "$tmp/key")
case "$INFERGATE_API_KEY" in ig_*) ;; *) die "keys create printed no key" ;; esac
export INFERGATE_API_KEY # loadgen reads it: the key stays out of argument lists
if [ -n "$SCENARIOS" ]; then
	# The scenarios' user holds STREAMS streams at once; the fairness scenario's light
	# client is another user.
	"$tmp/infergate" keys create --email burst-$run@local --rpm 1000000 --fps 100000 --max-connections $((STREAMS + 64)) \
		--db "$db" >"$tmp/key-burst" 2>"$tmp/key.err" || die "could not create the scenarios' key: $(cat "$tmp/key.err")"
	"$tmp/infergate" keys create --email light-$run@local --rpm 1000000 --fps 100000 --max-connections 4 \
		--db "$db" >"$tmp/key-light" 2>"$tmp/key.err" || die "could not create the light client's key: $(cat "$tmp/key.err")"
	burst_key=$(head -n1 "$tmp/key-burst")
	light_key=$(head -n1 "$tmp/key-light")
fi

server_log=""
start_server() { # start_server LOG-NAME EXTRA-FLAGS...: sets server_pid, server_log and base
	server_log="$OUT/$1"
	shift
	say "starting the server (model $MODEL${SERVER_FLAGS:+, $SERVER_FLAGS}${*:+, $*})"
	# shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
	"$tmp/infergate" serve --db "$db" --addr 127.0.0.1:0 --model "$MODEL" --ort-lib "$ORT_LIB" \
		--demo-key-file "$tmp/demo-key.txt" $SERVER_FLAGS "$@" >"$tmp/server.out" 2>"$server_log" &
	server_pid=$!
	base=""
	for _ in $(seq 1 600); do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			tail -n 20 "$server_log" >&2
			die "the server exited during start (log above, and in $server_log)"
		fi
		base=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$tmp/server.out" | head -n1 | sed 's/^listening on //' || true)
		[ -n "$base" ] && break
		sleep 0.1
	done
	[ -n "$base" ] || die "the server did not say where it listens within 60 s (see $server_log)"
	for _ in $(seq 1 300); do
		curl -fsS -o /dev/null "$base/readyz" 2>/dev/null && break
		sleep 0.1
	done
	curl -fsS -o /dev/null "$base/readyz" || die "$base/readyz is not ready within 30 s"
	say "server ready at $base (pid $server_pid)"
}
[ "$THROUGHPUT" = 0 ] || start_server server.log

# 3. Raw ONNX Runtime, with the server idle.
# ortbench_run MODEL JSON: ortbench on MODEL into JSON; sets ort_note to the CPU it
# and the other processes used.
ort_note=""
ortbench_run() {
	local model=$1 json=$2
	ort_note=""
	[ "$have_ortbench" = 1 ] || return 0
	wait_quiet
	say "ortbench on $model ($ORT_DURATION per configuration; the server is idle)"
	local m0 m1 s0 elapsed
	m0=$(machine_busy)
	s0=$(date +%s%N)
	times >"$tmp/times0" # the CPU of waited-for children so far, to tell ortbench's own
	if "$tmp/ortbench" --model "$model" --ort-lib "$ORT_LIB" --duration "$ORT_DURATION" >"$json" 2>"$tmp/ortbench.err"; then
		times >"$tmp/times1"
		m1=$(machine_busy)
		[ -s "$json" ] || fail "ortbench printed nothing: the table will have no ratios"
		elapsed=$(($(date +%s%N) - s0))
		if [ "$elapsed" -gt 0 ]; then
			ort_note=$(awk -v m=$((m1 - m0)) -v t="$elapsed" '
				function sec(x, a) { split(x, a, /[ms]/); return a[1] * 60 + a[2] }
				FNR == 2 { c[FILENAME] = sec($1) + sec($2) }
				END {
					t /= 1e9
					own = c[ARGV[2]] - c[ARGV[1]]
					printf "During ortbench: ortbench used %.2f cores, other processes %.2f.", own / t, (m / 100 - own) / t
				}' "$tmp/times0" "$tmp/times1")
		fi
	else
		cat "$tmp/ortbench.err" >&2
		fail "ortbench exited with an error (above): the table will have no ratios"
		rm -f "$json"
	fi
}
ort_json="$OUT/ortbench.json"
if [ "$THROUGHPUT" != 0 ]; then
	ortbench_run "$MODEL" "$ort_json"
	main_ort_note=$ort_note
fi

# 4. Load runs, one after the other.
n=0
run() { # run NAME LOADGEN-FLAGS...
	local name=$1
	shift
	n=$((n + 1))
	local file
	file=$(printf '%s/%02d-%s.json' "${run_dir:-$OUT}" "$n" "$name")
	say "run $n: $name ($*)"
	local rc=0
	wait_quiet
	"$tmp/loadgen" --url "$base" --server-pid "$server_pid" --image "$IMAGE" \
		--duration "$DURATION" --warmup "$WARMUP" "$@" >"$file" 2>"$tmp/loadgen.err" || rc=$?
	if [ "$rc" != 0 ]; then
		cat "$tmp/loadgen.err" >&2
		fail "run $name: loadgen exit status $rc ($(tail -n1 "$tmp/loadgen.err"))"
		[ -s "$file" ] || rm -f "$file"
	fi
	kill -0 "$server_pid" 2>/dev/null || {
		tail -n 20 "$server_log" >&2
		die "the server died during run $name (log above, and in $server_log)"
	}
	sleep 1 # let the log writer and the sockets settle between runs
}

if [ "$THROUGHPUT" != 0 ]; then
	for mode in ws-binary ws-text; do
		for size in 224x224 640x480; do
			for clients in 1 8; do
				run "$mode-c$clients-$size" --mode "$mode" --clients "$clients" --depth "$DEPTH" --size "$size"
			done
		done
	done
	# One client, one frame at a time: the latency floor, against one model run.
	run ws-text-c1-d1-224x224 --mode ws-text --clients 1 --depth 1 --size 224x224
	run post-c1-224x224 --mode post --clients 1 --size 224x224
	run post-c1-orig --mode post --clients 1 --size orig
	run post-c8-orig --mode post --clients 8 --size orig
	run post-c8-640x480 --mode post --clients 8 --size 640x480
	run sse-c1-224x224 --mode sse --clients 1 --depth "$DEPTH" --size 224x224
	# ortbench again, the server idle: how far the machine drifted during the runs.
	ortbench_run "$MODEL" "$OUT/ortbench-after.json"
	stop_server
fi

# 4b. The ResNet-18-sized model: ortbench on it, then POST 640x480 from 8 clients,
# in a table of its own.
if [ "$THROUGHPUT" != 0 ] && [ -n "$RESNET_MODEL" ]; then
	if [ -f "$RESNET_MODEL" ]; then
		mkdir -p "$OUT/resnet"
		ortbench_run "$RESNET_MODEL" "$OUT/resnet/ortbench.json"
		resnet_ort_note=$ort_note
		main_model=$MODEL
		MODEL=$RESNET_MODEL
		start_server server-resnet.log
		run_dir="$OUT/resnet" run resnet-post-c8-640x480 --mode post --clients 8 --size 640x480
		stop_server
		MODEL=$main_model
	elif [ -n "$resnet_asked" ]; then
		fail "RESNET_MODEL=$RESNET_MODEL does not exist: no ResNet table"
	else
		say "no $RESNET_MODEL (make setup copies it from ../shared when that exists): no ResNet table"
	fi
fi

# 5. The goal scenarios, on a fresh server: its RSS has not grown under load yet.
if [ -n "$SCENARIOS" ]; then
	start_server server-scenarios.log --max-streams $((STREAMS + 64))
	export INFERGATE_API_KEY=$burst_key INFERGATE_LIGHT_KEY=$light_key
	for s in $SCENARIOS; do
		case "$s" in
		idle) run idle --mode idle --streams "$STREAMS" ;;
		burst) run burst --mode burst --streams "$STREAMS" --size 224x224 ;;
		burst-post) run burst-post --mode burst-post --streams "$STREAMS" --size 224x224 ;;
		fairness) run fairness --mode fairness --greedy 8 --depth "$DEPTH" --interval 200ms --size 224x224 ;;
		esac
	done
	stop_server
fi

# 6. The tables.
runs=("$OUT"/[0-9]*.json)
[ -e "${runs[0]}" ] || die "no load run produced a report"
ort_flag=()
[ -s "$ort_json" ] && ort_flag=(--ort "$ort_json")
{
	printf '## infergate bench, %s\n\n' "$stamp"
	printf 'Model `%s`; server flags: `%s`; %s per run after %s warmup; image `%s`.\n' \
		"$MODEL" "${SERVER_FLAGS:-(defaults)}" "$DURATION" "$WARMUP" "$IMAGE"
	case "$db" in
	postgres://* | postgresql://*) printf 'Store: PostgreSQL%s (on this machine: its CPU is in "other").\n' "${REDIS:+ + Redis (--redis)}" ;;
	*) printf 'Store: SQLite file, in process.\n' ;;
	esac
	printf 'Machine: %s cores, %s; %s.\n\n' "$(nproc)" \
		"$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || echo unknown CPU)" "$(go version | cut -d' ' -f3)"
	[ -z "${main_ort_note:-}" ] || printf '%s\n\n' "$main_ort_note"
	"$tmp/loadgen" report "${ort_flag[@]}" --goals mobilenet "${runs[@]}"
	if [ -s "$ort_json" ] && [ -s "$OUT/ortbench-after.json" ]; then
		# The ratios use the figure from before the runs; this says how much the
		# machine itself moved while they ran.
		awk 'FNR == 1 { f++ } /"best":/ { b = 1 } b && /"images_per_sec"/ { gsub(/[^0-9.]/, "", $2); v[f] = $2; b = 0 }
			END { if (v[1] > 0 && v[2] > 0) printf "\nRaw ONNX Runtime after the runs: best %.0f img/s (%+.1f%% from before them: the machine'"'"'s drift).\n", v[2], (v[2] / v[1] - 1) * 100 }' \
			"$ort_json" "$OUT/ortbench-after.json"
	fi
	printf '\nframes/s: successful answers per second in the window; latency: send to answer, per frame.\n'
	printf 'Ratios: frames/s ÷ raw ONNX Runtime images/s of ortbench (best setup; best at batch 1).\n'
	printf 'CPU in cores during the window: the server, loadgen, and every other process of the machine.\n'
	printf 'server core-ms/frame: the server CPU per answered frame; over ORT: minus ortbench'"'"'s CPU per image (best setup).\n'
	if [ -n "$SCENARIOS" ]; then
		printf 'Goal scenarios: on a fresh server with --max-streams %s (after SERVER_FLAGS); one user holding\n' $((STREAMS + 64))
		printf 'the streams (and the greedy clients), the light client another user; frames of 224x224.\n'
	fi
	resnet_runs=("$OUT"/resnet/[0-9]*.json)
	if [ -e "${resnet_runs[0]}" ]; then
		printf '\n### ResNet-18-sized model `%s`\n\n' "$RESNET_MODEL"
		[ -z "${resnet_ort_note:-}" ] || printf '%s\n\n' "$resnet_ort_note"
		resnet_ort=()
		[ -s "$OUT/resnet/ortbench.json" ] && resnet_ort=(--ort "$OUT/resnet/ortbench.json")
		"$tmp/loadgen" report "${resnet_ort[@]}" --goals resnet "${resnet_runs[@]}"
	fi
	for log in "$OUT"/server*.log; do
		errors=$(grep -c 'level=ERROR' "$log" || true)
		printf '\nServer log: %s ERROR lines (%s).\n' "$errors" "$log"
	done
} >"$OUT/table.md" || fail "could not write the table"
cat "$OUT/table.md"
ln -sfn "$(basename "$OUT")" "$(dirname "$OUT")/latest" 2>/dev/null || true

if [ "${#failures[@]}" -gt 0 ]; then
	printf '\n' >&2
	for f in "${failures[@]}"; do say "FAILED: $f"; done
	exit 1
fi
say "done: $OUT"
