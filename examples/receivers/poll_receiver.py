#!/usr/bin/python3
"""A poll receiver for axme: claim a batch with a lease on your own schedule, finish each intent.

    AXME_AGENT=agent://myorg/production/reports python3 poll_receiver.py

Connection from the usual PG* variables. Needs psycopg2. The connecting role needs axme_agent and
the agent's db_role.
"""
import json
import os
import time

import psycopg2
import psycopg2.errors

AGENT = os.environ.get("AXME_AGENT", "agent://myorg/production/reports")
INTERVAL_SECONDS = float(os.environ.get("AXME_POLL_INTERVAL", "1"))   # sleep when nothing is due
LEASE_SECONDS = 60                                                   # time to finish one batch
BATCH = 100


def handle(intent_type, payload):
    """Your work. Return the result to store; raise to fail the attempt (it is retried)."""
    return {"handled": True, "receiver": "python-poll", "payload": payload}


def main():
    conn = psycopg2.connect("")
    conn.autocommit = True          # each poll, complete and fail commits at once
    print(f"polling {AGENT} every {INTERVAL_SECONDS:g} s", flush=True)
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT intent_id, intent_type, payload, attempt"
                        " FROM axme.poll(%s, %s, make_interval(secs => %s))",
                        (AGENT, BATCH, LEASE_SECONDS))
            claimed = cur.fetchall()
        for intent_id, intent_type, payload, attempt in claimed:
            try:
                with conn.cursor() as cur:
                    try:
                        result = handle(intent_type, payload)
                    except Exception as e:
                        cur.execute("SELECT axme.fail(%s, %s, retry => true, attempt => %s)",
                                    (intent_id, json.dumps({"error": str(e)}), attempt))
                        continue
                    cur.execute("SELECT axme.complete(%s, %s, %s)",
                                (intent_id, json.dumps(result), attempt))
                print(f"completed {intent_id} ({intent_type}, attempt {attempt})", flush=True)
            except psycopg2.errors.ObjectNotInPrerequisiteState:
                print(f"lease of {intent_id} ran out; another hand-out owns it now", flush=True)
        if len(claimed) < BATCH:    # a full batch: more may be due, poll again at once
            time.sleep(INTERVAL_SECONDS)


if __name__ == "__main__":
    main()
