"""The receivers of examples/receivers/, each run against the real cluster (called by run.py).

Every receiver gets the two-transaction case: two intents sent in one transaction, then three in
another, with gaps of 0 ms to 300 ms between the commits; every intent must be completed by the
receiver within one second of its commit. Stream receivers also get it with the second commit
made while the receiver is inside its first complete() (held there by an advisory lock that a
test-only trigger on axme.events takes): its wake-up then arrives with a query's answer, and a
loop that select()s before looking at the notifications it already has sleeps through it.
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import psycopg2

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DIR = os.path.join(ROOT, "examples", "receivers")
GAPS = (0, 0.005, 0.05, 0.3)
WITHIN = 1.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fresh_db(name):
    c = psycopg2.connect("dbname=postgres")
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    c.close()
    conn = psycopg2.connect(f"dbname={name}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION axme")
    return conn


def drop_db(name):
    c = psycopg2.connect("dbname=postgres")
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    c.close()


class Proc:
    """A receiver process; its output lines are collected with their arrival times."""

    def __init__(self, argv, env):
        self.lines = []
        self.p = subprocess.Popen(argv, cwd=DIR, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for ln in self.p.stdout:
            self.lines.append((time.time(), ln.rstrip("\n")))

    def wait_line(self, word, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            if any(word in ln for _, ln in self.lines):
                return True
            if self.p.poll() is not None:
                time.sleep(0.1)
                return any(word in ln for _, ln in self.lines)
            time.sleep(0.02)
        return False

    def stop(self):
        self.p.kill()
        self.p.wait()
        self.t.join(2)

    def tail(self):
        return " | ".join(ln for _, ln in self.lines[-8:])


def send_round(conn, agent, n, extra=None):
    """Send n intents in one transaction; returns (ids, commit time)."""
    ids = []
    conn.autocommit = False
    with conn.cursor() as cur:
        for i in range(n):
            doc = {"intent_type": "intent.docs.test.v1", "to_agent": agent, "payload": {"i": i}}
            doc.update(extra or {})
            cur.execute("SELECT axme.send_intent(%s)", (json.dumps(doc),))
            ids.append(cur.fetchone()[0])
    conn.commit()
    t = time.time()
    conn.autocommit = True
    return ids, t


def two_transactions(conn, agent, check):
    """The 2-then-3 case at every gap; check(conn, ids, deadline) -> problem text or None."""
    problems = []
    for gap in GAPS:
        ids1, t1 = send_round(conn, agent, 2)
        if gap:
            time.sleep(gap)
        ids2, t2 = send_round(conn, agent, 3)
        for ids, t in ((ids1, t1), (ids2, t2)):
            p = check(conn, ids, t + WITHIN)
            if p:
                problems.append(f"gap {gap * 1000:g} ms: {p}")
        time.sleep(0.2)
    return problems


HOLD_KEY = 4242


def install_hold(conn):
    """A test-only trigger: every intent.completed event waits for advisory lock HOLD_KEY."""
    with conn.cursor() as cur:
        cur.execute("""
            CREATE FUNCTION public.docs_hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.event_type = 'intent.completed' THEN
                    PERFORM pg_advisory_xact_lock_shared(%s);
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER docs_hold BEFORE INSERT ON axme.events
                FOR EACH ROW EXECUTE FUNCTION public.docs_hold();""" % HOLD_KEY)


def held_round(conn, agent, check):
    """2 intents; once the receiver waits inside its first complete(), 3 more; then let it go."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (HOLD_KEY,))
        ids1, _ = send_round(conn, agent, 2)
        end = time.time() + 5
        waiting = False
        while time.time() < end and not waiting:
            cur.execute("SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                        " AND NOT granted", (HOLD_KEY,))
            waiting = cur.fetchone()[0]
            time.sleep(0.005)
        ids2, t2 = send_round(conn, agent, 3)
        time.sleep(0.1)          # the wake-up has reached the receiver, which is still held
        cur.execute("SELECT pg_advisory_unlock(%s)", (HOLD_KEY,))
        t = time.time()
    if not waiting:
        return "the receiver never reached complete()"
    return check(conn, ids1, t + WITHIN) or check(conn, ids2, t + WITHIN)


def completed_by(label):
    def check(conn, ids, deadline):
        with conn.cursor() as cur:
            for i in ids:
                left = max(0.0, deadline - time.time())
                cur.execute("SELECT axme.wait_for(%s, make_interval(secs => %s))", (i, left))
                doc = cur.fetchone()[0]
                if doc is None:
                    cur.execute("SELECT axme.get_intent(%s)->>'status'", (i,))
                    return f"{i} not completed within {WITHIN:g} s (status {cur.fetchone()[0]})"
                if doc["status"] != "COMPLETED" or (doc["result"] or {}).get("receiver") != label:
                    return f"{i}: {doc['status']} {doc['result']}"
        return None
    return check


def node(script):
    return ["node", script]


def python(script):
    return ["/usr/bin/python3", "-u", script]


def queue_receiver(report, mode, lang):
    name = f"docs_recv_{mode}_{lang}"
    script = f"{mode}_receiver." + ("py" if lang == "python" else "js")
    test = f"examples/receivers/{script}: 2 then 3 intents, each completed within {WITHIN:g} s"
    conn = fresh_db(name)
    agent = f"agent://docs/test/{mode}-{lang}"
    with conn.cursor() as cur:
        cur.execute("SELECT axme.register_agent(%s, %s)", (agent, mode))
    proc = Proc((python if lang == "python" else node)(script),
                {"PGDATABASE": name, "AXME_AGENT": agent, "AXME_POLL_INTERVAL": "0.2"})
    try:
        if not proc.wait_line("listening" if mode == "stream" else "polling"):
            report(False, test, "did not start: " + proc.tail())
            return
        check = completed_by(f"{'python' if lang == 'python' else 'node'}-{mode}")
        problems = two_transactions(conn, agent, check)
        if mode == "stream":
            install_hold(conn)
            p = held_round(conn, agent, check)
            if p:
                problems.append("second commit during complete(): " + p)
        report(not problems, test, "; ".join(problems) + " | " + proc.tail())
    finally:
        proc.stop()
        conn.close()
        drop_db(name)


def sign(secret, msg_id, ts, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def post(port, headers, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/axme", data=body, method="POST",
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def webhook_receiver(report, lang):
    name = f"docs_recv_http_{lang}"
    script = "webhook_receiver." + ("py" if lang == "python" else "js")
    test = f"examples/receivers/{script}: signed deliveries, 2 then 3 intents within {WITHIN:g} s; forgeries refused"
    conn = fresh_db(name)
    agent = f"agent://docs/test/http-{lang}"
    port = free_port()
    with conn.cursor() as cur:
        cur.execute("SELECT axme.register_agent(%s, 'http', %s)", (agent, f"http://127.0.0.1:{port}/hooks/axme"))
        cur.execute("SELECT axme.agent_secret(%s)", (agent,))
        secret = cur.fetchone()[0]
    proc = Proc((python if lang == "python" else node)(script),
                {"PORT": str(port), "AXME_WEBHOOK_SECRET": secret})
    try:
        if not proc.wait_line("listening"):
            report(False, test, "did not start: " + proc.tail())
            return
        label = ("python" if lang == "python" else "node") + "-webhook"
        problems = two_transactions(conn, agent, completed_by(label))
        # forged: a tampered body, an old timestamp; a redelivery gets the same answer
        body = json.dumps({"intent_id": "00000000-0000-0000-0000-000000000001", "intent_type": "intent.docs.test.v1",
                           "payload": {"i": 1}, "attempt": 1}).encode()
        now = str(int(time.time()))
        h = {"webhook-id": "msg_1", "webhook-timestamp": now, "webhook-signature": sign(secret, "msg_1", now, body)}
        s1, a1 = post(port, h, body)
        s2, _ = post(port, h, body.replace(b'"i": 1', b'"i": 2'))
        old = str(int(time.time()) - 600)
        s3, _ = post(port, {**h, "webhook-timestamp": old, "webhook-signature": sign(secret, "msg_1", old, body)}, body)
        s4, a4 = post(port, h, body)
        if (s1, s2, s3, s4) != (200, 401, 401, 200) or a1 != a4:
            problems.append(f"direct posts: valid {s1}, tampered {s2}, old {s3}, redelivery {s4} (same answer: {a1 == a4})")
        report(not problems, test, "; ".join(problems) + " | " + proc.tail())
    finally:
        proc.stop()
        conn.close()
        drop_db(name)


def inbox_watcher(report, lang):
    name = f"docs_recv_inbox_{lang}"
    script = "inbox_watcher." + ("py" if lang == "python" else "js")
    # The feed shows a change once every transaction that was writing when it was made has ended
    # (the worker's included), and the watcher looks again every second: allow one more second.
    within = WITHIN + 1
    test = f"examples/receivers/{script}: 2 then 3 tasks shown within {within:g} s, a decision shown"
    conn = fresh_db(name)
    owner = f"agent://docs/test/inbox-{lang}"
    with conn.cursor() as cur:
        cur.execute("SELECT axme.register_agent(%s, 'inbox')", (owner,))
    proc = Proc((python if lang == "python" else node)(script), {"PGDATABASE": name, "AXME_INBOX": owner})
    task = {"human_task": {"task_type": "approval", "title": "Approve"}}

    def shown(status):
        def check(conn, ids, deadline):
            want = {str(i) for i in ids}
            while time.time() < deadline + 0.05:
                seen = set()
                for _, ln in list(proc.lines):
                    try:
                        t = json.loads(ln)
                    except ValueError:
                        continue
                    if t.get("status") == status:
                        seen.add(t["intent_id"])
                if want <= seen:
                    return None
                time.sleep(0.01)
            return f"not shown as {status} within {within:g} s: {sorted(want - seen)}"
        return check

    try:
        if not proc.wait_line("watching"):
            report(False, test, "did not start: " + proc.tail())
            return
        problems = []
        for gap in GAPS:
            ids1, t1 = send_round(conn, owner, 2, task)
            if gap:
                time.sleep(gap)
            ids2, t2 = send_round(conn, owner, 3, task)
            for ids, t in ((ids1, t1), (ids2, t2)):
                p = shown("pending")(conn, ids, t + within)
                if p:
                    problems.append(f"gap {gap * 1000:g} ms: {p}")
        with conn.cursor() as cur:
            cur.execute("SELECT axme.decide(%s, 'approved', 'ok')", (ids1[0],))
        p = shown("done")(conn, [ids1[0]], time.time() + within)
        if p:
            problems.append(p)
        report(not problems, test, "; ".join(problems) + " | " + proc.tail())
    finally:
        proc.stop()
        conn.close()
        drop_db(name)


def internal_client(report, lang):
    name = f"docs_recv_internal_{lang}"
    script = "internal_client." + ("py" if lang == "python" else "js")
    test = f"examples/receivers/{script}: a handler's result comes back"
    conn = fresh_db(name)
    with conn.cursor() as cur:
        cur.execute("""
            CREATE SCHEMA billing;
            CREATE TABLE billing.invoices (order_id bigint PRIMARY KEY, total numeric NOT NULL);
            CREATE FUNCTION billing.invoice_total(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$
                INSERT INTO billing.invoices
                VALUES ((intent->'payload'->>'order_id')::bigint,
                        (intent->'payload'->>'qty')::numeric * (intent->'payload'->>'price')::numeric)
                RETURNING jsonb_build_object('total', total) $$;
            SELECT axme.register_agent('agent://acme/prod/invoicer', 'internal', NULL,
                                       '{"handler": "billing.invoice_total"}');""")
    try:
        r = subprocess.run((python if lang == "python" else node)(script) + ["42", "3", "2.5"], cwd=DIR,
                           env={**os.environ, "PGDATABASE": name}, capture_output=True, text=True, timeout=30)
        ok = False
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
            ok = r.returncode == 0 and out["status"] == "COMPLETED" and float(out["result"]["total"]) == 7.5
        except (ValueError, IndexError, KeyError, TypeError):
            pass
        report(ok, test, f"exit {r.returncode}: {r.stdout.strip()} {r.stderr.strip()}")
    finally:
        conn.close()
        drop_db(name)


def run_all(report, only=None):
    if not os.path.isdir(os.path.join(DIR, "node_modules", "pg")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=DIR,
                           capture_output=True, text=True)
        if r.returncode != 0:
            report(False, "npm ci in examples/receivers", r.stdout + r.stderr)
    cases = []
    for lang in ("python", "node"):
        cases += [(f"stream {lang}", lambda l=lang: queue_receiver(report, "stream", l)),
                  (f"poll {lang}", lambda l=lang: queue_receiver(report, "poll", l)),
                  (f"http {lang}", lambda l=lang: webhook_receiver(report, l)),
                  (f"inbox {lang}", lambda l=lang: inbox_watcher(report, l)),
                  (f"internal {lang}", lambda l=lang: internal_client(report, l))]
    for name, fn in cases:
        if only and only not in name and only not in "receivers":
            continue
        try:
            fn()
        except Exception as e:      # a broken scenario is a failed test, not a crashed suite
            report(False, f"receiver {name}", f"{type(e).__name__}: {e}")
