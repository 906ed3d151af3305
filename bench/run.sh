#!/bin/bash
# axme benchmark, one command: bash bench/run.sh
#
# Starts a throwaway PostgreSQL 15 cluster (pg_virtualenv -t: fsync=off, deleted afterwards) with
# axme preloaded and runs bench/bench.py in it: send throughput, consume-cycle throughput and
# wake-up latency, each side by side with its floor and PgQ.  Writes bench/RESULTS.md and
# bench/results.json.  Takes about 30 minutes with the defaults.
#
#   bash bench/run.sh            the benchmark
#   bash bench/run.sh profile    where the time goes: pg_stat_statements (track=all) per workload
#                                and the plans inside poll and complete (bench/PROFILE.md)
#   bash bench/run.sh experiments  the sketches of the performance proposals in bench/README.md,
#                                measured next to the shipped functions (bench/EXPERIMENTS.md)
#   bash bench/run.sh peers      axme next to PgQ and pgmq (when installed) in one interleaved
#                                run, WAL bytes per lifecycle, one fsync=on row (bench/PEERS.md)
#   bash bench/run.sh background the worker's periodic queries with millions of finished intents
#                                in history: plans and ms per call (bench/BACKGROUND.md)
#
# Environment: BENCH_SECONDS (per throughput run, default 10), BENCH_ROUNDS (default 3),
# BENCH_LAT_N (stream sends, default 1000), BENCH_WAIT_N (wait_for wakes, default 500),
# BENCH_ONLY (regex: run only matching parts, for development), BENCH_INSTALL=1 (make install
# axme from this checkout first; otherwise the installed axme is used, installed if missing).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
pg_bin=/usr/lib/postgresql/15/bin

need=()
for pkg in postgresql-15 postgresql-15-pgq3 postgresql-server-dev-15 python3-psycopg2; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

sharedir=$("$pg_bin/pg_config" --sharedir)
if [ "${BENCH_INSTALL:-0}" = 1 ] || [ ! -f "$sharedir/extension/axme.control" ]; then
    make -C "$root" -s PG_CONFIG="$pg_bin/pg_config"
    make -C "$root" -s PG_CONFIG="$pg_bin/pg_config" install
fi
for f in "$root"/sql/axme--*.sql; do
    if ! cmp -s "$f" "$sharedir/extension/$(basename "$f")"; then
        echo "WARNING: the installed $(basename "$f") differs from this checkout's;" \
             "run with BENCH_INSTALL=1 to benchmark this checkout" >&2
    fi
done

export BENCH_COMMIT
BENCH_COMMIT=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$root" diff --quiet HEAD -- sql src 2>/dev/null; then
    BENCH_COMMIT="$BENCH_COMMIT+uncommitted changes in sql/ or src/"
fi

case "${1:-bench}" in
    bench)
        exec pg_virtualenv -t -o shared_preload_libraries=axme /usr/bin/python3 "$here/bench.py" ;;
    profile)
        exec pg_virtualenv -t -o shared_preload_libraries=axme,pg_stat_statements \
            -o pg_stat_statements.track=all -o pg_stat_statements.max=5000 \
            /usr/bin/python3 "$here/profile.py" ;;
    experiments)
        exec pg_virtualenv -t -o shared_preload_libraries=axme /usr/bin/python3 "$here/experiments.py" ;;
    peers)
        exec pg_virtualenv -t -o shared_preload_libraries=axme /usr/bin/python3 "$here/peers.py" ;;
    background)
        exec pg_virtualenv -t -o shared_preload_libraries=axme /usr/bin/python3 "$here/background.py" ;;
    *)
        echo "usage: bash bench/run.sh [bench|profile|experiments|peers|background]" >&2
        exit 2 ;;
esac
