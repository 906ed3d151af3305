#!/usr/bin/python3
"""A stream receiver for axme: LISTEN for wake-ups, claim with poll, complete with the receipt.

    AXME_AGENT=agent://myorg/production/order-processor python3 stream_receiver.py

Connection from the usual PG* variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
Needs psycopg2 (Debian: python3-psycopg2; pip: psycopg2-binary). The connecting role needs
axme_agent and the agent's db_role.
"""
import json
import os
import select

import psycopg2
import psycopg2.errors
import psycopg2.sql

AGENT = os.environ.get("AXME_AGENT", "agent://myorg/production/order-processor")
LEASE_SECONDS = 30
BATCH = 100


def handle(intent_type, payload):
    """Your work. Return the result to store; raise to fail the attempt (it is retried)."""
    return {"handled": True, "receiver": "python-stream", "payload": payload}


def drain(conn):
    """Claim and finish intents until none is due."""
    while True:
        # Every wake-up received so far came after its sender's commit, so this poll sees its
        # intents: forget them. A wake-up that arrives from now on is kept for the next round.
        conn.notifies.clear()
        with conn.cursor() as cur:
            cur.execute("SELECT intent_id, intent_type, payload, attempt"
                        " FROM axme.poll(%s, %s, make_interval(secs => %s))",
                        (AGENT, BATCH, LEASE_SECONDS))
            claimed = cur.fetchall()
        if not claimed:
            return
        for intent_id, intent_type, payload, attempt in claimed:
            try:
                with conn.cursor() as cur:
                    try:
                        result = handle(intent_type, payload)
                    except Exception as e:      # a failed attempt: retried after a backoff
                        cur.execute("SELECT axme.fail(%s, %s, retry => true, attempt => %s)",
                                    (intent_id, json.dumps({"error": str(e)}), attempt))
                        continue
                    # attempt is the receipt: refused (55000) if the intent was handed out again
                    cur.execute("SELECT axme.complete(%s, %s, %s)",
                                (intent_id, json.dumps(result), attempt))
                print(f"completed {intent_id} ({intent_type}, attempt {attempt})", flush=True)
            except psycopg2.errors.ObjectNotInPrerequisiteState:
                print(f"lease of {intent_id} ran out; another hand-out owns it now", flush=True)


def main():
    # A dedicated connection, never one from a pool, in autocommit: a listener idle inside a
    # transaction would hold the server's notification queue, and a claim counts once committed.
    conn = psycopg2.connect("")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT axme.channel(%s)", (AGENT,))
        channel = cur.fetchone()[0]
        cur.execute(psycopg2.sql.SQL("LISTEN {}").format(psycopg2.sql.Identifier(channel)))
    print(f"listening on {channel} for {AGENT}", flush=True)
    while True:
        drain(conn)
        # A wake-up may have arrived with the answer to the last query: it is in conn.notifies
        # already, and select() would sleep through it. Sleep only when there is none, and at
        # most a fifth of the lease: a lease that runs out or a retry that becomes due may come
        # with no wake-up.
        if not conn.notifies:
            if select.select([conn], [], [], LEASE_SECONDS / 5)[0]:
                conn.poll()


if __name__ == "__main__":
    main()
