"""The axme-gateway suite: a real cluster (pg_virtualenv, PG* in the environment) and the gateway
binary from the build tree, spoken to over HTTP.

Every endpoint, every error code, idempotency, SSE resume with Last-Event-ID, a gateway restart
while streams are open, 1,000 concurrent SSE clients with the gateway's memory measured, bad
input never a 5xx, and a key reads only its role's data.  Run by scripts/test.sh (suite
"gateway"); ends with a line "N passed, M failed".
"""
import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BINARY = os.environ.get("AXME_GATEWAY_BIN", os.path.join(ROOT, "gateway", "axme-gateway"))
LOGDIR = os.environ.get("AXME_TEST_LOGDIR", "/tmp")
KEYS = {}
ORDERS = "agent://acme/prod/orders"
APPROVERS = "agent://acme/finance/approvers"
CFO = "agent://acme/finance/cfo"
FIGURES = {}


def psql(sql, *args):
    """Run SQL as the cluster's superuser; returns stdout (unaligned, tuples only)."""
    cmd = ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
    for i, a in enumerate(args):
        cmd += ["-v", "a%d=%s" % (i + 1, a)]
    r = subprocess.run(cmd, input=sql, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("psql failed: %s\n%s" % (sql, r.stderr))
    return r.stdout.strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Gateway:
    """One axme-gateway process."""

    def __init__(self, *extra, name="gateway"):
        self.port = free_port()
        self.extra = list(extra)
        self.name = name
        self.proc = None

    def start(self):
        dsn = "host=127.0.0.1 port=%s dbname=postgres user=gw password=gw" % os.environ.get("PGPORT", "5432")
        self.log = open(os.path.join(LOGDIR, "%s-%d.log" % (self.name, self.port)), "a")
        self.proc = subprocess.Popen([BINARY, "--dsn", dsn, "--listen", "127.0.0.1:%d" % self.port,
                                      "--www", os.path.join(ROOT, "gateway", "www"),
                                      "--keepalive-seconds", "2"] + self.extra,
                                     stdout=self.log, stderr=self.log)
        for _ in range(100):
            try:
                st, _, _ = request(self, "GET", "/health")
                if st == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            rc = self.proc.wait(timeout=20)
        else:
            rc = self.proc.returncode if self.proc else None
        self.log.close()
        return rc

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


GW = None


def request(gw, method, path, body=None, key=None, headers=None, raw=None):
    h = dict(headers or {})
    if key is not None:
        h["x-api-key"] = KEYS.get(key, key)
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if data is not None and "Content-Type" not in h:
        h["Content-Type"] = "application/json"
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    c.close()
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = text
    return r.status, doc, r


def call(method, path, body=None, key=None, headers=None, raw=None):
    return request(GW, method, path, body, key, headers, raw)


def send(key="shop", payload=None, idem=None, to=ORDERS, extra=None):
    doc = {"intent_type": "intent.order.process.v1", "to_agent": to, "payload": payload or {"n": 1}}
    doc.update(extra or {})
    h = {"Idempotency-Key": idem} if idem else None
    st, d, _ = call("POST", "/v1/intents", doc, key, h)
    assert st == 200, (st, d)
    return d["intent_id"]


class SSE:
    """A minimal SSE client on a raw socket: events() reads until a deadline."""

    def __init__(self, gw, path, key, last_event_id=None):
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        h = "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nx-api-key: %s\r\n" % (path, KEYS.get(key, key))
        if last_event_id is not None:
            h += "Last-Event-ID: %s\r\n" % last_event_id
        self.sock.sendall((h + "\r\n").encode())
        self.buf = b""
        self.status = None
        self.headers = {}
        self.closed = False
        self._read_head()

    def _fill(self, timeout):
        self.sock.settimeout(max(timeout, 0.01))
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def _read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(10) and self.closed:
                raise RuntimeError("closed before headers")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        for l in lines[1:]:
            k, v = l.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.body = b""

    def _decode(self):
        if not self.chunked:
            self.body += self.buf
            self.buf = b""
            return
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            size = int(self.buf[:i], 16)
            if len(self.buf) < i + 2 + size + 2:
                return
            if size == 0:
                self.closed = True
            self.body += self.buf[i + 2:i + 2 + size]
            self.buf = self.buf[i + 2 + size + 2:]

    def events(self, timeout=5.0, until=None, count=None):
        """Events ({"id", "event", "data"}) until `until(event)` is true, count events, close or timeout."""
        out = []
        end = time.time() + timeout
        while True:
            self._decode()
            while b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                ev = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    ev[k] = v[1:] if v.startswith(" ") else v
                if "event" in ev or "data" in ev:
                    if "data" in ev:
                        try:
                            ev["data"] = json.loads(ev["data"])
                        except ValueError:
                            pass
                    out.append(ev)
                    if until and until(ev):
                        return out
                    if count and len(out) >= count:
                        return out
            if self.closed or time.time() >= end:
                return out
            self._fill(end - time.time())

    def close(self):
        self.sock.close()


def setUpModule():
    global GW
    psql("CREATE EXTENSION axme")
    with open(os.path.join(HERE, "setup.sql")) as f:
        psql(f.read())
    for line in psql("SELECT name || ' ' || key FROM gw_keys").splitlines():
        n, k = line.split(" ", 1)
        KEYS[n] = k
    GW = Gateway().start()


def tearDownModule():
    if GW:
        GW.stop()
    if FIGURES:
        print("figures: " + json.dumps(FIGURES, sort_keys=True))
        with open(os.path.join(LOGDIR, "gateway-figures.json"), "w") as f:
            json.dump(FIGURES, f, indent=2, sort_keys=True)


def assert_error(t, st, doc, status, code=None):
    t.assertEqual(st, status, doc)
    t.assertIsInstance(doc, dict, doc)
    e = doc["error"]
    t.assertIsInstance(e["message"], str)
    t.assertIsInstance(e["retryable"], bool)
    if code:
        t.assertEqual(e["code"], code, doc)


class T01Basics(unittest.TestCase):
    def test_health(self):
        st, d, _ = call("GET", "/health")
        self.assertEqual(st, 200)
        self.assertTrue(d["ok"] and d["database"] and d["listener"])

    def test_help_and_bad_flags(self):
        r = subprocess.run([BINARY, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        for flag in ("--dsn", "--listen", "--pool-size", "--rate-limit", "--config", "AXME_GATEWAY_"):
            self.assertIn(flag, r.stdout)
        r = subprocess.run([BINARY, "--no-such-flag"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        r = subprocess.run([BINARY], capture_output=True, text=True, env={"PATH": "/usr/bin"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("--dsn", r.stderr)

    def test_config_file_and_env(self):
        path = os.path.join(LOGDIR, "gateway-test.conf")
        with open(path, "w") as f:
            f.write("# test\npool_size = 2\nrate-limit = 3\n")
        g = Gateway("--config", path, name="gateway-config")
        g.start()
        try:
            st, d, _ = request(g, "GET", "/health")
            self.assertEqual(d["pool"]["size"], 2)
        finally:
            g.stop()
        env = dict(os.environ, AXME_GATEWAY_POOL_SIZE="3")
        r = subprocess.run([BINARY, "--nope"], capture_output=True, text=True, env=env)
        self.assertEqual(r.returncode, 2)

    def test_trace_id_echoed(self):
        st, d, r = call("GET", "/v1/whoami", key="shop", headers={"X-Trace-Id": "trace-123.abc"})
        self.assertEqual(st, 200)
        self.assertEqual(r.getheader("X-Trace-Id"), "trace-123.abc")
        st, d, r = call("GET", "/v1/whoami", key="shop")
        self.assertRegex(r.getheader("X-Trace-Id"), "^[0-9a-f]{32}$")
        st, d, r = call("GET", "/v1/nope", key="bad-key-123")
        self.assertTrue(r.getheader("X-Trace-Id"))

    def test_whoami(self):
        st, d, _ = call("GET", "/v1/whoami", key="approvers")
        self.assertEqual((st, d["role"], d["admin"], d["inboxes"]), (200, "approvers", False, [APPROVERS]))
        st, d, _ = call("GET", "/v1/whoami", key="opsadmin")
        self.assertTrue(d["admin"])


class T02Auth(unittest.TestCase):
    def test_401(self):
        st, d, r = call("GET", "/v1/whoami")
        assert_error(self, st, d, 401, "unauthorized")
        self.assertEqual(r.getheader("WWW-Authenticate"), "Bearer")
        st, d, _ = call("GET", "/v1/whoami", key="axk_0000000000000000")
        assert_error(self, st, d, 401, "unauthorized")
        st, d, _ = call("GET", "/v1/whoami", key="revoked")
        assert_error(self, st, d, 401, "unauthorized")
        st, d, _ = call("GET", "/v1/whoami", key="x")
        assert_error(self, st, d, 401)

    def test_bearer(self):
        st, d, _ = call("GET", "/v1/whoami", headers={"Authorization": "Bearer " + KEYS["rx"]})
        self.assertEqual((st, d["role"]), (200, "rx"))

    def test_403(self):
        # a role without axme_sender
        st, d, _ = call("POST", "/v1/intents", {"intent_type": "intent.a.v1", "to_agent": ORDERS, "payload": {}}, "nobody")
        assert_error(self, st, d, 403, "forbidden")
        # a sender claiming for an agent it does not receive for
        st, d, _ = call("POST", "/v1/agents/%s/claim" % ORDERS, {}, "shop")
        assert_error(self, st, d, 403, "forbidden")
        # a key whose role the gateway's login role may not SET ROLE to
        st, d, _ = call("GET", "/v1/whoami", key="notmine")
        assert_error(self, st, d, 403, "forbidden")

    def test_expired_and_revoked_now(self):
        k = psql("SELECT axme.create_api_key('shop', 'short-lived')")
        kid = psql("SELECT key_id FROM axme.api_keys WHERE label = 'short-lived'")
        st, _, _ = call("GET", "/v1/whoami", key=k)
        self.assertEqual(st, 200)
        psql("SELECT axme.revoke_api_key(%s)" % kid)
        time.sleep(5.5)         # the key cache
        st, d, _ = call("GET", "/v1/whoami", key=k)
        assert_error(self, st, d, 401)

    def test_keys_sql(self):
        # stored hashed; the view has no secret; superuser roles refused; admins only
        self.assertEqual(psql("SELECT count(*) FROM axme.api_key_hashes WHERE key_hash = sha256(convert_to('%s', 'UTF8'))" % KEYS["shop"]), "1")
        cols = psql("SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'axme.api_keys'::regclass AND attnum > 0")
        self.assertNotIn("hash", cols)
        self.assertNotIn(KEYS["shop"], psql("SELECT string_agg(key_prefix, ',') FROM axme.api_keys"))
        r = subprocess.run(["psql", "-XAtq", "-d", "postgres", "-c", "SELECT axme.create_api_key('postgres', 'su')"],
                           capture_output=True, text=True)
        self.assertIn("superuser", r.stderr)
        r = subprocess.run(["psql", "-XAtq", "-d", "postgres", "-c",
                            "SET ROLE shop; SELECT axme.create_api_key('shop', 'self')"], capture_output=True, text=True)
        self.assertIn("permission denied", r.stderr)
        r = subprocess.run(["psql", "-XAtq", "-d", "postgres", "-c",
                            "SET ROLE shop; SELECT * FROM axme._gateway_authenticate('x')"], capture_output=True, text=True)
        self.assertIn("permission denied", r.stderr)
        self.assertEqual(psql("SELECT axme.revoke_api_key((SELECT key_id FROM axme.api_keys WHERE label = 'revoked one'))"), "f")

    def test_rate_limit(self):
        g = Gateway("--rate-limit", "2", "--rate-burst", "3", name="gateway-rate").start()
        try:
            sts = []
            for _ in range(8):
                st, d, r = request(g, "GET", "/v1/whoami", key="shop")
                sts.append(st)
                if st == 429:
                    assert_error(self, st, d, 429, "rate_limited")
                    self.assertTrue(d["error"]["retryable"])
                    self.assertGreaterEqual(int(r.getheader("Retry-After")), 1)
            self.assertIn(429, sts)
            self.assertEqual(sts[:3], [200, 200, 200])
            # another key has its own bucket
            st, _, _ = request(g, "GET", "/v1/whoami", key="rx")
            self.assertEqual(st, 200)
        finally:
            g.stop()

    def test_503_and_504(self):
        """A full pool is 503 after pool-wait-ms, a statement over statement-timeout-ms is 504;
        both retryable with Retry-After."""
        import psycopg2
        g = Gateway("--pool-size", "1", "--pool-wait-ms", "100", "--statement-timeout-ms", "1500",
                    name="gateway-small").start()
        try:
            iid = send()
            st, _, _ = request(g, "GET", "/v1/whoami", key="rx")        # the key is cached now
            self.assertEqual(st, 200)
            locker = psycopg2.connect("")
            lc = locker.cursor()
            lc.execute("SELECT 1 FROM axme.intents WHERE intent_id = %s FOR UPDATE", (iid,))
            out = {}

            def blocked():
                out["r"] = request(g, "POST", "/v1/intents/%s/resolve" % iid, {"status": "CANCELED", "reason": "x"}, "rx")

            th = threading.Thread(target=blocked)
            th.start()
            time.sleep(0.4)
            st, d, r = request(g, "GET", "/v1/whoami", key="rx")
            assert_error(self, st, d, 503, "unavailable")
            self.assertTrue(d["error"]["retryable"])
            self.assertEqual(r.getheader("Retry-After"), "1")
            th.join(10)
            st, d, r = out["r"]
            assert_error(self, st, d, 504, "timeout")
            self.assertTrue(d["error"]["retryable"])
            locker.rollback()
            locker.close()
            st, d, _ = request(g, "POST", "/v1/intents/%s/resolve" % iid, {"status": "CANCELED", "reason": "x"}, "rx")
            self.assertEqual(st, 200, d)
        finally:
            g.stop()

    def test_session_cookie_and_csrf(self):
        st, d, r = call("POST", "/v1/session", key="approvers")
        self.assertEqual(st, 200)
        cookies = r.msg.get_all("Set-Cookie")
        sess = [c for c in cookies if c.startswith("axme_session=")][0]
        self.assertIn("HttpOnly", sess)
        self.assertIn("SameSite=Strict", sess)
        csrf = d["csrf_token"]
        jar = "; ".join(c.split(";")[0] for c in cookies)
        st, d, _ = call("GET", "/v1/whoami", headers={"Cookie": jar})
        self.assertEqual((st, d["role"]), (200, "approvers"))
        st, d, _ = call("POST", "/v1/inbox/%s/reply" % uuid.uuid4(), {"message": "x"}, headers={"Cookie": jar})
        assert_error(self, st, d, 403, "csrf_failed")
        st, d, _ = call("POST", "/v1/inbox/%s/reply" % uuid.uuid4(), {"message": "x"},
                        headers={"Cookie": jar, "X-CSRF-Token": csrf})
        assert_error(self, st, d, 404)
        st, _, r = call("POST", "/v1/session", key="nope-nope-nope")
        self.assertEqual(st, 401)


class T03Intents(unittest.TestCase):
    def test_send_get_events(self):
        iid = send(payload={"order": "ORD-1"})
        st, d, _ = call("GET", "/v1/intents/" + iid, key="shop")
        self.assertEqual(st, 200)
        self.assertEqual((d["ok"], d["intent"]["status"], d["intent"]["payload"]), (True, "SUBMITTED", {"order": "ORD-1"}))
        st, d, _ = call("GET", "/v1/intents/%s/events" % iid, key="shop")
        self.assertEqual([e["event_type"] for e in d["events"]], ["intent.created", "intent.submitted"])
        self.assertEqual(d["events"][0]["intent_id"], iid)
        st, d, _ = call("GET", "/v1/intents/%s/events?since=1" % iid, key="shop")
        self.assertEqual([e["seq"] for e in d["events"]], [2])

    def test_idempotency(self):
        k = "idem-" + uuid.uuid4().hex
        a = send(payload={"x": 1}, idem=k)
        b = send(payload={"x": 1}, idem=k)
        self.assertEqual(a, b)
        st, d, _ = call("POST", "/v1/intents", {"intent_type": "intent.order.process.v1", "to_agent": ORDERS,
                                                "payload": {"x": 2}}, "shop", {"Idempotency-Key": k})
        assert_error(self, st, d, 409, "conflict")
        self.assertEqual(d["error"]["sqlstate"], "23505")
        # another role's identical key is its own intent
        c = send("rival", payload={"x": 1}, idem=k)
        self.assertNotEqual(a, c)

    def test_resolve(self):
        iid = send()
        st, d, _ = call("POST", "/v1/intents/%s/resolve" % iid, {"status": "CANCELED", "reason": "test"}, "rx")
        self.assertEqual((st, d["status"]), (200, "CANCELED"))
        st, d, _ = call("GET", "/v1/intents/" + iid, key="shop")
        self.assertEqual(d["intent"]["status"], "CANCELED")
        self.assertEqual(d["intent"]["result"], {"reason": "test"})
        st, d, _ = call("POST", "/v1/intents/%s/resolve" % iid, {"status": "COMPLETED", "result": {}}, "rx")
        assert_error(self, st, d, 409, "conflict")
        # a sender may read but not resolve
        iid = send()
        st, d, _ = call("POST", "/v1/intents/%s/resolve" % iid, {"status": "COMPLETED", "result": {}}, "shop")
        assert_error(self, st, d, 403)
        st, d, _ = call("POST", "/v1/intents/%s/resolve" % iid, {"status": "DONE"}, "rx")
        assert_error(self, st, d, 400, "invalid_request")

    def test_http_polling(self):
        call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 1000}, "rx")   # drain
        a, b = send(payload={"k": "a"}), send(payload={"k": "b"})
        st, d, _ = call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 10, "lease_seconds": 60}, "rx")
        self.assertEqual(st, 200)
        got = {i["intent_id"]: i for i in d["intents"]}
        self.assertEqual(set(got), {a, b})
        self.assertEqual(got[a]["attempt"], 1)
        st, d, _ = call("POST", "/v1/intents/%s/ack" % a, {"attempt": 1}, "rx")
        self.assertEqual(st, 200)
        st, d, _ = call("POST", "/v1/intents/%s/extend" % a, {"attempt": 1, "lease_seconds": 120}, "rx")
        self.assertEqual(st, 200)
        self.assertIn("lease_until", d)
        st, d, _ = call("POST", "/v1/intents/%s/complete" % a, {"attempt": 2, "result": {}}, "rx")
        assert_error(self, st, d, 409)          # stale receipt
        st, d, _ = call("POST", "/v1/intents/%s/complete" % a, {"attempt": 1, "result": {"done": True}}, "rx")
        self.assertEqual(st, 200)
        st, d, _ = call("GET", "/v1/intents/" + a, key="shop")
        self.assertEqual((d["intent"]["status"], d["intent"]["result"]), ("COMPLETED", {"done": True}))
        # fail with retry, then exhaust (max_attempts 2) and replay the dead letter
        st, d, _ = call("POST", "/v1/intents/%s/fail" % b, {"attempt": 1, "retry": True, "error": {"e": 1}}, "rx")
        self.assertEqual(st, 200)
        psql("UPDATE axme.intents SET due_at = now() WHERE intent_id = '%s'" % b)   # skip the backoff
        st, d, _ = call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 10}, "rx")
        self.assertEqual([i["intent_id"] for i in d["intents"]], [b])
        st, d, _ = call("POST", "/v1/intents/%s/fail" % b, {"attempt": 2, "retry": True}, "rx")
        self.assertEqual(st, 200)
        st, d, _ = call("GET", "/v1/ops/dead_letters", key="opsadmin")
        self.assertIn(b, [x["intent_id"] for x in d["dead_letters"]])
        st, d, _ = call("POST", "/v1/intents/%s/replay" % b, {}, "rx")
        self.assertEqual(st, 200)
        st, d, _ = call("POST", "/v1/intents/%s/replay" % b, {}, "rx")
        assert_error(self, st, d, 409)
        st, d, _ = call("GET", "/v1/intents/%s/attempts" % b, key="opsadmin")
        self.assertEqual((st, d["intent"]["status"]), (200, "SUBMITTED"))

    def test_key_reads_only_its_roles_data(self):
        iid = send("shop")
        for path in ("/v1/intents/%s", "/v1/intents/%s/events", "/v1/intents/%s/events/stream?wait_seconds=1"):
            st, d, _ = call("GET", path % iid, key="rival")
            assert_error(self, st, d, 404, "not_found")
        st, d, _ = call("POST", "/v1/intents/%s/resolve" % iid, {"status": "CANCELED", "reason": "x"}, "rival")
        assert_error(self, st, d, 404)
        st, d, _ = call("POST", "/v1/intents/%s/complete" % iid, {}, "approvers")
        assert_error(self, st, d, 404)
        # unknown is the same 404
        st, d, _ = call("GET", "/v1/intents/%s" % uuid.uuid4(), key="shop")
        assert_error(self, st, d, 404, "not_found")
        # the receiver sees it; the inbox of another team is not readable
        st, d, _ = call("GET", "/v1/intents/" + iid, key="rx")
        self.assertEqual(st, 200)
        st, d, _ = call("GET", "/v1/inbox?owner=" + APPROVERS, key="cfo")
        assert_error(self, st, d, 403)
        st, d, _ = call("GET", "/v1/ops/queues", key="shop")
        self.assertEqual(st, 200)
        self.assertNotIn(APPROVERS, [q["agent"] for q in d["queues"] if q.get("ready")])

    def test_bad_input_never_5xx(self):
        iid = send()
        bodies = ["", "{", "[]", "null", "1", '"x"', '{"intent_type": 1}', '{"payload": []}',
                  '{"intent_type":"intent.a.v1","to_agent":"agent://acme/prod/nope","payload":{}}',
                  '{"intent_type":"intent.a.v1","to_agent":"not an address","payload":{}}',
                  '{"intent_type":"BAD","to_agent":"%s","payload":{}}' % ORDERS,
                  '{"intent_type":"intent.a.v1","to_agent":"%s","payload":{},"correlation_id":"zz"}' % ORDERS,
                  '{"intent_type":"intent.a.v1","to_agent":"%s","payload":{},"deadline_at":"yesterday"}' % ORDERS,
                  '{"intent_type":"intent.a.v1","to_agent":"%s","payload":{"big":"%s"}}' % (ORDERS, "x" * 140000),
                  '{"intent_type":"intent.a.v1","to_agent":"%s","payload":{},"max_delivery_attempts":99999999999}' % ORDERS,
                  "\xff\xfe", '{"a":"\\u0000"}']
        paths = [("POST", "/v1/intents"), ("POST", "/v1/intents/%s/resolve" % iid),
                 ("POST", "/v1/intents/%s/complete" % iid), ("POST", "/v1/intents/%s/fail" % iid),
                 ("POST", "/v1/intents/%s/extend" % iid), ("POST", "/v1/agents/%s/claim" % ORDERS),
                 ("POST", "/v1/inbox/%s/reply" % uuid.uuid4()), ("POST", "/v1/approvals/%s/decision" % iid)]
        seen = set()
        for m, p in paths:
            for b in bodies:
                st, d, _ = call(m, p, key="rx" if "claim" in p or "intents/" in p else "shop", raw=b.encode("utf-8", "surrogateescape") if isinstance(b, str) else b)
                self.assertLess(st, 500, (m, p, b[:80], d))
                self.assertIn("error", d if isinstance(d, dict) else {"error": 1}) if st >= 400 else None
                seen.add(st)
        gets = ["/v1/intents/not-a-uuid", "/v1/intents/%s/events?since=abc" % iid,
                "/v1/intents/%s/events?since=-1" % iid, "/v1/intents/%s/events?since=99999999999999999999" % iid,
                "/v1/intents/%s/events/stream?wait_seconds=0" % iid, "/v1/intents/%s/events/stream?wait_seconds=61" % iid,
                "/v1/intents/%s/events/stream?wait_seconds=x" % iid, "/v1/agents/agent://acme/prod/nope/intents/stream",
                "/v1/agents/garbage/intents/stream", "/v1/agents/%s/intents/stream?since=abc" % ORDERS,
                "/v1/inbox?status=weird", "/v1/inbox?limit=-5", "/v1/inbox?limit=abc", "/v1/inbox/changes?cursor=zz",
                "/v1/inbox/changes?max_count=0", "/v1/inbox/not-a-uuid", "/v1/inbox/%s" % uuid.uuid4(),
                "/v1/nothing", "/v1/intents/%s/nothing" % iid, "/../../etc/passwd", "/%2e%2e/etc/passwd",
                "/v1/inbox?owner=agent://x"]
        for p in gets:
            st, d, _ = call("GET", p, key="rx")
            self.assertLess(st, 500, (p, d))
            self.assertGreaterEqual(st, 400, (p, d))
        st, d, _ = call("DELETE", "/v1/intents/" + iid, key="rx")
        assert_error(self, st, d, 405)
        st, d, _ = call("POST", "/v1/intents", raw=b"{" * 2000000, key="shop")
        assert_error(self, st, d, 413)
        st, d, _ = call("POST", "/v1/intents", {"intent_type": "intent.a.v1", "to_agent": ORDERS,
                                                "payload": {"big": "x" * 140000}}, "shop")
        assert_error(self, st, d, 413, "payload_too_large")
        st, d, _ = call("POST", "/v1/intents", {"intent_type": "intent.a.v1", "to_agent": "agent://acme/prod/nope",
                                                "payload": {}}, "shop")
        assert_error(self, st, d, 404)
        st, d, _ = call("POST", "/v1/intents", {"intent_type": "BAD", "to_agent": ORDERS, "payload": {}}, "shop")
        assert_error(self, st, d, 400, "invalid_request")
        self.assertEqual(d["error"]["sqlstate"], "22023")


class T04Streams(unittest.TestCase):
    def test_kill_9_loses_no_event(self):
        """A gateway killed without warning: its clients resume on another gateway with
        Last-Event-ID and get every event; its listener and watch rows are cleaned up."""
        g = Gateway(name="gateway-killed").start()
        ids = [send() for _ in range(5)]
        streams = [SSE(g, "/v1/intents/%s/events/stream?wait_seconds=60" % i, "shop") for i in ids]
        seen = {i: [int(e["id"]) for e in s.events(timeout=3, count=2)] for i, s in zip(ids, streams)}
        g.proc.kill()
        g.proc.wait()
        g.log.close()
        psql("SELECT axme.resolve(i, 'CANCELED') FROM unnest('{%s}'::uuid[]) i" % ",".join(ids))
        for i, s in zip(ids, streams):
            s.events(timeout=2)
            self.assertTrue(s.closed)
            s.close()
            s2 = SSE(GW, "/v1/intents/%s/events/stream" % i, "shop", last_event_id=str(seen[i][-1]))
            seen[i] += [int(e["id"]) for e in s2.events(timeout=5, until=lambda e: e.get("event") == "intent.canceled")
                        if e.get("id")]
            s2.close()
            self.assertEqual(seen[i], [1, 2, 3], i)
        # the next heartbeat of a live gateway (every 30 s) drops the dead one's rows; do it now
        out = psql("SELECT axme._gateway_listen('test');"
                   "SELECT count(*) FROM axme.gateway_watches w WHERE w.listener_pid NOT IN "
                   "(SELECT pid FROM pg_stat_activity);"
                   "SELECT axme._gateway_unlisten();")
        self.assertEqual(out.split(), ["0"])

    def test_stream_and_resume(self):
        iid = send()
        s = SSE(GW, "/v1/intents/%s/events/stream?wait_seconds=30" % iid, "shop")
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
        self.assertEqual(s.headers.get("x-accel-buffering"), "no")
        evs = s.events(timeout=3, count=2)
        self.assertEqual([(e["id"], e["event"]) for e in evs], [("1", "intent.created"), ("2", "intent.submitted")])
        # a commit wakes it: latency from the commit to the event
        t0 = time.time()
        call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 1000}, "rx")
        evs = s.events(timeout=5, until=lambda e: e.get("event") == "intent.delivered")
        self.assertEqual(evs[-1]["event"], "intent.delivered")
        FIGURES["sse_wakeup_ms_one"] = round((time.time() - t0) * 1000, 1)
        s.close()
        # resume after seq 3 with Last-Event-ID: only what came after
        st, d, _ = call("POST", "/v1/intents/%s/progress" % iid, {"details": {"p": 1}, "attempt": 1}, "rx")
        self.assertEqual(st, 200, d)
        s = SSE(GW, "/v1/intents/%s/events/stream?since=1" % iid, "shop", last_event_id="3")
        evs = s.events(timeout=3, count=1)
        self.assertEqual([e["id"] for e in evs], ["4"])
        self.assertEqual(evs[0]["event"], "intent.in_progress")
        psql("SELECT axme.complete('%s', '{}', 1)" % iid)
        evs = s.events(timeout=5)
        self.assertEqual([e["event"] for e in evs], ["intent.completed"])
        self.assertTrue(s.closed)           # a terminal event ends the stream
        s.close()

    def test_wait_seconds_timeout_and_keepalive(self):
        iid = send()
        s = SSE(GW, "/v1/intents/%s/events/stream?since=2&wait_seconds=3" % iid, "shop")
        t0 = time.time()
        evs = s.events(timeout=10)
        self.assertEqual([e["event"] for e in evs], ["stream.timeout"])
        self.assertGreaterEqual(time.time() - t0, 2.5)
        self.assertTrue(s.closed)
        s.close()

    def test_agent_stream(self):
        s = SSE(GW, "/v1/agents/%s/intents/stream" % ORDERS, "rx")
        self.assertEqual(s.status, 200)
        s.events(timeout=0.5)
        iid = send(payload={"agent": "stream"})
        evs = s.events(timeout=5, until=lambda e: isinstance(e.get("data"), dict) and e["data"].get("intent_id") == iid)
        self.assertEqual(evs[-1]["data"]["intent_id"], iid)
        self.assertEqual(evs[-1]["data"]["payload"], {"agent": "stream"})
        cursor = evs[-1]["id"]
        self.assertRegex(cursor, "^[0-9]+$")
        # a terminal intent is left out; then resume re-sends (at least) what came after the cursor
        s.close()
        iid2 = send(payload={"after": 1})
        s = SSE(GW, "/v1/agents/%s/intents/stream" % ORDERS, "rx", last_event_id=cursor)
        evs = s.events(timeout=3, until=lambda e: isinstance(e.get("data"), dict) and e["data"].get("intent_id") == iid2)
        self.assertIn(iid2, [e["data"]["intent_id"] for e in evs if isinstance(e.get("data"), dict)])
        s.close()
        st, d, _ = call("GET", "/v1/agents/%s/intents/stream" % ORDERS, key="shop")
        assert_error(self, st, d, 403)
        st, d, _ = call("GET", "/v1/agents/agent://acme/prod/unknown/intents/stream", key="rx")
        assert_error(self, st, d, 404)

    def test_only_watched_changes_notify(self):
        """While a gateway listens, only intents (agents, inboxes) that a stream watches NOTIFY."""
        import psycopg2
        import select as sel
        conn = psycopg2.connect("")
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("LISTEN axme_changes")

        def notes(wait):
            end = time.time() + wait
            got = []
            while time.time() < end:
                if sel.select([conn], [], [], max(0, end - time.time())) != ([], [], []):
                    conn.poll()
                    got += [n.payload for n in conn.notifies]
                    conn.notifies.clear()
            return got

        iid = send(to="agent://acme/prod/shop")      # an agent no stream watches
        self.assertEqual([n for n in notes(0.5) if iid in n], [])
        s = SSE(GW, "/v1/intents/%s/events/stream?wait_seconds=30" % iid, "shop")
        s.events(timeout=2, count=2)
        self.assertEqual(psql("SELECT count(*) FROM axme.gateway_watches WHERE kind = 'i' AND id = '%s'" % iid), "1")
        psql("SELECT axme.resolve('%s', 'CANCELED')" % iid)
        self.assertIn("i %s" % iid, " ".join(notes(1.0)))
        evs = s.events(timeout=3, until=lambda e: e.get("event") == "intent.canceled")
        self.assertEqual(evs[-1]["event"], "intent.canceled")
        s.close()
        # the watch goes once the stream is gone (noticed at the next keep-alive)
        for _ in range(100):
            if psql("SELECT count(*) FROM axme.gateway_watches WHERE id = '%s'" % iid) == "0":
                break
            time.sleep(0.1)
        self.assertEqual(psql("SELECT count(*) FROM axme.gateway_watches WHERE id = '%s'" % iid), "0")
        conn.close()

    def test_restart_loses_no_event(self):
        """Streams open, SIGTERM (final event), events while it is down, a new gateway, resume."""
        global GW
        ids = [send() for _ in range(20)]
        call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 1000}, "rx")
        streams = [SSE(GW, "/v1/intents/%s/events/stream?wait_seconds=60" % i, "shop") for i in ids]
        seen = {i: [] for i in ids}
        for i, s in zip(ids, streams):
            seen[i] += [int(e["id"]) for e in s.events(timeout=3, count=3)]
        self.assertEqual({tuple(v) for v in seen.values()}, {(1, 2, 3)})
        psql("SELECT axme.ack(i, 1) FROM unnest('{%s}'::uuid[]) i" % ",".join(ids))
        rc = GW.stop()
        self.assertEqual(rc, 0)
        for i, s in zip(ids, streams):
            evs = s.events(timeout=5)
            self.assertEqual(evs[-1]["event"], "stream.closed", evs)
            seen[i] += [int(e["id"]) for e in evs if e.get("id")]
            s.close()
        psql("SELECT axme.progress(i, '{\"while_down\": 1}', 1) FROM unnest('{%s}'::uuid[]) i" % ",".join(ids))
        GW = Gateway(name="gateway-restarted").start()
        psql("SELECT axme.complete(i, '{}', 1) FROM unnest('{%s}'::uuid[]) i" % ",".join(ids))
        for i in ids:
            s = SSE(GW, "/v1/intents/%s/events/stream?wait_seconds=10" % i, "shop", last_event_id=str(seen[i][-1]))
            seen[i] += [int(e["id"]) for e in s.events(timeout=5, until=lambda e: e.get("event") == "intent.completed")
                        if e.get("id")]
            s.close()
        n_events = int(psql("SELECT max(seq) FROM axme.events WHERE intent_id = '%s'" % ids[0]))
        self.assertEqual(n_events, 6)
        for i in ids:
            self.assertEqual(seen[i], list(range(1, n_events + 1)), i)

    def test_1000_streams(self):
        """1,000 concurrent SSE clients on one gateway; memory measured; one commit wakes them all."""
        n = int(os.environ.get("AXME_GATEWAY_STREAMS", "1000"))
        iid = send()
        rss0 = GW.rss_kib()

        async def client(path, ready, results, go):
            r, w = await asyncio.open_connection("127.0.0.1", GW.port)
            w.write(("GET %s HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n\r\n" % (path, KEYS["shop"])).encode())
            await w.drain()
            buf = b""
            while b"id: 2\n" not in buf:
                buf += await r.read(4096)
            ready.append(1)
            await go.wait()
            while b"intent.delivered" not in buf:
                chunk = await r.read(4096)
                if not chunk:
                    break
                buf += chunk
            results.append(time.time())
            w.close()

        async def main():
            ready, results = [], []
            go = asyncio.Event()
            tasks = [asyncio.create_task(client("/v1/intents/%s/events/stream?wait_seconds=60" % iid, ready, results, go))
                     for _ in range(n)]
            t_open = time.time()
            while len(ready) < n:
                await asyncio.sleep(0.05)
                if time.time() - t_open > 60:
                    break
            FIGURES["streams_open_s"] = round(time.time() - t_open, 2)
            await asyncio.sleep(0.5)
            st, d, _ = request(GW, "GET", "/health")
            FIGURES["streams_open"] = d["streams"]
            FIGURES["rss_kib_before"] = rss0
            FIGURES["rss_kib_with_streams"] = GW.rss_kib()
            go.set()
            t0 = time.time()
            call("POST", "/v1/agents/%s/claim" % ORDERS, {"max_count": 1000}, "rx")
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return t0, results, len(ready)

        t0, results, nready = asyncio.run(main())
        self.assertEqual(nready, n)
        self.assertEqual(len(results), n)
        lat = sorted((r - t0) * 1000 for r in results)
        FIGURES["streams"] = n
        FIGURES["wake_all_ms_p50"] = round(lat[len(lat) // 2], 1)
        FIGURES["wake_all_ms_max"] = round(lat[-1], 1)
        per_stream = (FIGURES["rss_kib_with_streams"] - rss0) / n
        FIGURES["rss_kib_per_stream"] = round(per_stream, 1)
        print("\n%d streams: RSS %d -> %d KiB (%.1f KiB per stream); all woken by one commit in p50 %.0f ms, max %.0f ms"
              % (n, rss0, FIGURES["rss_kib_with_streams"], per_stream, FIGURES["wake_all_ms_p50"], FIGURES["wake_all_ms_max"]))
        self.assertGreaterEqual(FIGURES["streams_open"], n * 0.99)
        self.assertLess(per_stream, 64)        # bounded: well under a thread stack per stream
        # closed clients are noticed at the next keep-alive (2 s here)
        for _ in range(100):
            st, d, _ = call("GET", "/health")
            if d["streams"] < 10:
                break
            time.sleep(0.1)
        self.assertLess(d["streams"], 10)


class T05Inbox(unittest.TestCase):
    def task(self, title="Approve order", task_type="approval", extra=None):
        doc = {"intent_type": "intent.order.approve.v1", "to_agent": APPROVERS, "payload": {"order": title},
               "human_task": {"task_type": task_type, "title": title}}
        doc.update(extra or {})
        st, d, _ = call("POST", "/v1/intents", doc, "shop")
        self.assertEqual(st, 200, d)
        return d["intent_id"]

    def thread_of(self, iid, key="approvers", owner=None):
        st, d, _ = call("GET", "/v1/inbox" + ("?owner=" + owner if owner else ""), key=key)
        self.assertEqual(st, 200, d)
        th = [t for t in d["threads"] if t["intent_id"] == iid]
        return th[0] if th else None

    def test_inbox_flow(self):
        s = SSE(GW, "/v1/inbox/stream", "approvers")
        self.assertEqual(s.status, 200)
        s.events(timeout=1)
        iid = self.task("Order 42")
        evs = s.events(timeout=5, until=lambda e: e.get("event") == "inbox.changed" and e["data"].get("intent_id") == iid)
        self.assertEqual(evs[-1]["data"]["intent_id"], iid)
        s.close()
        th = self.thread_of(iid)
        self.assertEqual((th["status"], th["task_type"], th["title"], th["owner_agent"]), ("pending", "approval", "Order 42", APPROVERS))
        tid = th["thread_id"]
        st, d, _ = call("GET", "/v1/inbox/" + tid, key="approvers")
        self.assertEqual((st, d["thread"]["intent"]["payload"]), (200, {"order": "Order 42"}))
        st, d, _ = call("POST", "/v1/inbox/%s/reply" % tid, {"message": "looking", "actor": "Ann"}, "approvers")
        self.assertEqual(st, 200)
        st, d, _ = call("GET", "/v1/inbox/changes?cursor=", key="approvers")
        self.assertEqual(st, 200)
        self.assertIn(tid, [c["thread"]["thread_id"] for c in d["changes"]])
        self.assertIn("next_cursor", d)
        # the cfo cannot act on it yet; after a delegation it is the cfo's
        st, d, _ = call("POST", "/v1/inbox/%s/approve" % tid, {}, "cfo")
        assert_error(self, st, d, 404)
        st, d, _ = call("POST", "/v1/inbox/%s/delegate" % tid, {"delegate_to": CFO, "note": "above my limit"}, "approvers")
        self.assertEqual(st, 200)
        self.assertIsNotNone(self.thread_of(iid, "cfo"))
        st, d, _ = call("POST", "/v1/inbox/%s/approve" % tid, {"comment": "ok"}, "cfo")
        self.assertEqual((st, d.get("outcome")), (200, "approved"), d)
        st, d, _ = call("GET", "/v1/intents/" + iid, key="shop")
        self.assertEqual((d["intent"]["status"], d["intent"]["result"]["outcome"], d["intent"]["result"]["actor"]),
                         ("COMPLETED", "approved", "cfo"))
        st, d, _ = call("POST", "/v1/inbox/%s/reject" % tid, {}, "cfo")
        assert_error(self, st, d, 409)

    def test_reject_decision_and_approvals(self):
        iid = self.task("Reject me")
        tid = self.thread_of(iid)["thread_id"]
        st, d, _ = call("POST", "/v1/inbox/%s/reject" % tid, {"comment": "no"}, "approvers")
        self.assertEqual((st, d["outcome"]), (200, "rejected"))
        st, d, _ = call("GET", "/v1/intents/" + iid, key="shop")
        self.assertEqual(d["intent"]["status"], "CANCELED")
        # the outcome form: review with changes_requested
        iid = self.task("Review", "review")
        tid = self.thread_of(iid)["thread_id"]
        st, d, _ = call("POST", "/v1/inbox/%s/decision" % tid, {"outcome": "nope"}, "approvers")
        assert_error(self, st, d, 400)
        st, d, _ = call("POST", "/v1/inbox/%s/decision" % tid, {"outcome": "changes_requested", "comment": "fix"}, "approvers")
        self.assertEqual((st, d["outcome"]), (200, "changes_requested"))
        # POST /v1/approvals/{intent_id}/decision
        iid = self.task("Via approvals")
        st, d, _ = call("POST", "/v1/approvals/%s/decision" % iid, {"decision": "maybe"}, "approvers")
        assert_error(self, st, d, 400)
        st, d, _ = call("POST", "/v1/approvals/%s/decision" % iid, {"decision": "approve", "comment": "fine"}, "approvers")
        self.assertEqual((st, d["outcome"]), (200, "approved"))
        st, d, _ = call("POST", "/v1/approvals/%s/decision" % iid, {"decision": "reject"}, "approvers")
        assert_error(self, st, d, 409)
        st, d, _ = call("POST", "/v1/approvals/%s/decision" % uuid.uuid4(), {"decision": "reject"}, "approvers")
        assert_error(self, st, d, 404)

    def test_ops(self):
        for p, k in (("/v1/ops/queues", "queues"), ("/v1/ops/dead_letters", "dead_letters"), ("/v1/ops/endpoints", "endpoints")):
            st, d, _ = call("GET", p, key="opsadmin")
            self.assertEqual(st, 200, d)
            self.assertIsInstance(d[k], list)
        st, d, _ = call("GET", "/v1/ops/queues", key="opsadmin")
        self.assertIn(ORDERS, [q["agent"] for q in d["queues"]])
        st, d, _ = call("GET", "/v1/ops/endpoints", key="shop")
        self.assertLess(st, 500)

    def test_static_files(self):
        st, d, r = call("GET", "/")
        self.assertEqual(st, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/html"))
        self.assertIn("frame-ancestors", r.getheader("Content-Security-Policy"))
        st, d, r = call("GET", "/nope.html")
        self.assertEqual(st, 404)


class Result(unittest.TextTestResult):
    pass


if __name__ == "__main__":
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout)
    prog = unittest.main(exit=False, testRunner=runner)
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    print("%d passed, %d failed" % (r.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
