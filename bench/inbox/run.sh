#!/bin/sh
# bench/inbox/run.sh: the inbox listing benchmark: an owner with 100,000 open threads,
# first page under 10 ms.  Runs bench.sql against the server in PG* (a throwaway cluster, e.g.
#   pg_virtualenv -t -o shared_preload_libraries=axme sh bench/inbox/run.sh).
set -e
cd "$(dirname "$0")"
psql -X -v ON_ERROR_STOP=1 -c 'DROP DATABASE IF EXISTS axme_bench_inbox' postgres >/dev/null
psql -X -v ON_ERROR_STOP=1 -c 'CREATE DATABASE axme_bench_inbox' postgres >/dev/null
psql -X -v ON_ERROR_STOP=1 -f bench.sql axme_bench_inbox
psql -X -c 'DROP DATABASE axme_bench_inbox' postgres >/dev/null
