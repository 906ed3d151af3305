#!/usr/bin/python3
"""The axme order demo: the sender side, and the conductor of the whole scenario.

1. Installs examples/orders/schema.sql: an orders table whose AFTER INSERT trigger sends each new
   order to agent://myorg/production/order-processor with axme.send_intent(), in the same
   transaction.
2. Starts the order processor (receiver.py) as a separate process, inserts a few orders (one
   transaction each) and waits for each result with axme.wait_for().
3. Starts a processor that crashes after claiming an order and before completing it, shows the
   order stuck DELIVERED under a lease, starts a fresh processor, and waits until the lease has run
   out and the order has been handed out again (attempt 2) and completed.
4. Prints every order's lifecycle events (axme.intent_events) and checks that nothing was lost.

Exit status 0 when every order was completed with the right total, 1 otherwise: the test suite runs
this demo as a test. Connection settings come from PG* environment variables; scripts/demo.sh runs
it inside a throwaway cluster (pg_virtualenv) with shared_preload_libraries=axme.
"""
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.extras

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = "agent://myorg/production/order-processor"
LEASE = 5                  # seconds: a crashed processor's order waits this long at most
CRASH_EXIT_CODE = 3        # what receiver.py --crash-on exits with
WAIT_SECONDS = 20          # seconds the sender waits for the results of one step, all together
DEMO_TIMEOUT = 120         # seconds: the whole demo is aborted (and fails) after this

# (customer, [(sku, qty, unit price in cents), ...])
ORDERS = [
    ("ada", [("keyboard", 1, 4990), ("usb-cable", 2, 499)]),
    ("grace", [("monitor", 2, 18900)]),
    ("linus", [("laptop-stand", 1, 3450), ("mouse", 1, 2599), ("mouse-pad", 1, 899)]),
    ("margaret", [("headset", 1, 7900)]),
    ("ken", [("usb-hub", 3, 1999), ("hdmi-cable", 3, 799)]),
]
CRASH_ORDER = ("barbara", [("desk-lamp", 1, 3900), ("light-bulb", 4, 350)])
LATE_ORDER = ("dennis", [("notebook", 5, 250)])

print_lock = threading.Lock()


def say(text=""):
    with print_lock:
        print(text, flush=True)


def heading(text):
    say()
    say(f"== {text}")


def clock(ts):
    return ts.strftime("%H:%M:%S.%f")[:-3]


def parse_ts(text):
    return datetime.datetime.fromisoformat(text) if text else None


def money(cents):
    return f"{cents / 100:.2f}"


class Aborted(Exception):
    pass


class Receiver:
    """One receiver.py process; its output is shown indented, as it happens."""

    def __init__(self, name, *extra_args):
        self.name = name
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "receiver.py"), "--name", name,
             "--lease", str(LEASE), *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            say("      " + line.rstrip("\n"))
            if " listening on " in line:
                self.ready.set()

    def wait_ready(self, timeout=20):
        """Block until the receiver has subscribed with LISTEN (it drains by polling anyway)."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Aborted(f"{self.name} did not start listening (exit code {self.proc.poll()})")

    def wait_exit(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Aborted(f"{self.name} did not exit within {timeout} s")
        self.reader.join(5)
        return code

    def stop(self, timeout=15):
        """SIGTERM, then the exit code (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except Aborted:
            self.proc.kill()
            self.proc.wait()
            raise


def insert_order(conn, customer, items):
    """One order, one transaction: the trigger sends the intent in it. Returns (order_id, intent_id)."""
    items_json = [{"sku": sku, "qty": qty, "unit_price_cents": price} for sku, qty, price in items]
    with conn:  # commit at the end of the block
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (customer, items) VALUES (%s, %s) RETURNING order_id",
                        (customer, psycopg2.extras.Json(items_json)))
            order_id = cur.fetchone()[0]
            cur.execute("SELECT intent_id FROM order_intents WHERE order_id = %s", (order_id,))
            intent_id = cur.fetchone()[0]
    expected = sum(qty * price for _, qty, price in items)
    say(f"   order {order_id} for {customer}: {len(items)} item(s), {money(expected)}"
        f"  ->  intent {intent_id[:8]} sent in the same transaction")
    return order_id, intent_id, expected


