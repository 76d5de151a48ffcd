#!/usr/bin/env bash
# tandem's time-series store against Prometheus's TSDB, on the same samples, in one run.
#
# crates/tsdb/examples/tsdb_bench.rs generates the series tandem collects per instance
# (up and limits, CPU-seconds and resident-memory counters, a 3-digit gauge, request
# counters by status class, a 12-bucket request-duration histogram with _count and _sum:
# 23 series) for INSTANCES instances at 1 s over HOURS hours, writes them into tandem's store
# second by second, and prints ingestion rate, bytes per sample in blocks, resident memory
# and the latency of typical selections. It also writes the same samples as OpenMetrics
# text, which `promtool tsdb create-blocks-from openmetrics` turns into Prometheus blocks
# (2 h, like tandem's); their size over their sample count is Prometheus's bytes per sample.
#
# JITTER moves each timestamp by up to that many ms either way, as a collector that wakes
# a little early or late would (Prometheus's own scrapes show a few ms).
#
# Usage: bench/tsdb.sh    (INSTANCES=50 HOURS=3 JITTER=0 PROFILE=release by default)
set -euo pipefail
cd "$(dirname "$0")/.."

INSTANCES=${INSTANCES:-50}
HOURS=${HOURS:-3}
JITTER=${JITTER:-0}
PROFILE=${PROFILE:-release}

if ! command -v promtool >/dev/null; then
    apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi

cargo build -q --profile "$PROFILE" -p tandem-tsdb --example tsdb_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"target/$PROFILE/examples/tsdb_bench" --instances "$INSTANCES" --hours "$HOURS" \
    --jitter "$JITTER" --dir "$work/tandem" --openmetrics "$work/data.om"

echo
echo "prometheus: $(promtool --version 2>&1 | head -1)"
start=$(date +%s.%N)
promtool tsdb create-blocks-from openmetrics "$work/data.om" "$work/prom" >/dev/null
end=$(date +%s.%N)
bytes=0
samples=0
for meta in "$work"/prom/*/meta.json; do
    block=$(dirname "$meta")
    bytes=$((bytes + $(du -sb --apparent-size "$block" | cut -f1)))
    samples=$((samples + $(sed -n 's/.*"numSamples": *\([0-9]*\).*/\1/p' "$meta" | head -1)))
done
awk -v b="$bytes" -v s="$samples" -v t0="$start" -v t1="$end" 'BEGIN {
    printf "prometheus blocks: %d B for %d samples = %.3f bytes/sample\n", b, s, b / s
    printf "promtool backfill: %.1f s (parses text; not comparable with live ingestion)\n", t1 - t0
}'
