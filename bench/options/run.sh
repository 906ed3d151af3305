#!/bin/bash
# The cost of send_intent's options, side by side in one throwaway cluster (pg_virtualenv -t:
# fsync=off, shared_preload_libraries = axme): pgbench -M prepared, one client, BENCH_SECONDS (5)
# per run, BENCH_ROUNDS (3) interleaved rounds of: a plain send; with priority; with an
# ordering_key (100 keys); with traceparent + tracestate; publish to 1 and to 3 subscribers.
# Prints tps per run, the medians and each as a ratio of the plain send.  Uses the installed axme.
#   bash bench/options/run.sh
set -euo pipefail
cd "$(dirname "$0")"
export SECONDS_PER_RUN=${BENCH_SECONDS:-5} ROUNDS=${BENCH_ROUNDS:-3}
PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
pg_virtualenv -t -v 15 -o shared_preload_libraries=axme bash -c '
set -euo pipefail
psql -Xq -v ON_ERROR_STOP=1 postgres <<SQL >/dev/null
CREATE EXTENSION axme;
SELECT axme.register_agent('\''agent://bench/perf/sink'\'', '\''poll'\'');
SELECT axme.register_agent('\''agent://bench/perf/sub-'\'' || g, '\''poll'\'') FROM generate_series(1, 3) g;
SELECT axme.subscribe('\''agent://bench/perf/sub-1'\'', '\''intent.one.#'\'');
SELECT axme.subscribe('\''agent://bench/perf/sub-'\'' || g, '\''intent.three.#'\'') FROM generate_series(1, 3) g;
SQL
declare -A tps
for w in plain priority ordering_key trace publish_1 publish_3; do tps[$w]=""; done
for r in $(seq 1 "$ROUNDS"); do
    for w in plain priority ordering_key trace publish_1 publish_3; do
        t=$(pgbench -n -M prepared -c 1 -T "$SECONDS_PER_RUN" -f "$w.sql" postgres 2>/dev/null |
            sed -nE "s/^tps = ([0-9.]+).*/\1/p")
        tps[$w]="${tps[$w]} $t"
        echo "round $r  $w  $t tps"
    done
done
median() { printf "%s\n" $1 | sort -n | awk "{a[NR]=\$1} END {print a[int((NR+1)/2)]}"; }
base=$(median "${tps[plain]}")
echo
echo "| send | median tps | vs plain |"
echo "|---|---:|---:|"
for w in plain priority ordering_key trace publish_1 publish_3; do
    m=$(median "${tps[$w]}")
    echo "| $w | $m | $(python3 -c "print(f\"{$m / $base:.2f}\")") |"
done
'
