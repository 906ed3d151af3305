#!/bin/sh
# The http delivery tests: a throwaway cluster with axme preloaded (from the PostgreSQL of
# $PG_CONFIG, default pg_config), a programmable receiver on loopback, the npm standardwebhooks
# verifier.  Prints "N passed, M failed"; exits non-zero on failure.
#   PG_CONFIG=/path/to/pg_config test/http/run.sh [-k name-part]
set -e
cd "$(dirname "$0")"
BINDIR=$("${PG_CONFIG:-pg_config}" --bindir)
if [ ! -d node_modules/standardwebhooks ]; then
    npm ci --no-audit --no-fund --silent
fi
exec /usr/bin/python3 test_http.py --bindir "$BINDIR" "$@"
