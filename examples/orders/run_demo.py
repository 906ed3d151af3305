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
5. Webhooks: registers agent://myorg/production/invoicer as an http agent whose endpoint_url is
   webhook_receiver.py on 127.0.0.1, and sends it an invoice for three of the orders while that
   receiver is NOT running: axme's worker records the failed attempts (connection refused) and
   retries with backoff. Then starts the receiver, which verifies each request's Standard Webhooks
   signature itself; the retries deliver every invoice and wait_for returns the receiver's result.
   Two forged requests (tampered body, stale timestamp) must be refused with 401. Prints every
   invoice's events and delivery attempts (axme.delivery_attempts).
6. A person and a SQL function (approvals.py): an order above the approval limit becomes an
   approval task in an inbox agent's queue; reminders fire while nobody answers; an approver
   approves it in axme-gateway's web inbox in a headless browser (from psql where no browser is
   installed) and the sender's wait_for sees the decision. Then an internal agent (a SQL
   function run by axme's worker) computes the order's invoice total.

Exit status 0 when every order was completed with the right total and every invoice was completed
with the receiver's invoice and verified signatures, 1 otherwise: the test suite runs this demo as a
test. Connection settings come from PG* environment variables; scripts/demo.sh runs it inside a
throwaway cluster (pg_virtualenv) with shared_preload_libraries=axme and
axme.http_allowed_networks=127.0.0.0/8 (the receiver is on loopback).
"""
import base64
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2
import psycopg2.extras

import approvals

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
# Webhooks: the invoicer is an http agent; axme's background worker POSTs its intents to
# webhook_receiver.py. Short retry delays so the outage and the recovery fit in a few seconds:
# attempt n+1 follows attempt n after min(2000, 500 * 2^(n-1)) ms, drawn from the upper half.
INVOICER = "agent://myorg/production/invoicer"
INVOICER_OPTIONS = {"timeout_ms": 5000,
                    "retry": {"base_delay_ms": 500, "max_delay_ms": 2000, "max_attempts": 10}}
INVOICED = 3               # the first this many orders get an invoice
OUTAGE = 3.0               # seconds the receiver stays down after the invoices are sent
BIND_FAILED = 2            # what webhook_receiver.py exits with when its port is taken

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


class WebhookReceiver(Receiver):
    """webhook_receiver.py: its output is shown indented, and what it verified is remembered."""

    LINE = re.compile(r"webhook-id (\S+?)(?: attempt \S+)?: signature (verified|NOT verified)")
    SUMMARY = re.compile(r"stopped: (\d+) verified, (\d+) rejected, (\d+) duplicate")

    def __init__(self, name, port, secret):
        self.name = name
        self.port = port
        self.ready = threading.Event()
        self.verified = []          # webhook-ids, in order, one per verified request
        self.rejected = []          # webhook-ids of requests refused with 401
        self.summary = None         # (verified, rejected, duplicates) printed when it stops
        env = dict(os.environ, AXME_WEBHOOK_SECRET=secret)   # not in argv: ps shows argv to all
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "webhook_receiver.py"), "--name", name,
             "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            say("      " + line.rstrip("\n"))
            m = self.LINE.search(line)
            if m:
                (self.verified if m.group(2) == "verified" else self.rejected).append(m.group(1))
            m = self.SUMMARY.search(line)
            if m:
                self.summary = tuple(int(g) for g in m.groups())
            if " listening on " in line:
                self.ready.set()


def free_port():
    """A TCP port on 127.0.0.1 that is free now, outside the kernel's ephemeral range: while the
    receiver is down, nobody else's bind(0) picks it, and no outgoing connection to it can get
    it as its own source port (a TCP self-connect on loopback)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    candidates = [p for p in random.sample(range(10000, 32768), 200) if not low <= p <= high]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:                 # unusual port range: any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_invoicer(conn, port):
    url = f"http://127.0.0.1:{port}/hooks/axme"
    with conn, conn.cursor() as cur:
        cur.execute("SELECT axme.register_agent(%s, 'http', %s, %s)",
                    (INVOICER, url, json.dumps(INVOICER_OPTIONS)))
        cur.execute("SELECT axme.agent_secret(%s)", (INVOICER,))
        return url, cur.fetchone()[0]