def wait_result(conn, order_id, intent_id, deadline):
    """axme.wait_for() until the monotonic deadline: blocks until the intent is terminal and
    returns its document (None on timeout), and prints what happened."""
    timeout = max(0.0, deadline - time.monotonic())
    with conn.cursor() as cur:
        cur.execute("SELECT axme.wait_for(%s, make_interval(secs => %s))", (intent_id, timeout))
        doc = cur.fetchone()[0]
    if doc is None:
        say(f"   order {order_id}: no result in time (axme.wait_for timed out)")
        return None
    took = (parse_ts(doc["updated_at"]) - parse_ts(doc["created_at"])).total_seconds()
    result = doc["result"] or {}
    total = result.get("total_cents")
    say(f"   order {order_id}: {doc['status']} {took:.2f} s after it was sent, attempt {doc['attempt']}, "
        f"total {money(total) if total is not None else '?'}, by {result.get('processed_by', '?')}")
    return doc


def show_events(conn, order_id, intent_id, note=""):
    with conn.cursor() as cur:
        cur.execute("SELECT seq, event_type, status, at, actor, details FROM axme.intent_events(%s)",
                    (intent_id,))
        events = cur.fetchall()
    say(f"   order {order_id}, intent {intent_id}{note}")
    start = events[0][3] if events else None
    for seq, event_type, status, at, actor, details in events:
        extra = []
        if "attempt" in details:
            extra.append(f"attempt {details['attempt']}")
        if "lease_until" in details:
            extra.append(f"lease until {clock(parse_ts(details['lease_until']))}")
        offset = f"+{(at - start).total_seconds():.3f} s"
        say(f"     {seq}  {offset:>9}  {event_type:<18} {status:<10} {', '.join(extra)}".rstrip())
    return events


