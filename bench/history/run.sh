#!/bin/bash
# The history benchmark (bench/history/README.md): throughput on an empty database and with 10
# million historical intents.  Runs bench.py in a throwaway cluster with axme preloaded, fsync=off
# and shared_buffers=2GB; about 30 minutes and 15 GB of disk on 2 cores.
#
#   bash bench/history/run.sh              (pg_virtualenv, the system PostgreSQL 15 and axme)
#   HIST_ROWS=1000000 bash bench/history/run.sh    a smaller history
#
# Already inside a cluster (PGHOST/PGPORT set, axme preloaded)?  /usr/bin/python3 bench/history/bench.py
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export BENCH_COMMIT
BENCH_COMMIT=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
exec pg_virtualenv -t -o shared_preload_libraries=axme -o shared_buffers=2GB -o max_wal_size=8GB \
    -o checkpoint_timeout=30min -o axme.http_allowed_networks=127.0.0.0/8 \
    -o axme.retention_terminal=30d /usr/bin/python3 "$here/bench.py"
