#!/bin/bash
# The axme demo in one command, on a fresh Debian bookworm machine (as root, or a user with sudo):
#
#     bash scripts/demo.sh
#
# Installs what it needs and builds axme (scripts/setup.sh), then runs the order scenario
# (examples/orders/run_demo.py) in a throwaway PostgreSQL 15 cluster with axme preloaded: orders
# inserted into a table are sent by a trigger, processed by separate receiver processes, one of
# which crashes mid-order, and nothing is lost. Then invoices go to an http (webhook) agent while
# its receiver (examples/orders/webhook_receiver.py) is down: axme's worker retries until it is up,
# and the receiver verifies every request's signature. Last, an order above the approval limit
# waits for a person (an inbox agent: reminders while nobody answers, then a person approves it in
# axme-gateway's web inbox in a headless browser, the screenshot's path printed), and
# an internal agent (a SQL function run by axme's worker) computes its invoice total
# (examples/orders/approvals.py). Takes about 25 seconds after setup.
#
# AXME_DEMO_SKIP_SETUP=1 skips the setup step (when it has already run, e.g. in the test suite).
# Exit status: 0 when every order, invoice, approval and invoice total came out right (and every
# webhook signature verified), non-zero otherwise.
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
# shared_preload_libraries=axme: the wait_for wake-ups and the http worker that sends webhooks.
# axme.http_allowed_networks=127.0.0.0/8: the demo's webhook receiver listens on 127.0.0.1, and
# axme's SSRF protection refuses every non-public address (loopback included) unless it is listed
# here; without it the invoices would be dead-lettered 'ssrf_blocked' at the first attempt.
exec pg_virtualenv -t -v 15 -o shared_preload_libraries=axme -o axme.http_allowed_networks=127.0.0.0/8 \
    /usr/bin/python3 examples/orders/run_demo.py
