#!/bin/bash
# The axme demo in one command, on a fresh Debian bookworm machine (as root, or a user with sudo):
#
#     bash scripts/demo.sh
#
# Installs what it needs and builds axme (scripts/setup.sh), then runs the order scenario
# (examples/orders/run_demo.py) in a throwaway PostgreSQL 15 cluster with axme preloaded: orders
# inserted into a table are sent by a trigger, processed by separate receiver processes, one of
# which crashes mid-order, and nothing is lost. Takes about 20 seconds after setup.
#
# AXME_DEMO_SKIP_SETUP=1 skips the setup step (when it has already run, e.g. in the test suite).
# Exit status: 0 when every order was completed, non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${AXME_DEMO_SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup.sh
fi

# The throwaway cluster's port: one that is free now (pg_virtualenv would take the first free one
# from 5432 up, which two runs starting at the same moment can both pick).
PGPORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PGPORT

# -t: a temporary cluster directory (initdb refuses root, and runs never collide);
# the cluster is removed when the demo ends, whatever happens.
exec pg_virtualenv -t -v 15 -o shared_preload_libraries=axme \
    /usr/bin/python3 examples/orders/run_demo.py
