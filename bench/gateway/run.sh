#!/bin/sh
# axme-gateway benchmark in a throwaway cluster: bench/gateway/run.sh [-n 4000] [-c 8] [-m 200]
# Needs axme installed (make install) and the gateway built (gateway/axme-gateway).
set -e
cd "$(dirname "$0")"
exec pg_virtualenv -t -v 15 -o shared_preload_libraries=axme -o fsync=off /usr/bin/python3 bench.py "$@"
