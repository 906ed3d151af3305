#!/bin/sh
# http delivery benchmark: PG_CONFIG=/path/to/pg_config bench/http/run.sh [-n 20000]
# Needs nginx and wrk (Debian packages nginx-light or nginx, wrk).
set -e
cd "$(dirname "$0")"
BINDIR=$("${PG_CONFIG:-pg_config}" --bindir)
exec /usr/bin/python3 bench.py --bindir "$BINDIR" "$@"
