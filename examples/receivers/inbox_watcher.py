#!/usr/bin/python3
"""An inbox watcher for axme: follows one inbox's changes (what a UI, a CLI or a chat bot builds on).

    AXME_INBOX=agent://acme/finance/approvers python3 inbox_watcher.py

Prints one JSON line per changed thread. People decide with axme.decide (see docs/inbox.md).
Connection from the usual PG* variables. Needs psycopg2. The connecting role needs axme_agent and
the inbox agent's db_role.
"""
import json
import os
import select

import psycopg2
import psycopg2.sql

OWNER = os.environ.get("AXME_INBOX", "agent://acme/finance/approvers")


def show(thread):
    """Your UI: here one line per change."""
    print(json.dumps({k: thread[k] for k in ("thread_id", "intent_id", "kind", "status",
                                             "task_type", "title")}), flush=True)


def main():
    # A dedicated connection in autocommit (LISTEN belongs to one session; never idle in a
    # transaction while listening).
    conn = psycopg2.connect("")
    conn.autocommit = True
    cursor = None   # NULL: from the beginning. Keep the last next_cursor to resume after a restart.
    with conn.cursor() as cur:
        cur.execute("SELECT axme.channel(%s)", (OWNER,))
        channel = cur.fetchone()[0]
        cur.execute(psycopg2.sql.SQL("LISTEN {}").format(psycopg2.sql.Identifier(channel)))
    print(f"watching {OWNER} on {channel}", flush=True)
    while True:
        has_more = True
        while has_more:
            conn.notifies.clear()   # this call sees every change notified so far
            with conn.cursor() as cur:
                cur.execute("SELECT changes, next_cursor, has_more FROM axme.inbox_changes(%s, %s, 50)",
                            (OWNER, cursor))
                changes, cursor, has_more = cur.fetchone()
            for change in changes:
                show(change["thread"])
        # Sleep only when no notification came meanwhile. A change is readable once every
        # transaction that was writing when it was made has ended, so look again within a second.
        if not conn.notifies:
            if select.select([conn], [], [], 1)[0]:
                conn.poll()


if __name__ == "__main__":
    main()
