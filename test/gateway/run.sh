#!/bin/sh
# The gateway suite inside a throwaway cluster made by scripts/test.sh (PG* set): builds nothing,
# runs the binary from the build tree (gateway/axme-gateway).
cd "$(dirname "$0")/../.." || exit 1
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec /usr/bin/python3 test/gateway/test_gateway.py