def main():
    started = time.monotonic()
    receivers = []
    problems = []

    def on_alarm(signum, frame):
        raise Aborted(f"the demo took longer than {DEMO_TIMEOUT} s")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(DEMO_TIMEOUT)

    conn = psycopg2.connect("", application_name="order-demo")     # sender: one transaction per order
    waiter = psycopg2.connect("", application_name="order-demo-wait")
    waiter.autocommit = True     # wait_for must run outside the sending transaction, READ COMMITTED

    try:
        heading("axme order demo: orders are sent by a trigger and processed by a separate process")
        with conn, conn.cursor() as cur:
            cur.execute(open(os.path.join(HERE, "schema.sql")).read())
            cur.execute("SELECT current_setting('server_version'), extversion, "
                        "current_setting('shared_preload_libraries') "
                        "FROM pg_extension WHERE extname = 'axme'")
            version, extversion, preload = cur.fetchone()
        say(f"   PostgreSQL {version}, axme {extversion}, shared_preload_libraries = '{preload}', "
            f"lease {LEASE} s")
        say("   schema.sql: table orders, AFTER INSERT trigger -> axme.send_intent(), "
            "stream agent order-processor")

        # --- 1. the normal path --------------------------------------------------------------
        heading("1. Start the order processor (receiver.py, its own process and connection)")
        r1 = Receiver("receiver-1")
        receivers.append(r1)
        r1.wait_ready()

        heading(f"2. Insert {len(ORDERS)} orders, each INSERT its own transaction")
        placed = [insert_order(conn, customer, items) for customer, items in ORDERS]

        heading("3. The sender waits for each result with axme.wait_for()")
        docs = {}
        deadline = time.monotonic() + WAIT_SECONDS
        for order_id, intent_id, _ in placed:
            docs[order_id] = wait_result(waiter, order_id, intent_id, deadline)

        # --- 2. the crash ------------------------------------------------------------------------
        heading("4. Crash: a processor dies after claiming an order, before completing it")
        code = r1.stop()
        say(f"   receiver-1 stopped (exit code {code})")
        if code != 0:
            problems.append(f"receiver-1 exited with code {code}")
        crash_id, crash_intent, crash_expected = insert_order(conn, *CRASH_ORDER)
        say("   (no processor is running: the intent waits in the table)")
        say(f"   start receiver-2 --crash-on {crash_id}: it dies right after claiming order {crash_id}")
        r2 = Receiver("receiver-2", "--crash-on", str(crash_id), "--batch", "1")
        receivers.append(r2)
        code = r2.wait_exit(30)
        say(f"   receiver-2 died with exit code {code}")
        if code != CRASH_EXIT_CODE:
            problems.append(f"receiver-2 exited with code {code}, not the crash code {CRASH_EXIT_CODE}")
        with waiter.cursor() as cur:
            cur.execute("SELECT axme.get_intent(%s), now()", (crash_intent,))
            doc, now = cur.fetchone()
        lease_until = parse_ts(doc["lease_until"])
        left = (lease_until - now).total_seconds() if lease_until else 0
        say(f"   order {crash_id} now: {doc['status']}, attempt {doc['attempt']}, lease until "
            f"{clock(lease_until) if lease_until else '-'}"
            + (f" ({left:.1f} s from now): nobody else gets it before then" if left > 0 else
               " (already run out)"))
        if doc["status"] != "DELIVERED" or doc["attempt"] != 1:
            problems.append(f"order {crash_id} after the crash: {doc['status']} attempt {doc['attempt']}, "
                            "expected DELIVERED attempt 1")

        heading("5. Recovery: a fresh processor; the lease runs out and the order is handed out again")
        r3 = Receiver("receiver-3")
        receivers.append(r3)
        r3.wait_ready()
        say("   meanwhile a new order comes in; it is not held up by the stuck one:")
        late_id, late_intent, late_expected = insert_order(conn, *LATE_ORDER)
        deadline = time.monotonic() + WAIT_SECONDS
        docs[late_id] = wait_result(waiter, late_id, late_intent, deadline)
        docs[crash_id] = wait_result(waiter, crash_id, crash_intent, deadline)
        code = r3.stop()
        say(f"   receiver-3 stopped (exit code {code})")
        if code != 0:
            problems.append(f"receiver-3 exited with code {code}")

        # --- 3. what happened ------------------------------------------------------------------
        heading("6. Lifecycle events of every order (axme.intent_events)")
        everything = placed + [(crash_id, crash_intent, crash_expected),
                               (late_id, late_intent, late_expected)]
        for order_id, intent_id, expected in everything:
            crashed = order_id == crash_id
            events = show_events(waiter, order_id, intent_id,
                                 "  (its processor crashed)" if crashed else "")
            types = [e[1] for e in events]
            deliveries = [e[5].get("attempt") for e in events if e[1] == "intent.delivered"]
            doc = docs.get(order_id)
            if doc is None or doc["status"] != "COMPLETED":
                problems.append(f"order {order_id} was not completed")
                continue
            if (doc["result"] or {}).get("total_cents") != expected:
                problems.append(f"order {order_id}: total {doc['result']} is not {expected} cents")
            if (types[:2] != ["intent.created", "intent.submitted"] or types[-1] != "intent.completed"
                    or set(types[2:-1]) != {"intent.delivered"}
                    or deliveries != list(range(1, len(deliveries) + 1))):
                problems.append(f"order {order_id}: unexpected events {types}")
            if crashed:
                if deliveries != [1, 2] or doc["attempt"] != 2:
                    problems.append(f"order {crash_id}: delivered as attempts {deliveries}, expected [1, 2]")
                else:
                    first_lease = parse_ts(events[2][5]["lease_until"])
                    if events[3][3] < first_lease:
                        problems.append(f"order {crash_id}: handed out again at {events[3][3]}, "
                                        f"before its lease ran out at {first_lease}")
            elif len(deliveries) > 1:
                say(f"     (note: delivered {len(deliveries)} times: the machine was slow enough for a "
                    "lease to run out; at-least-once delivery at work)")

        with waiter.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders o JOIN order_intents USING (order_id) "
                        "JOIN axme.intents i USING (intent_id) "
                        "WHERE o.order_id = ANY(%s) AND i.status <> 'COMPLETED'",
                        ([o for o, _, _ in everything],))
            not_completed = cur.fetchone()[0]
    except (Aborted, psycopg2.Error, KeyboardInterrupt) as e:
        problems.append(f"aborted: {e or type(e).__name__}".strip())
        not_completed = None
        everything = []
    finally:
        signal.alarm(0)
        for r in receivers:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()

    heading("Check")
    n = len(everything)
    if not problems and not_completed == 0:
        say(f"   all {n} orders completed, 0 lost (order {crash_id} survived its processor's crash: "
            f"completed on attempt 2)")
        say(f"   demo took {time.monotonic() - started:.1f} s")
        return 0
    if not_completed is not None:
        say(f"   {n - not_completed} of {n} orders completed, {not_completed} not completed")
    for p in problems:
        say(f"   FAILED: {p}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
