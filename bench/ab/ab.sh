#!/bin/bash
# A/B of the send path: this checkout against another revision (default main), built side by side
# and measured in turns, each turn in a fresh throwaway cluster (pg_virtualenv -t: fsync=off) with
# shared_preload_libraries = axme, pgbench -M prepared, one client, BENCH_SECONDS (10) per run,
# BENCH_ROUNDS (4) rounds of A then B.  Workloads: bench/pgbench/send_axme_1.sql (a plain send
# to a poll agent) on both, and send_trace_1.sql (the same with traceparent and tracestate) on
# this checkout.  Installs each build with make install before its turn: run it where that is
# allowed (a private mount namespace or a machine of its own), as root.  Prints tps per run and
# the medians.
#   bash bench/ab/ab.sh [revision]
set -euo pipefail
cd "$(dirname "$0")/../.."
REV=${1:-main}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-4}
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
WORK=$(mktemp -d /tmp/axme-ab.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
git archive "$REV" | tar -x -C "$WORK"
make -s -C "$WORK" PG_CONFIG="$PG_CONFIG" >/dev/null
make -s PG_CONFIG="$PG_CONFIG" >/dev/null
HERE=$(pwd)

# run_turn DIR LABEL WORKLOAD...: install DIR's build, then one pgbench run per workload
run_turn() {
    local dir=$1 label=$2
    shift 2
    make -s -C "$dir" install PG_CONFIG="$PG_CONFIG" >/dev/null
    # a port free now (pg_virtualenv would take the first free one from 5432 up, which runs
    # started at the same moment elsewhere on the machine can both pick)
    PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    pg_virtualenv -t -v 15 -o shared_preload_libraries=axme bash -c '
        psql -Xq -v ON_ERROR_STOP=1 postgres <<SQL >/dev/null
CREATE EXTENSION axme;
CREATE SCHEMA bench;
SELECT axme.register_agent('\''agent://bench/perf/sink'\'', '\''poll'\'');
CREATE FUNCTION bench.order_payload(n bigint) RETURNS jsonb LANGUAGE sql STABLE AS \$\$
    SELECT jsonb_build_object('\''order_id'\'', n, '\''customer'\'', '\''c-'\'' || (n % 1000),
                              '\''items'\'', jsonb_build_array(jsonb_build_object('\''sku'\'', '\''SKU-'\'' || (n % 97), '\''qty'\'', 2)),
                              '\''total'\'', 59.90)
\$\$;
SQL
        label=$0; secs=$1; shift
        for w in "$@"; do
            # warm-up, then the measured run
            pgbench -n -M prepared -c 1 -T 2 -f "$w" postgres >/dev/null 2>&1
            tps=$(pgbench -n -M prepared -c 1 -T "$secs" -f "$w" postgres 2>/dev/null |
                  sed -n "s/^tps = \([0-9.]*\).*/\1/p")
            echo "$label $(basename "$w" .sql) $tps"
        done
        # the on-CPU time of the backend per send (not disturbed by waiting for a CPU)
        /usr/bin/python3 "$(dirname "$w")/../ab/cpu.py" "$label" "${BENCH_CPU_N:-20000}" plain $([ "$label" = B ] && echo trace)' "$label" "$SECONDS_PER_RUN" "$@" 2>"$WORK/stderr" | grep -E '^(A|B) ' || { cat "$WORK/stderr" >&2; return 1; }
}

: >"$WORK/results"
for r in $(seq 1 "$ROUNDS"); do
    # the order alternates (AB, BA, ...) so that a trend in the machine's load favours neither
    if [ $((r % 2)) = 1 ]; then
        run_turn "$WORK" A "$HERE/bench/pgbench/send_axme_1.sql" | tee -a "$WORK/results"
        run_turn "$HERE" B "$HERE/bench/pgbench/send_axme_1.sql" "$HERE/bench/ab/send_trace_1.sql" | tee -a "$WORK/results"
    else
        run_turn "$HERE" B "$HERE/bench/pgbench/send_axme_1.sql" "$HERE/bench/ab/send_trace_1.sql" | tee -a "$WORK/results"
        run_turn "$WORK" A "$HERE/bench/pgbench/send_axme_1.sql" | tee -a "$WORK/results"
    fi
done
# medians of the runs, and of the per-round ratios (a round's A and B ran back to back)
python3 - "$WORK/results" "$REV" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
runs = {}
for who, what, tps in rows:
    runs.setdefault((who, what), []).append(float(tps))
print("medians (tps; A = %s, B = this checkout; %d rounds):" % (sys.argv[2], len(runs[("A", "send_axme_1")])))
for k in sorted(runs):
    print("  %s %-14s %8.2f" % (k[0], k[1], statistics.median(runs[k])))
for w in ("cpu_plain",):
    a, b = runs[("A", w)], runs[("B", w)]
    print("  per-round B/A %s (on-CPU us per send): median %.3f (%s)" % (w, statistics.median(x / y for x, y in zip(b, a)),
          " ".join("%.3f" % (x / y) for x, y in zip(b, a))))
print("  per-round B cpu_trace / cpu_plain: median %.3f" % statistics.median(
    x / y for x, y in zip(runs[("B", "cpu_trace")], runs[("B", "cpu_plain")])))
a, b, t = runs[("A", "send_axme_1")], runs[("B", "send_axme_1")], runs[("B", "send_trace_1")]
print("  per-round B/A send_axme_1: median %.3f (%s)" % (statistics.median(x / y for x, y in zip(b, a)),
      " ".join("%.2f" % (x / y) for x, y in zip(b, a))))
print("  per-round send_trace_1 / send_axme_1 (B): median %.3f" % statistics.median(x / y for x, y in zip(t, b)))
PY
