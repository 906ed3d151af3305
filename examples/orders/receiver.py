#!/usr/bin/python3
"""The order processor: a stream receiver of axme, as a separate process.

It LISTENs (in autocommit) on the agent's channel. On every wake-up, and at least once per lease
length even without one (a lease that runs out notifies nobody), it drains the queue with
axme.poll(): each claimed order is "processed" (the total is computed, then a short sleep stands in
for real work) and finished with axme.complete(intent_id, result, attempt), where attempt is the
receipt poll handed out. A receiver whose lease ran out meanwhile is refused (SQLSTATE 55000) and
drops its work: the intent belongs to whoever claimed it again.

Connection settings come from the usual PG* environment variables (PGHOST, PGPORT, ...).

    /usr/bin/python3 receiver.py [--name NAME] [--lease SECONDS] [--crash-on ORDER_ID]

--crash-on ORDER_ID makes the process die (os._exit, no cleanup, no rollback of anything already
committed) right after it has claimed that order and before completing it: the order stays
DELIVERED under a lease until the lease runs out, and then another receiver gets it again.
"""
import argparse
import json
import os
import select
import signal
import sys
import time

import psycopg2
import psycopg2.errors
import psycopg2.sql

AGENT = "agent://myorg/production/order-processor"
CRASH_EXIT_CODE = 3

stopping = False


def log(name, text):
    print(f"[{name}] {text}", flush=True)


def clock(ts):
    """A timestamp as HH:MM:SS.mmm."""
    return ts.strftime("%H:%M:%S.%f")[:-3]


def on_sigterm(signum, frame):
    global stopping
    stopping = True


def process(order):
    """The "work": the order total in cents, after a little pretend effort."""
    total = sum(int(item["qty"]) * int(item["unit_price_cents"]) for item in order["items"])
    time.sleep(0.2)
    return total


def drain(conn, args):
    """Claim and finish intents until none is due. Returns the number completed."""
    handled = 0
    while not stopping:
        # Every notification received so far came after its sender's commit, so this poll sees
        # those intents: they need no further wake-up. Ones that arrive from now on are kept.
        conn.notifies.clear()
        with conn.cursor() as cur:
            cur.execute(
                "SELECT intent_id, payload, attempt, lease_until FROM axme.poll(%s, %s, %s::interval)",
                (AGENT, args.batch, f"{args.lease} seconds"))
            claimed = cur.fetchall()
        if not claimed:
            return handled
        log(args.name, "claimed " + ", ".join(f"order {order['order_id']} (attempt {attempt})"
                                              for _, order, attempt, _ in claimed)
            + f", lease until {clock(claimed[0][3])}")
        for intent_id, order, attempt, lease_until in claimed:
            if args.crash_on is not None and order["order_id"] == args.crash_on:
                log(args.name, f"CRASH: dying before completing order {order['order_id']}")
                os._exit(CRASH_EXIT_CODE)
            total = process(order)
            result = {"order_id": order["order_id"], "total_cents": total,
                      "items": len(order["items"]), "processed_by": args.name}
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT axme.complete(%s, %s, %s)",
                                (intent_id, json.dumps(result), attempt))
            except psycopg2.errors.ObjectNotInPrerequisiteState as e:
                # Our lease ran out and someone else holds the order now: theirs wins.
                log(args.name, f"dropped order {order['order_id']}: {e.pgerror.strip()}")
                continue
            log(args.name, f"completed order {order['order_id']}: total {total / 100:.2f}")
            handled += 1
    return handled


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=f"receiver-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=5.0, help="lease in seconds (default 5)")
    parser.add_argument("--batch", type=int, default=10, help="intents claimed per poll")
    parser.add_argument("--crash-on", type=int, metavar="ORDER_ID",
                        help="die right after claiming this order, before completing it")
    args = parser.parse_args()
    # Poll at least once per lease length, here 5 times per lease, so a redelivery waits little.
    idle_poll = max(0.2, args.lease / 5)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)

    conn = psycopg2.connect("", application_name=args.name)
    # Autocommit: a listener idle inside a transaction would hold the notification queue, and
    # every poll/complete must commit at once (a claim is only a claim once committed).
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT axme.channel(%s)", (AGENT,))
        channel = cur.fetchone()[0]
        cur.execute(psycopg2.sql.SQL("LISTEN {}").format(psycopg2.sql.Identifier(channel)))
    log(args.name, f"listening on {channel} (pid {os.getpid()}, lease {args.lease:g} s)")

    # Whatever was sent while nobody listened is waiting in the table: drain it first.
    drain(conn, args)
    while not stopping:
        # A notification may already have come in with the answer to the last query: then the
        # socket has nothing more to say and select() would sleep through it.
        if not conn.notifies:
            ready, _, _ = select.select([conn], [], [], idle_poll)
            if ready:
                conn.poll()
        if conn.notifies:
            sent = sum(json.loads(n.payload).get("count", 1) for n in conn.notifies)
            conn.notifies.clear()
            log(args.name, f"woken up by NOTIFY: {sent} new intent{'s' if sent != 1 else ''}")
        drain(conn, args)
    conn.close()
    log(args.name, "stopped")


if __name__ == "__main__":
    try:
        main()
    except psycopg2.Error as e:
        print(f"receiver: database error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
