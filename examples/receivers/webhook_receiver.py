#!/usr/bin/python3
"""A webhook receiver for axme's http mode, verifying every request's Standard Webhooks signature.

    AXME_WEBHOOK_SECRET=whsec_... PORT=8080 python3 webhook_receiver.py

Python standard library only. The check is the scheme's: HMAC-SHA256 over
"{webhook-id}.{webhook-timestamp}.{body}", keyed by the base64-decoded secret after "whsec_",
compared with every "v1,<base64>" entry of webhook-signature; timestamps more than 5 minutes off
are refused. (With pip, `standardwebhooks.Webhook(secret).verify(body, headers)` does the same.)
The secret is the agent's: SELECT axme.agent_secret('agent://...') as an axme admin.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import threading
import time

PORT = int(os.environ.get("PORT", "8080"))
KEY = base64.b64decode(os.environ["AXME_WEBHOOK_SECRET"].removeprefix("whsec_"))
TOLERANCE_SECONDS = 300

# At-least-once: a retry of a request whose answer was lost has the same webhook-id. Keep the
# answers you gave (in a real receiver: in your database, in the transaction of the work).
answered = {}
lock = threading.Lock()


def handle(intent):
    """Your work. Return the result axme stores on the intent."""
    return {"handled": True, "receiver": "python-webhook", "payload": intent["payload"]}


def verified(headers, body):
    msg_id, ts, sigs = (headers.get(h, "") for h in
                        ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not ts.isdigit() or abs(time.time() - int(ts)) > TOLERANCE_SECONDS:
        return False
    mac = hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(s.startswith("v1,") and hmac.compare_digest(s[3:], expected) for s in sigs.split())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verified(headers, body):
            return self.reply(401, {"error": "invalid signature"})
        intent = json.loads(body)
        with lock:
            if headers["webhook-id"] not in answered:
                try:
                    answered[headers["webhook-id"]] = {"status": "COMPLETED", "result": handle(intent)}
                except Exception as e:
                    return self.reply(503, {"error": str(e)})   # 5xx: axme retries after a backoff
            answer = answered[headers["webhook-id"]]
        print(f"completed {intent['intent_id']} ({intent['intent_type']}, attempt {intent['attempt']})",
              flush=True)
        self.reply(200, answer)                                  # {"status": "COMPLETED", "result": ...}

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("", PORT), Handler)
    print(f"listening on port {PORT}", flush=True)
    server.serve_forever()
