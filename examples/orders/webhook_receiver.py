#!/usr/bin/python3
"""The invoicer: an http (webhook) receiver of axme, as a separate process (Python stdlib only).

axme's background worker POSTs every intent of the http agent agent://myorg/production/invoicer to
this server. Each request is checked before anything is done with it, following Standard Webhooks
(https://www.standardwebhooks.com/):

- webhook-signature holds space-separated "v1,<base64>" entries; one of them must equal the
  base64 of HMAC-SHA256 over the bytes "{webhook-id}.{webhook-timestamp}.{body}", keyed by the
  base64-DECODED part of the secret after "whsec_" (compared in constant time);
- webhook-timestamp (Unix seconds of this attempt) must be within 5 minutes of our clock, so a
  captured request cannot be replayed later;
- otherwise the answer is 401 and nothing happens.

A verified request is de-duplicated by webhook-id (axme delivers at least once and keeps the id on
every attempt): a repeat gets the answer of the first one and issues no second invoice. The answer
is 200 with {"status": "COMPLETED", "result": {"invoice": {...}}}, which axme stores as the intent's
result. One line is printed per request, verified or not, and a summary when the server stops.

    AXME_WEBHOOK_SECRET=whsec_... /usr/bin/python3 webhook_receiver.py --port PORT [--name NAME]

The secret comes from the environment (not argv, which other users can read with ps); get it with
SELECT axme.agent_secret('agent://myorg/production/invoicer'). Listens on 127.0.0.1 only.
Exit status: 0 after SIGTERM/SIGINT, 1 when the secret is unusable, 2 when the port cannot be bound.
"""
import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import http.server
import json
import os
import signal
import sys
import threading
import time

TOLERANCE = 5 * 60          # seconds a webhook-timestamp may be off our clock, either way
MAX_BODY = 1024 * 1024      # bytes; a bigger request is refused (413) without reading it
BAD_SECRET = 1
BIND_FAILED = 2


def log(name, text):
    now = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"[{name}] {now} {text}", flush=True)


def signing_key(secret):
    """The HMAC key of a whsec_ secret: the base64-decoded part after the prefix."""
    if not secret.startswith("whsec_"):
        raise ValueError("the secret does not start with whsec_")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except binascii.Error as e:
        raise ValueError(f"the secret is not base64 after whsec_: {e}") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def sign(key, msg_id, timestamp, body):
    """The Standard Webhooks v1 signature (base64 text) of one request."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def verify(key, headers, body, now=None):
    """Returns None when the request is authentic, else why not (a short text)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts = int(timestamp)
    except ValueError:
        return f"webhook-timestamp {timestamp!r} is not a number"
    off = (time.time() if now is None else now) - ts
    if abs(off) > TOLERANCE:
        return f"webhook-timestamp is {off:+.0f} s off (more than {TOLERANCE} s)"
    expected = sign(key, msg_id, timestamp, body).encode()
    matched = False
    for entry in signatures.split():
        version, _, sig = entry.partition(",")
        # compare_digest: the time taken does not reveal how much of a guess was right.
        # Every entry is compared (no early exit) so the count of entries is all one learns.
        if version == "v1" and hmac.compare_digest(expected, sig.encode()):
            matched = True
    return None if matched else "no v1 signature matches"


class State:
    """What the server remembers: the answers by webhook-id, and counters."""

    def __init__(self, name, key):
        self.name = name
        self.key = key
        self.lock = threading.Lock()
        self.answers = {}          # webhook-id -> (status code, response body bytes)
        self.invoices = 0
        self.verified = 0
        self.rejected = 0
        self.duplicates = 0


def make_invoice(state, intent):
    """The "work": an invoice for the order in the intent's payload."""
    payload = intent.get("payload") or {}
    state.invoices += 1
    return {
        "number": f"INV-{datetime.date.today():%Y}-{state.invoices:04d}",
        "order_id": payload.get("order_id"),
        "customer": payload.get("customer"),
        "amount_cents": payload.get("amount_cents"),
        "issued_by": state.name,
    }


class Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1: keep-alive connections (the worker reuses them) and Expect: 100-continue work.
    protocol_version = "HTTP/1.1"
    server_version = "axme-demo-invoicer"
    sys_version = ""

    def log_message(self, format, *args):      # our own one line per request instead
        pass

    def answer(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return body

    def do_POST(self):
        state = self.server.state
        msg_id = self.headers.get("webhook-id", "-")
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            with state.lock:
                state.rejected += 1
            log(state.name, f"webhook-id {msg_id}: REJECTED 411/413 (content-length "
                            f"{self.headers.get('content-length')!r})")
            self.close_connection = True
            self.answer(413 if length > MAX_BODY else 411, {"error": "bad content-length"})
            return
        body = self.rfile.read(length)

        problem = verify(state.key, self.headers, body)
        if problem:
            with state.lock:
                state.rejected += 1
            log(state.name, f"webhook-id {msg_id}: signature NOT verified ({problem}) -> 401")
            self.answer(401, {"error": "invalid signature", "detail": problem})
            return

        try:
            intent = json.loads(body)
            attempt = intent.get("attempt", "?")
        except (ValueError, AttributeError):
            intent, attempt = None, "?"
        with state.lock:
            state.verified += 1
            previous = state.answers.get(msg_id)
            if previous is None and isinstance(intent, dict):
                doc = {"status": "COMPLETED", "result": {"invoice": make_invoice(state, intent)}}
                state.answers[msg_id] = (200, doc)
            elif previous is not None:
                state.duplicates += 1
        if previous is not None:
            code, doc = previous
            log(state.name, f"webhook-id {msg_id} attempt {attempt}: signature verified, DUPLICATE "
                            f"-> {code}, the same invoice {doc['result']['invoice']['number']} again")
            self.answer(code, doc)
            return
        if not isinstance(intent, dict):
            log(state.name, f"webhook-id {msg_id}: signature verified, body is not a JSON object -> 400")
            self.answer(400, {"error": "the body is not a JSON object"})
            return
        invoice = doc["result"]["invoice"]
        amount = invoice["amount_cents"]
        log(state.name, f"webhook-id {msg_id} attempt {attempt}: signature verified -> 200, invoice "
                        f"{invoice['number']} for order {invoice['order_id']}"
                        + (f" ({amount / 100:.2f})" if isinstance(amount, int) else ""))
        self.answer(200, doc)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True          # a kept-alive connection does not hold up the exit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--name", default="invoicer")
    args = parser.parse_args()

    try:
        key = signing_key(os.environ.get("AXME_WEBHOOK_SECRET", ""))
    except ValueError as e:
        print(f"webhook_receiver: AXME_WEBHOOK_SECRET: {e}", file=sys.stderr, flush=True)
        return BAD_SECRET
    try:
        server = Server(("127.0.0.1", args.port), Handler)
    except OSError as e:
        print(f"webhook_receiver: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr,
              flush=True)
        return BIND_FAILED
    server.state = State(args.name, key)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    serving.start()
    log(args.name, f"listening on http://127.0.0.1:{args.port}/ (pid {os.getpid()}), "
                   f"verifying Standard Webhooks signatures")
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    s = server.state
    log(args.name, f"stopped: {s.verified} verified, {s.rejected} rejected, {s.duplicates} duplicate(s), "
                   f"{s.invoices} invoice(s) issued")
    return 0


if __name__ == "__main__":
    sys.exit(main())
