#!/usr/bin/env bash
# tandem's proxy against nginx, in the same run, on loopback.
#
# One small native backend (crates/proxy/examples/bench_backend.rs, a 13-byte body on
# keep-alive) is reached three ways: through tandem's proxy (examples/bench_proxy.rs, HTTP mode,
# one thread), through nginx (one worker, upstream keepalive 64), and directly (the physical
# limit). The proxy under test is pinned to core 0, wrk and the backend to core 1. Each target
# gets a warm-up, then `wrk -t1 -c$CONNS -d$DURATION --latency`; rounds alternate tandem and
# nginx, and the summary gives the median of the rounds for each.
#
# Proxy CPU-seconds per 1000 requests come from /proc/PID/stat (utime+stime) before and after
# each measured run (for nginx, master and worker together).
#
# The machine may be shared: a round disturbed by other work moves tandem and nginx alike
# only if they ran close together, so each round runs them back to back, and the ratios
# are taken per round, then their median is reported.
#
# MODE=callgrind instead counts the proxy's user-space instructions per request under
# valgrind's callgrind (tandem, then nginx with one worker and no master process): a
# repeatable figure on a shared machine, though one that leaves out the kernel's share,
# which is most of either proxy's CPU time. wrk runs -c10 for 5 s after a 2 s warm-up;
# counting starts and stops with the measured run.
#
# MODE=polls runs tandem's proxy alone with tokio's poll-time histogram on
# (examples/bench_proxy_polls.rs, built with --cfg tokio_unstable in target/polls) under one
# measured wrk run, and prints wrk's latency distribution beside how long the proxy's task
# polls took: long polls would hold every other connection up; short ones mean the latency
# is queueing behind the other connections' work.
#
# Usage: bench/proxy.sh    (ROUNDS=7 DURATION=10s CONNS=50 WARMUP=2s PROFILE=release by default)
#        MODE=callgrind bench/proxy.sh
#        MODE=polls bench/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}

MODE=${MODE:-wrk}
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nginx wrk >/dev/null
fi
if [ "$MODE" = callgrind ] && ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "bench/proxy.sh needs 2 cores (proxy on one, wrk and backend on the other)" >&2
    exit 1
fi

# PROFILE=dist builds tandem's examples as the shipped binary is built (fat LTO).
PROFILE=${PROFILE:-release}
if [ "$MODE" = polls ]; then
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/polls \
        cargo build --profile "$PROFILE" --examples -p tandem-proxy
    bin=target/polls/$PROFILE/examples
else
    cargo build --profile "$PROFILE" --examples -p tandem-proxy
    bin=target/$PROFILE/examples
fi
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
tandem_port=$(free_port)
nginx_port=$(free_port)

