#!/usr/bin/env bash
# Query latency, ingestion rate and resident memory: tandem against a real Prometheus
# (Debian's 2.42) on the same samples, in one run.
#
# crates/promql/examples/query_bench.rs generates the series of bench/tsdb.sh
# (tandem_tsdb::synth: 23 series per instance at 1 s, INSTANCES instances over HOURS hours,
# ending now), writes them into a tandem store with one append_batch per second (the
# collectors' path) and into Prometheus by remote write (one protobuf + snappy request per
# second of data), starts `prometheus` and `tandem serve` on loopback over them, and runs
# rate, sum by, histogram_quantile, predict_linear over 1h and avg_over_time through both
# /api/v1/query and /api/v1/query_range (last hour, step 15s): RUNS timed runs after WARMUP,
# the two servers alternately. It prints medians, tandem/Prometheus ratios, samples/s and
# VmRSS, and exits 1 when the two servers' answers differ (series, timestamps, or values
# beyond 1e-6 relative).
#
# Usage: bench/query.sh    (INSTANCES=50 HOURS=3 JITTER=0 RUNS=20 WARMUP=3 PROFILE=release)
# KEEP=1 keeps the work directory (stores, server logs) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTANCES=${INSTANCES:-50}
HOURS=${HOURS:-3}
JITTER=${JITTER:-0}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
PROFILE=${PROFILE:-release}

if ! command -v prometheus >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Only what this benchmark runs: the example and the tandem binary.
cargo build -q --profile "$PROFILE" -p tandem-promql --example query_bench
cargo build -q --profile "$PROFILE" -p tandem --bin tandem

work=$(mktemp -d)
if [ "${KEEP:-0}" = 1 ]; then
    trap 'echo "work directory kept: $work"' EXIT
else
    trap 'rm -rf "$work"' EXIT
fi

echo "machine: $(nproc) cores, load: $(uptime | sed 's/.*load average: //')"
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
# The example starts both servers, and kills and waits for them before it returns.
"target/$PROFILE/examples/query_bench" --instances "$INSTANCES" --hours "$HOURS" \
    --jitter "$JITTER" --runs "$RUNS" --warmup "$WARMUP" --work "$work" \
    --tandem "target/$PROFILE/tandem" --prometheus "$(command -v prometheus)"
echo "load after: $(uptime | sed 's/.*load average: //')"