def start_webhook_receiver(conn, port, secret):
    """Starts webhook_receiver.py on port; if that port was taken meanwhile, on another one (and
    points the agent's endpoint_url there). Returns the running receiver."""
    for _ in range(3):
        receiver = WebhookReceiver("invoicer", port, secret)
        try:
            receiver.wait_ready()
            return receiver
        except Aborted:
            if receiver.proc.poll() != BIND_FAILED:
                raise
            receiver.wait_exit(5)
            port = free_port()
            url, _ = register_invoicer(conn, port)
            say(f"   port taken meanwhile: endpoint_url is now {url}")
    raise Aborted("webhook_receiver.py could not bind a port")


def attempt_counts(conn, intent_ids):
    """{intent_id: [error_class or http status, ...]} of the delivery attempts so far."""
    with conn.cursor() as cur:
        cur.execute("SELECT intent_id::text, coalesce(error_class, http_status::text) "
                    "FROM axme.delivery_attempts WHERE intent_id = ANY(%s::uuid[]) "
                    "ORDER BY intent_id, attempt", (list(intent_ids),))
        out = {i: [] for i in intent_ids}
        for intent_id, outcome in cur.fetchall():
            out[intent_id].append(outcome)
    return out


def post_signed(url, secret, msg_id, timestamp, signed_body, sent_body):
    """POSTs a request signed (by the demo's own HMAC code) over signed_body but carrying
    sent_body; returns (HTTP status, response body), (None, None) when there was no response."""
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + signed_body, hashlib.sha256).digest()
    req = urllib.request.Request(url, data=sent_body, method="POST", headers={
        "content-type": "application/json", "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode()})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never via a proxy
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        say(f"   {msg_id}: no response: {e}")
        return None, None


def send_invoice(conn, order_id, customer, amount_cents):
    with conn, conn.cursor() as cur:
        cur.execute("SELECT axme.send_intent(%s, %s)", (json.dumps({
            "intent_type": "intent.invoice.create.v1",
            "from_agent": "agent://myorg/production/shop",
            "to_agent": INVOICER,
            "payload": {"order_id": order_id, "customer": customer, "amount_cents": amount_cents},
        }), f"invoice-order-{order_id}"))
        intent_id = cur.fetchone()[0]
    say(f"   invoice for order {order_id} ({customer}, {money(amount_cents)})  ->  intent "
        f"{intent_id[-12:]} sent")
    return intent_id


def show_invoice(conn, order_id, intent_id, t0):
    """Events and delivery attempts of one invoice intent; times relative to t0 (when the first
    invoice was sent). Returns (event types, attempt rows)."""
    with conn.cursor() as cur:
        cur.execute("SELECT seq, event_type, status, at, details FROM axme.intent_events(%s)",
                    (intent_id,))
        events = cur.fetchall()
        cur.execute("SELECT attempt, started_at, duration_ms, http_status, error_class, error, "
                    "next_attempt_at FROM axme.delivery_attempts WHERE intent_id = %s "
                    "ORDER BY attempt", (intent_id,))
        attempts = cur.fetchall()
    say(f"   invoice for order {order_id}, intent {intent_id}")
    say("     events:")
    for seq, event_type, status, at, details in events:
        extra = []
        if "attempt" in details:
            extra.append(f"attempt {details['attempt']}")
        if event_type == "intent.delivery_failed" and details.get("next_attempt_at"):
            extra.append(f"retry at +{(parse_ts(details['next_attempt_at']) - t0).total_seconds():.3f} s")
        if "http_status" in details:
            extra.append(f"http {details['http_status']}")
        if "reason" in details:
            extra.append(f"reason {details['reason']}")
        say(f"     {seq:>3}  +{(at - t0).total_seconds():.3f} s  {event_type:<22} {status:<10} "
            f"{', '.join(extra)}".rstrip())
    say("     delivery attempts (axme.delivery_attempts):")
    for attempt, started_at, duration_ms, http_status, error_class, error, next_at in attempts:
        outcome = (f"http {http_status}" if http_status is not None else "no response")
        outcome += f", {error_class}" if error_class else ", ok"
        if error_class and error:
            # libcurl's text is "<its generic message>: <the details>": the details say more
            detail = error.split(": ", 1)[-1]
            outcome += f": {detail if len(detail) <= 80 else detail[:77] + '...'}"
        say(f"     {attempt:>3}  +{(started_at - t0).total_seconds():.3f} s  {duration_ms:6.1f} ms  "
            f"{outcome}")
    return [e[1] for e in events], attempts


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
        f"  ->  intent {intent_id[-12:]} sent in the same transaction")
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
    not_completed = None       # orders not completed (None: not checked)
    everything = []            # (order_id, intent_id, expected total) of every order
    invoices = []              # (order_id, customer, amount, intent_id) of every invoice
    approved_order = None      # the order that needed an approval (step 10)

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

        # --- 4. webhooks: an outage of the receiver, and the recovery -----------------------------
        heading("7. Webhooks: the invoicer is an http agent, and its receiver is down")
        worker_pid = None
        deadline = time.monotonic() + 10
        with waiter.cursor() as cur:
            while True:     # started by the launcher within about a second of CREATE EXTENSION
                cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'axme delivery worker' "
                            "AND datname = current_database()")
                row = cur.fetchone()
                if row or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            worker_pid = row[0] if row else None
            cur.execute("SELECT current_setting('axme.http_allowed_networks', true)")
            allowed = cur.fetchone()[0]
        if worker_pid is None:
            problems.append("no axme delivery worker runs for this database (shared_preload_libraries?)")
        port = free_port()
        url, secret = register_invoicer(conn, port)
        say(f"   registered {INVOICER}: delivery mode http, endpoint_url {url}")
        say(f"     options {json.dumps(INVOICER_OPTIONS)}")
        say(f"   its signing secret, from axme.agent_secret(): {secret[:12]}... (the receiver gets it "
            "in its environment)")
        say(f"   axme delivery worker pid {worker_pid}; axme.http_allowed_networks = '{allowed}' "
            "(loopback is refused by default)")
        say(f"   nothing listens on 127.0.0.1:{port}. The shop invoices orders "
            f"{', '.join(str(o) for o, _, _ in placed[:INVOICED])}:")
        invoices = []
        for (order_id, _, expected), (customer, _) in zip(placed[:INVOICED], ORDERS):
            invoices.append((order_id, customer, expected,
                             send_invoice(conn, order_id, customer, expected)))
        sent_at = time.monotonic()
        invoice_ids = [i for _, _, _, i in invoices]
        say("   axme's worker tries at once, and again after each backoff; every attempt is a row "
            "of axme.delivery_attempts:")
        while True:
            time.sleep(1)
            elapsed = time.monotonic() - sent_at
            counts = attempt_counts(waiter, invoice_ids)
            classes = sorted({c for outcomes in counts.values() for c in outcomes})
            say(f"   +{elapsed:.1f} s  failed attempts so far: "
                + ", ".join(f"order {o}: {len(counts[i])}" for o, _, _, i in invoices)
                + (f"  ({', '.join(classes)})" if classes else ""))
            with waiter.cursor() as cur:
                cur.execute("SELECT count(*) FROM axme.intents WHERE intent_id = ANY(%s::uuid[]) "
                            "AND status NOT IN ('SUBMITTED', 'DELIVERED')", (invoice_ids,))
                given_up = cur.fetchone()[0]
            if given_up:
                problems.append(f"{given_up} invoice(s) given up during the outage (see their "
                                "attempts below)" + (": loopback is not in axme.http_allowed_networks; "
                                "run with -o axme.http_allowed_networks=127.0.0.0/8 as scripts/demo.sh "
                                "does" if "ssrf_blocked" in classes else ""))
                break
            if elapsed >= OUTAGE and all(len(c) >= 2 for c in counts.values()):
                break
            if elapsed >= OUTAGE + 15:
                problems.append("the outage did not show two failed attempts per invoice in "
                                f"{OUTAGE + 15:.0f} s")
                break

        heading("8. The receiver comes up: the next retry of each invoice is delivered and verified")
        webhook = start_webhook_receiver(conn, port, secret)
        receivers.append(webhook)
        url = f"http://127.0.0.1:{webhook.port}/hooks/axme"
        invoice_docs = {}
        deadline = time.monotonic() + WAIT_SECONDS
        for order_id, _, _, intent_id in invoices:
            timeout = max(0.0, deadline - time.monotonic())
            with waiter.cursor() as cur:
                cur.execute("SELECT axme.wait_for(%s, make_interval(secs => %s))", (intent_id, timeout))
                doc = invoice_docs[order_id] = cur.fetchone()[0]
            if doc is None:
                say(f"   invoice for order {order_id}: no result in time (axme.wait_for timed out)")
                continue
            took = (parse_ts(doc["updated_at"]) - parse_ts(doc["created_at"])).total_seconds()
            invoice = (doc["result"] or {}).get("invoice") or {}
            outcome = (invoice.get("number", doc["result"]) if doc["status"] == "COMPLETED" else
                       f"{doc['dead_letter_reason'] or ''} {json.dumps(doc['error'])}".strip())
            say(f"   sender's wait_for: invoice for order {order_id} {doc['status']} {took:.2f} s after "
                f"it was sent, on attempt {doc['attempt']}: {outcome}")
        say("   the demo's own requests to the receiver: two forged ones, which it must refuse with "
            "401, and a redelivery of order 1's invoice (same webhook-id, correctly signed), which "
            "must get the same invoice, not a second one:")
        forged_body = json.dumps({"intent_id": "00000000-0000-0000-0000-000000000000",
                                  "intent_type": "intent.invoice.create.v1", "to_agent": INVOICER,
                                  "payload": {"order_id": 1, "amount_cents": 100}, "attempt": 1}).encode()
        now = int(time.time())
        forged = {
            "forged-tampered-body": (now, forged_body.replace(b'"amount_cents": 100', b'"amount_cents": 1')),
            "forged-stale-timestamp": (now - 600, forged_body),
        }
        for msg_id, (timestamp, sent_body) in forged.items():
            status, _ = post_signed(url, secret, msg_id, timestamp, forged_body, sent_body)
            deadline = time.monotonic() + 5     # let the receiver's line come out first
            while msg_id not in webhook.rejected and time.monotonic() < deadline:
                time.sleep(0.05)
            say(f"   {msg_id}: HTTP {status}")
            if status != 401:
                problems.append(f"the receiver answered {status} to {msg_id}, not 401")
        first_order, _, _, first_intent = invoices[0]
        first_doc = invoice_docs.get(first_order) or {}
        seen = webhook.verified.count(first_intent)
        redelivery = json.dumps({"intent_id": first_intent, "intent_type": "intent.invoice.create.v1",
                                 "to_agent": INVOICER, "payload": {}, "attempt": 99}).encode()
        status, body = post_signed(url, secret, first_intent, int(time.time()), redelivery, redelivery)
        deadline = time.monotonic() + 5
        while webhook.verified.count(first_intent) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            again = json.loads(body)["result"]["invoice"]["number"]
        except (TypeError, ValueError, KeyError):
            again = None
        expected_number = ((first_doc.get("result") or {}).get("invoice") or {}).get("number")
        say(f"   redelivery of webhook-id ...{first_intent[-12:]}: HTTP {status}, invoice {again}")
        if status != 200 or again is None or again != expected_number:
            problems.append(f"a redelivery of order {first_order}'s invoice got HTTP {status}, invoice "
                            f"{again}, expected 200 and {expected_number}")
        code = webhook.stop()
        say(f"   {webhook.name} stopped (exit code {code})")
        if code != 0:
            problems.append(f"webhook_receiver.py exited with code {code}")

        heading("9. Events and delivery attempts of every invoice (times from the first send)")
        with waiter.cursor() as cur:
            cur.execute("SELECT min(created_at) FROM axme.intents WHERE intent_id = ANY(%s::uuid[])",
                        (invoice_ids,))
            t0 = cur.fetchone()[0]
        numbers = set()
        failed_during_outage = 0
        for order_id, customer, expected, intent_id in invoices:
            types, attempts = show_invoice(waiter, order_id, intent_id, t0)
            doc = invoice_docs.get(order_id)
            if doc is None or doc["status"] != "COMPLETED":
                problems.append(f"the invoice for order {order_id} is "
                                f"{doc['status'] if doc else 'not finished'}, not COMPLETED")
                continue
            invoice = (doc["result"] or {}).get("invoice") or {}
            numbers.add(invoice.get("number"))
            if invoice.get("order_id") != order_id or invoice.get("amount_cents") != expected:
                problems.append(f"the invoice for order {order_id} is {doc['result']}")
            if intent_id not in webhook.verified:
                problems.append(f"the receiver did not verify a request for intent {intent_id}")
            failed = [a for a in attempts if a[4] is not None]
            failed_during_outage += len(failed)
            if not failed or failed[0][4] != "connect":
                problems.append(f"invoice for order {order_id}: no failed connect attempt during "
                                "the outage")
            if not attempts or attempts[-1][3] != 200 or attempts[-1][4] is not None:
                problems.append(f"invoice for order {order_id}: the last attempt was not a 200")
            if any(a[3] == 401 for a in attempts):
                problems.append(f"invoice for order {order_id}: the receiver refused a signature (401)")
            if (types[:2] != ["intent.created", "intent.submitted"] or types[-1] != "intent.completed"
                    or not set(types[2:-1]) <= {"intent.delivered", "intent.delivery_failed"}):
                problems.append(f"invoice for order {order_id}: unexpected events {types}")
        completed = [d for d in invoice_docs.values() if d and d["status"] == "COMPLETED"]
        if len(numbers) != len(completed):
            problems.append(f"invoice numbers are not distinct: {sorted(map(str, numbers))}")
        not_verified = [i for i in webhook.rejected if i not in forged]
        if not_verified:
            problems.append(f"{len(not_verified)} request(s) from axme failed signature verification "
                            f"(webhook-ids {', '.join(not_verified)})")
        if sorted(i for i in webhook.rejected if i in forged) != sorted(forged):
            problems.append(f"the receiver did not refuse every forged request: refused "
                            f"{webhook.rejected}, forged {sorted(forged)}")
        if webhook.summary is None or webhook.summary[1] != len(forged) or webhook.summary[2] < 1:
            problems.append(f"the receiver's own count (verified, rejected, duplicates) is "
                            f"{webhook.summary}, expected {len(forged)} rejected and the redelivery "
                            "as a duplicate")
        # requests from axme: the verified ones for the invoices, less the demo's redelivery
        verified_requests = sum(1 for i in webhook.verified if i in invoice_ids) - 1

        # --- 5. a person's approval (inbox) and a SQL handler (internal): approvals.py -----------
        approved_order = approvals.run(conn, waiter, say, heading, problems, insert_order, money)
    except (Aborted, psycopg2.Error, KeyboardInterrupt) as e:
        problems.append(f"aborted: {e or type(e).__name__}".strip())
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
        say(f"   all {len(invoices)} invoices COMPLETED over webhooks after {failed_during_outage} "
            f"failed attempts during the outage; {verified_requests} request(s) from axme, every "
            f"signature verified; {len(forged)} forged requests refused, a redelivery de-duplicated")
        say(f"   order {approved_order} waited for a person: reminded while nobody answered, approved "
            f"{'in the web inbox' if approvals.web_approval.available() else 'from psql'}; its invoice "
            "total came from a SQL handler run by axme's worker")
        say(f"   demo took {time.monotonic() - started:.1f} s")
        return 0
    if not_completed is not None:
        say(f"   {n - not_completed} of {n} orders completed, {not_completed} not completed")
    for p in problems:
        say(f"   FAILED: {p}")
    return 1

if __name__ == "__main__":
    sys.exit(main())