wait_http() {
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

# callgrind NAME PORT COMMAND...: user-space instructions per request of COMMAND (a proxy
# listening on PORT) while wrk drives it.
callgrind() {
    local name=$1 port=$2
    shift 2
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$name.cg" \
        "$@" 2>"$work/$name.valgrind" &
    local pid=$!
    pids+=($pid)
    for _ in $(seq 200); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then break; fi
        sleep 0.1
    done
    wrk -t1 -c10 -d2s "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    wrk -t1 -c10 -d5s "http://127.0.0.1:$port/" >"$work/$name.wrk"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local requests instructions
    requests=$(grep -oP '\d+(?= requests in)' "$work/$name.wrk")
    callgrind_annotate "$work/$name.cg.1" >"$work/$name.annotated" 2>/dev/null
    instructions=$(grep -m1 'PROGRAM TOTALS' "$work/$name.annotated" | grep -oP '^[\d,]+' | tr -d ,)
    echo "$name $requests $instructions" >>"$work/callgrind"
}

taskset -c 1 "$bin/bench_backend" "127.0.0.1:$backend_port" &
pids+=($!)
if [ "$MODE" = callgrind ]; then
    wait_http "$backend_port"
    callgrind tandem "$tandem_port" "$bin/bench_proxy" "127.0.0.1:$tandem_port" "127.0.0.1:$backend_port"
    cat >"$work/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
    callgrind nginx "$nginx_port" nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"
    echo "user-space instructions per request under callgrind (wrk -t1 -c10 -d5s), cargo profile $PROFILE"
    echo "$(nginx -v 2>&1), $(valgrind --version)"
    awk '{ printf "%-8s %10d requests %14d instructions %8d per request\n", $1, $2, $3, $3 / $2; per[$1] = $3 / $2 }
         END { printf "tandem/nginx: %.2fx\n", per["tandem"] / per["nginx"] }' "$work/callgrind"
    exit 0
fi
if [ "$MODE" = polls ]; then
    seconds=${DURATION%s}
    taskset -c 0 "$bin/bench_proxy_polls" "127.0.0.1:$tandem_port" "127.0.0.1:$backend_port" \
        "$seconds" >"$work/polls" &
    pids+=($!)
    wait_http "$backend_port"
    wait_http "$tandem_port"
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$tandem_port/" >/dev/null
    # Measure from the start of a fresh reporting interval of the proxy.
    lines=$(wc -l <"$work/polls")
    for _ in $(seq $((seconds * 20 + 100))); do
        [ "$(wc -l <"$work/polls")" -gt "$lines" ] && break
        sleep 0.05
    done
    lines=$(wc -l <"$work/polls")
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$tandem_port/" \
        >"$work/polls.wrk"
    for _ in $(seq $((seconds * 20 + 100))); do
        [ "$(wc -l <"$work/polls")" -gt "$lines" ] && break
        sleep 0.05
    done
    echo "tandem's proxy alone, wrk -t1 -c$CONNS -d$DURATION --latency, cargo profile $PROFILE"
    grep -E 'Requests/sec|^ +(50|75|90|99)%' "$work/polls.wrk"
    echo "task polls during the measured run (poll time from: count, 10 us buckets):"
    sed -n "$((lines + 1))p" "$work/polls"
    exit 0
fi
taskset -c 0 "$bin/bench_proxy" "127.0.0.1:$tandem_port" "127.0.0.1:$backend_port" &
tandem_pid=$!
pids+=($tandem_pid)

cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log" &
nginx_pid=$!
pids+=($nginx_pid)

wait_http "$backend_port"
wait_http "$tandem_port"
wait_http "$nginx_port"

# utime+stime in clock ticks of the given processes.
ticks() {
    local total=0 pid
    for pid in "$@"; do
        # Field 2 (comm) may hold spaces: cut after the closing parenthesis.
        read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# run NAME PORT [PIDS...]: warm up, measure, keep wrk's output and the CPU ticks.
run() {
    local name=$1 port=$2 round=$3
    shift 3
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port/" >/dev/null
    local before=0 after=0
    if [ $# -gt 0 ]; then before=$(ticks "$@"); fi
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/" \
        >"$work/$name.$round.wrk"
    if [ $# -gt 0 ]; then after=$(ticks "$@"); fi
    echo "$((after - before))" >"$work/$name.$round.ticks"
}

nginx_procs() { echo "$nginx_pid" $(pgrep -P "$nginx_pid"); }

for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS" >&2
    run direct "$backend_port" "$round"
    if [ $((round % 2)) -eq 1 ]; then
        run tandem "$tandem_port" "$round" "$tandem_pid"
        run nginx "$nginx_port" "$round" $(nginx_procs)
    else
        run nginx "$nginx_port" "$round" $(nginx_procs)
        run tandem "$tandem_port" "$round" "$tandem_pid"
    fi
done

echo
echo "wrk -t1 -c$CONNS -d$DURATION --latency, $ROUNDS rounds (medians), cargo profile $PROFILE; proxy on core 0, wrk + backend on core 1"
echo "$(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
python3 - "$work" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import re, statistics, sys
work, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def micros(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

def parse(name, r):
    out = open(f"{work}/{name}.{r}.wrk").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = micros(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = micros(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    ticks = int(open(f"{work}/{name}.{r}.ticks").read())
    cpu = ticks / hz / requests * 1000 if requests else float("nan")
    return rps, p50, p99, cpu, errors.group(0) if errors else ""

rows = {}
for name in ("direct", "tandem", "nginx"):
    runs = [parse(name, r) for r in range(1, rounds + 1)]
    rows[name] = [statistics.median(x[i] for x in runs) for i in range(4)]
    problems = [x[4] for x in runs if x[4]]
    if problems:
        print(f"warning: {name}: {problems}")
    print(f"  {name} rounds req/s: " + ", ".join(f"{x[0]:.0f}" for x in runs)
          + "; p99: " + ", ".join(f"{x[2]:.0f}us" for x in runs))

print()
print(f"{'target':<8} {'req/s':>10} {'p50':>10} {'p99':>10} {'proxy CPU-s/1k req':>20}")
for name in ("tandem", "nginx", "direct"):
    rps, p50, p99, cpu = rows[name]
    cpu_text = f"{cpu:.4f}" if name != "direct" else "-"
    print(f"{name:<8} {rps:>10.0f} {p50:>8.0f}us {p99:>8.0f}us {cpu_text:>20}")
print()
pairs = [(parse("tandem", r), parse("nginx", r)) for r in range(1, rounds + 1)]
ratios = [statistics.median(t[i] / n[i] for t, n in pairs) for i in range(4)]
print("tandem/nginx per round: " + "; ".join(
    f"{t[0]/n[0]:.2f}x req/s, {t[3]/n[3]:.2f}x CPU" for t, n in pairs))
print(f"tandem/nginx (median of per-round ratios): throughput {ratios[0]:.2f}x, "
      f"p50 {ratios[1]:.2f}x, p99 {ratios[2]:.2f}x, CPU per request {ratios[3]:.2f}x")
# What each proxy adds to the tail: its p99 less direct's p99 in the same round.
added = [(parse("tandem", r)[2] - d, parse("nginx", r)[2] - d)
         for r, d in ((r, parse("direct", r)[2]) for r in range(1, rounds + 1))]
print("added p99 (p99 - direct p99) per round, tandem/nginx: " + "; ".join(
    f"{t:.0f}/{n:.0f}us" for t, n in added))
print(f"added p99, median: tandem {statistics.median(t for t, _ in added):.0f}us, "
      f"nginx {statistics.median(n for _, n in added):.0f}us; rounds where tandem adds "
      f"at most nginx's: {sum(t <= n for t, n in added)} of {rounds}")
PY
