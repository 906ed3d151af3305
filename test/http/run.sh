#!/bin/sh
# The http delivery tests: test_http.py (delivery) and test_resilience.py (breaker, slow start,
# rate limit, rotation, mTLS, disable/enable), each in a throwaway cluster with axme preloaded
# (from the PostgreSQL of $PG_CONFIG, default pg_config), a programmable receiver on loopback, the
# npm standardwebhooks verifier.  Prints one combined "N passed, M failed"; exits non-zero on failure.
#   PG_CONFIG=/path/to/pg_config test/http/run.sh [-k name-part]
set -e
cd "$(dirname "$0")"
BINDIR=$("${PG_CONFIG:-pg_config}" --bindir)
if [ ! -d node_modules/standardwebhooks ]; then
    npm ci --no-audit --no-fund --silent
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for t in test_http.py test_resilience.py; do
    echo "== $t"
    /usr/bin/python3 "$t" --bindir "$BINDIR" "$@" 2>&1 | tee -a "$out" || true
done
grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" |
    awk '{p += $1; f += $3} END {print p " passed, " f " failed"; exit (f > 0 || p == 0) ? 1 : 0}'
