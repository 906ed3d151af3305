#!/usr/bin/python3
"""Send an intent to an internal agent (a SQL handler run by axme's worker) and wait for its result.

    python3 internal_client.py 42 3 2.5

Connection from the usual PG* variables. Needs psycopg2. The connecting role needs axme_sender.
"""
import json
import os
import sys

import psycopg2

AGENT = os.environ.get("AXME_AGENT", "agent://acme/prod/invoicer")


def main():
    order_id, qty, price = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    conn = psycopg2.connect("")
    # Autocommit: wait_for must not run in the transaction that sent (it would never see the
    # handler's commit). In your application the send is usually part of your own transaction.
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT axme.send_intent(%s)", (json.dumps({
            "intent_type": "intent.billing.invoice.v1", "to_agent": AGENT,
            "payload": {"order_id": order_id, "qty": qty, "price": price}}),))
        intent_id = cur.fetchone()[0]
        cur.execute("SELECT axme.wait_for(%s, '10 seconds')", (intent_id,))
        done = cur.fetchone()[0]
    if done is None:
        sys.exit(f"{intent_id}: no result within 10 seconds")
    print(json.dumps({"intent_id": intent_id, "status": done["status"], "result": done["result"]}))
    sys.exit(0 if done["status"] == "COMPLETED" else 1)


if __name__ == "__main__":
    main()
