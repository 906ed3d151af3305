"""Tests of the http delivery mode against a programmable receiver on loopback.

Run through test/http/run.sh.  Prints one line per test and "N passed, M failed".
Timing checks: lower bounds strict, upper bounds generous (shared, noisy machines).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid

import psycopg2

from cluster import Cluster
from receiver import Receiver

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    pass


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    rows = q(conn, sql, args)
    return rows[0][0] if rows else None


def wait_until(fn, timeout, what="condition", step=0.1):
    end = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > end:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(step)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def agent(ctx, name, path, options=None, conn=None):
    addr = "agent://acme/tests/%s" % name
    q(conn or ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
      (addr, ctx.rx.url(path), json.dumps(options or {})))
    return addr


def send(ctx, addr, payload=None, conn=None, **extra):
    doc = {"intent_type": "intent.test.deliver.v1", "to_agent": addr, "payload": payload or {"n": 1}}
    doc.update(extra)
    return q1(conn or ctx.db, "SELECT axme.send_intent(%s)", (json.dumps(doc),))


def status(ctx, iid, conn=None):
    return q1(conn or ctx.db, "SELECT status FROM axme.intents WHERE intent_id = %s", (iid,))


def wait_status(ctx, iid, want, timeout=20, conn=None):
    try:
        wait_until(lambda: status(ctx, iid, conn) in want, timeout, "intent %s to reach %s" % (iid, want))
    except AssertionError as e:
        raise AssertionError("%s; it is %s" % (e, status(ctx, iid, conn)))
    return status(ctx, iid, conn)


def attempts(ctx, iid, conn=None):
    return q(conn or ctx.db, """SELECT attempt, http_status, error_class, error, next_attempt_at,
                                       started_at, response_excerpt
                                FROM axme.delivery_attempts WHERE intent_id = %s ORDER BY attempt""",
             (iid,))


def worker_pids(ctx, dbname="axt"):
    return [r[0] for r in q(ctx.admin, """SELECT pid FROM pg_stat_activity
                                         WHERE backend_type = 'axme delivery worker' AND datname = %s""",
                            (dbname,))]


def node_verify(items):
    p = subprocess.run(["node", os.path.join(HERE, "verify.js")], input=json.dumps(items),
                       capture_output=True, text=True, cwd=HERE)
    return p.returncode, p.stdout.strip() + p.stderr.strip()


# ------------------------------------------------------------------------------------------------

@test
def test_workers_visible(ctx):
    """backend_type starts with axme: one launcher, one worker for the database with axme."""
    wait_until(lambda: q1(ctx.admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'axme launcher'") == 1,
               10, "axme launcher")
    wait_until(lambda: len(worker_pids(ctx)) == 1, 10, "axme delivery worker of axt")
    # the database without the extension has no worker
    check(q1(ctx.admin, """SELECT count(*) FROM pg_stat_activity
                           WHERE backend_type = 'axme delivery worker' AND datname = 'postgres'""") == 0,
          "a worker serves postgres, which has no axme")


@test
def test_signature_headers_and_body(ctx):
    """Headers, body fields, webhook-id = intent_id; signatures verify with npm standardwebhooks."""
    addr = agent(ctx, "sig", "/sig", {"headers": {"x-tenant": "acme"}})
    ids = [send(ctx, addr, {"n": i, "text": "grüße \"quoted\""}) for i in range(3)]
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",))
    reqs = ctx.rx.requests("/sig")
    check(len(reqs) == 3, "expected 3 requests, got %d" % len(reqs))
    secret = q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,))
    check(secret.startswith("whsec_"), "secret %r" % secret)
    items = []
    for r in reqs:
        h = r["headers"]
        body = json.loads(r["body"])
        check(h["webhook-id"] == body["intent_id"], "webhook-id differs from intent_id")
        check(body["intent_id"] in ids, "unknown intent in body")
        check(set(body) == {"intent_id", "intent_type", "from_agent", "to_agent", "correlation_id",
                            "payload", "created_at", "attempt"}, "body keys %s" % sorted(body))
        check(body["attempt"] == 1 and body["to_agent"] == addr, "body %r" % body)
        check(h["content-type"] == "application/json", "content-type %r" % h.get("content-type"))
        check(h["user-agent"].startswith("axme/"), "user-agent %r" % h.get("user-agent"))
        check(h["x-tenant"] == "acme", "custom header missing")
        check(abs(int(h["webhook-timestamp"]) - time.time()) < 60, "timestamp off")
        # our own check: key = base64-decoded secret bytes
        key = base64.b64decode(secret[len("whsec_"):])
        signed = ("%s.%s." % (h["webhook-id"], h["webhook-timestamp"])).encode() + r["body"]
        want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        check(h["webhook-signature"] == want, "signature %r, expected %r" % (h["webhook-signature"], want))
        items.append({"secret": secret, "id": h["webhook-id"], "timestamp": h["webhook-timestamp"],
                      "signature": h["webhook-signature"], "body": r["body"].decode()})
    rc, out = node_verify(items)
    check(rc == 0 and out == "ok 3", "standardwebhooks verify: %s" % out)
    # a tampered body must fail with the reference verifier (the check is not vacuous)
    items[0]["body"] = items[0]["body"].replace("grüße", "grusse")
    rc, out = node_verify(items[:1])
    check(rc != 0, "tampered body verified")


@test
def test_render_request_is_what_is_sent(ctx):
    """render_request shows the request the worker then sends: the same body bytes, the same
    headers (traceparent and tracestate included) but for the time-dependent ones, and a signature
    that the reference verifier accepts; ping_agent posts a test event like any other."""
    addr = agent(ctx, "render", "/render", {"headers": {"x-tenant": "acme"}})
    q(ctx.db, "SELECT axme.pause_agent(%s)", (addr,))
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    iid = send(ctx, addr, {"text": "grüße"}, traceparent=tp, tracestate="rojo=00f067aa0ba902b7")
    r = q1(ctx.db, "SELECT axme.render_request(%s)", (iid,))
    secret = q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,))
    rh = r["headers"]
    check(r["method"] == "POST" and r["url"] == ctx.rx.url("/render") and r["attempt"] == 1, "render %r" % r)
    rc, out = node_verify([{"secret": secret, "id": rh["webhook-id"], "timestamp": rh["webhook-timestamp"],
                            "signature": rh["webhook-signature"], "body": r["body"]}])
    check(rc == 0, "rendered signature does not verify: %s" % out)
    check(secret not in json.dumps(r), "secret in the rendering")
    q(ctx.db, "SELECT axme.resume_agent(%s)", (addr,))
    wait_status(ctx, iid, ("COMPLETED",))
    got = ctx.rx.requests("/render")[0]
    check(got["body"] == r["body"].encode(), "body differs:\n%r\n%r" % (got["body"], r["body"]))
    sent = {k.lower(): v for k, v in got["headers"].items()}
    for k, v in rh.items():
        if k in ("webhook-timestamp", "webhook-signature"):
            continue
        check(sent.get(k.lower()) == v, "header %s: rendered %r, sent %r" % (k, v, sent.get(k.lower())))
    check(sent["traceparent"] == tp and sent["tracestate"] == "rojo=00f067aa0ba902b7", "trace headers %r" % sent)
    # ping_agent: an ordinary intent, signed and posted
    pid = q1(ctx.db, "SELECT axme.ping_agent(%s)", (addr,))
    doc = q1(ctx.db, "SELECT axme.wait_for(%s, '20 seconds')", (pid,))
    check(doc and doc["status"] == "COMPLETED", "ping %r" % (doc,))
    ping = [x for x in ctx.rx.requests("/render") if json.loads(x["body"])["intent_id"] == pid]
    check(len(ping) == 1 and json.loads(ping[0]["body"])["intent_type"] == "axme.ping.v1", "ping request %r" % ping)
    check(q(ctx.db, "SELECT attempt, http_status FROM axme.attempts WHERE intent_id = %s", (pid,)) == [(1, 200)],
          "ping attempt")


@test
def test_traceparent_on_every_attempt(ctx):
    """The sender's traceparent goes out on every attempt of a retried intent; without one, none."""
    addr = agent(ctx, "trace", "/trace", {"retry": {"base_delay_ms": 100}})
    ctx.rx.script("/trace", [{"status": 500}, {"status": 503}], default={"status": 200})
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    iid = send(ctx, addr, traceparent=tp)
    wait_status(ctx, iid, ("COMPLETED",))
    reqs = ctx.rx.requests("/trace")
    check(len(reqs) == 3, "expected 3 attempts, got %d" % len(reqs))
    check(all({k.lower(): v for k, v in x["headers"].items()}.get("traceparent") == tp for x in reqs),
          "traceparent missing on an attempt")
    plain = send(ctx, addr)
    wait_status(ctx, plain, ("COMPLETED",))
    last = ctx.rx.requests("/trace")[-1]
    check("traceparent" not in {k.lower() for k in last["headers"]}, "traceparent without one given")


@test
def test_secret_option_kept_and_used(ctx):
    """A given secret is used, kept when re-registering, hidden from axme.agents."""
    raw = base64.b64encode(bytes(range(32))).decode()
    addr = agent(ctx, "sec", "/sec", {"secret": "whsec_" + raw})
    agent(ctx, "sec", "/sec", {"timeout_ms": 5000})
    check(q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,)) == "whsec_" + raw, "secret not kept")
    check(q1(ctx.db, "SELECT options ? 'secret' FROM axme.agents WHERE address = %s", (addr,)) is False,
          "secret visible in axme.agents.options")
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("COMPLETED",))
    r = ctx.rx.requests("/sec")[-1]
    rc, out = node_verify([{"secret": "whsec_" + raw, "id": r["headers"]["webhook-id"],
                            "timestamp": r["headers"]["webhook-timestamp"],
                            "signature": r["headers"]["webhook-signature"], "body": r["body"].decode()}])
    check(rc == 0, out)


@test
def test_two_secrets_two_signatures(ctx):
    """With two valid secrets (a rotation), each request carries one signature per secret."""
    addr = agent(ctx, "rot", "/rot")
    old = q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,))
    new = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    q(ctx.db, """INSERT INTO axme.agent_secrets (agent_id, secret, created_at)
                 SELECT agent_id, %s, now() + interval '1 second' FROM axme.agents WHERE address = %s""",
      (new, addr))
    check(q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,)) == new, "agent_secret is not the newest")
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("COMPLETED",))
    r = ctx.rx.requests("/rot")[0]
    sigs = r["headers"]["webhook-signature"].split(" ")
    check(len(sigs) == 2, "signatures: %r" % sigs)
    for secret in (old, new):
        rc, out = node_verify([{"secret": secret, "id": r["headers"]["webhook-id"],
                                "timestamp": r["headers"]["webhook-timestamp"],
                                "signature": r["headers"]["webhook-signature"], "body": r["body"].decode()}])
        check(rc == 0, "verification with one of the secrets: %s" % out)


@test
def test_secret_not_readable_by_others(ctx):
    """A role that is not a superuser cannot read secrets (42501)."""
    q(ctx.db, "DROP ROLE IF EXISTS axme_test_app")
    q(ctx.db, "CREATE ROLE axme_test_app")
    q(ctx.db, "GRANT USAGE ON SCHEMA axme TO axme_test_app")
    q(ctx.db, "GRANT SELECT ON axme.agents TO axme_test_app")
    q(ctx.db, "GRANT EXECUTE ON FUNCTION axme.agent_secret(text), axme._agent(text, text), "
              "axme._check_address(text, text), axme._valid_address(text) TO axme_test_app")
    addr = agent(ctx, "hidden", "/hidden")
    try:
        q(ctx.db, "SET ROLE axme_test_app")
        for sql in ("SELECT axme.agent_secret('%s')" % addr, "SELECT * FROM axme.agent_secrets"):
            try:
                q(ctx.db, sql)
                raise AssertionError("%s: a secret was readable" % sql)
            except psycopg2.Error as e:
                check(e.pgcode == "42501", "%s: SQLSTATE %s" % (sql, e.pgcode))
    finally:
        q(ctx.db, "RESET ROLE")
        q(ctx.db, "REVOKE ALL ON SCHEMA axme FROM axme_test_app")
        q(ctx.db, "REVOKE ALL ON axme.agents FROM axme_test_app")
        q(ctx.db, "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM axme_test_app")
        q(ctx.db, "DROP ROLE axme_test_app")


@test
def test_option_errors(ctx):
    """Unknown or bad options are refused with 22023."""
    bad = [{"nope": 1}, {"headers": {"webhook-id": "x"}}, {"headers": {"x-a": "b\r\nc"}},
           {"secret": "whsec_short"}, {"completion": "sometimes"}, {"timeout_ms": 10},
           {"max_in_flight": 0}, {"retry": {"max_attempts": 0}}, {"ca_file": "relative.pem"}]
    for opts in bad:
        try:
            q(ctx.db, "SELECT axme.register_agent('agent://acme/tests/bad', 'http', 'http://127.0.0.1:1/', %s)",
              (json.dumps(opts),))
        except psycopg2.Error as e:
            check(e.pgcode == "22023", "options %s: SQLSTATE %s" % (opts, e.pgcode))
            continue
        raise AssertionError("options %s accepted" % opts)


@test
def test_completion_on_2xx_result(ctx):
    """on_2xx: COMPLETED with the JSON body as result, or null without one."""
    addr = agent(ctx, "c2xx", "/c2xx")
    ctx.rx.script("/c2xx", [{"status": 200, "body": {"ok": True}}, {"status": 204}])
    a = send(ctx, addr)
    wait_status(ctx, a, ("COMPLETED",))
    b = send(ctx, addr)
    wait_status(ctx, b, ("COMPLETED",))
    check(q1(ctx.db, "SELECT result FROM axme.intents WHERE intent_id = %s", (a,)) == {"ok": True},
          "result of a JSON body")
    check(q1(ctx.db, "SELECT result FROM axme.intents WHERE intent_id = %s", (b,)) is None,
          "result without a body")
    # the delivery worker names itself as the actor, not the superuser it connects as
    actors = q(ctx.db, "SELECT event_type, actor FROM axme.events WHERE intent_id = %s AND seq > 2 ORDER BY seq", (a,))
    check(actors == [("intent.delivered", "axme:delivery-worker"), ("intent.completed", "axme:delivery-worker")],
          "worker actors: %r" % (actors,))
    # delivery_attempts by agent address
    check(q(ctx.db, "SELECT intent_id, http_status FROM axme.attempts WHERE agent = %s ORDER BY started_at", (addr,))
          == [(a, 200), (b, 204)], "axme.attempts by agent address")


@test
def test_status_body(ctx):
    """A 2xx with {"status": "FAILED"|"COMPLETED", ...} resolves the intent that way."""
    addr = agent(ctx, "sbody", "/sbody")
    ctx.rx.script("/sbody", [{"status": 200, "body": {"status": "FAILED", "error": {"code": "no_stock"}}},
                             {"status": 200, "body": {"status": "COMPLETED", "result": {"order": 7}}}])
    a = send(ctx, addr)
    check(wait_status(ctx, a, ("FAILED", "COMPLETED")) == "FAILED", "status body FAILED ignored")
    b = send(ctx, addr)
    wait_status(ctx, b, ("COMPLETED",))
    check(q1(ctx.db, "SELECT error FROM axme.intents WHERE intent_id = %s", (a,)) == {"code": "no_stock"}, "error")
    check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (a,)) is None,
          "a business failure is not a dead letter")
    check(q1(ctx.db, "SELECT result FROM axme.intents WHERE intent_id = %s", (b,)) == {"order": 7}, "result")


@test
def test_completion_explicit(ctx):
    """explicit: a 2xx leaves the intent DELIVERED, not sent again, until complete()."""
    addr = agent(ctx, "expl", "/expl", {"completion": "explicit"})
    iid = send(ctx, addr)
    ctx.rx.wait_requests("/expl", 1, 20)
    wait_until(lambda: attempts(ctx, iid), 10, "attempt row")
    check(status(ctx, iid) == "DELIVERED", "status %s" % status(ctx, iid))
    check(q1(ctx.db, "SELECT due_at IS NULL AND lease_until IS NULL FROM axme.intents WHERE intent_id = %s", (iid,)),
          "lease still held after the 2xx")
    q(ctx.db, "SELECT axme.complete(%s, '{\"done\": 1}')", (iid,))
    check(status(ctx, iid) == "COMPLETED", "complete() failed")
    time.sleep(1)
    check(len(ctx.rx.requests("/expl")) == 1, "sent again")


@test
def test_ack_while_request_runs(ctx):
    """A receiver that calls ack() while handling the request: its 2xx still completes the intent."""
    addr = agent(ctx, "ackrun", "/ackrun")
    ctx.rx.script("/ackrun", [{"hang": 1.5, "status": 200, "body": {"ok": 1}}])
    iid = send(ctx, addr)
    ctx.rx.wait_requests("/ackrun", 1, 10)
    q(ctx.db, "SELECT axme.ack(%s)", (iid,))
    check(status(ctx, iid) == "ACKNOWLEDGED", "ack failed")
    wait_status(ctx, iid, ("COMPLETED",))
    check(q1(ctx.db, "SELECT result FROM axme.intents WHERE intent_id = %s", (iid,)) == {"ok": 1}, "result")


@test
def test_cancel_while_request_runs(ctx):
    """The sender cancels while the request is in flight: the attempt is still recorded when it
    ends, but its 2xx no longer moves the intent (CANCELED stays, one intent.canceled event)."""
    addr = agent(ctx, "cancelrun", "/cancelrun")
    ctx.rx.script("/cancelrun", [{"hang": 1.5, "status": 200, "body": {"ok": 1}}])
    iid = send(ctx, addr)
    ctx.rx.wait_requests("/cancelrun", 1, 10)
    q(ctx.db, "SELECT axme.cancel(%s, 'changed my mind')", (iid,))
    check(status(ctx, iid) == "CANCELED", "cancel failed")
    wait_until(lambda: attempts(ctx, iid), 15, "the attempt row")
    check([r[:3] for r in attempts(ctx, iid)] == [(1, 200, None)], "attempt recorded: %r" % (attempts(ctx, iid),))
    check(status(ctx, iid) == "CANCELED", "still CANCELED")
    check(q1(ctx.db, "SELECT result FROM axme.intents WHERE intent_id = %s", (iid,)) == {"reason": "changed my mind"},
          "result is the reason, not the response")
    ev = [r[0] for r in q(ctx.db, "SELECT event_type FROM axme.events WHERE intent_id = %s ORDER BY seq", (iid,))]
    check(ev == ["intent.created", "intent.submitted", "intent.delivered", "intent.canceled"], "events %r" % ev)
    time.sleep(0.5)
    check(len(ctx.rx.requests("/cancelrun")) == 1, "not sent again")


@test
def test_retry_spacing_attempt_rows_stable_id(ctx):
    """5xx and a dropped connection are retried with backoff; one attempt row each; same webhook-id."""
    addr = agent(ctx, "retry", "/retry", {"retry": {"base_delay_ms": 1000, "max_delay_ms": 60000}})
    # by attempt number: curl itself re-sends a request once when a kept-alive connection turns
    # out closed, so a dropped connection may be seen twice within one attempt
    ctx.rx.script_by_attempt("/retry", {1: {"status": 500, "body": "boom"}, 2: {"drop": True}})
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("COMPLETED",), timeout=30)
    reqs = ctx.rx.requests("/retry")
    check(len({r["headers"]["webhook-id"] for r in reqs}) == 1, "webhook-id changed between attempts")
    first = {}
    for r in reqs:
        first.setdefault(json.loads(r["body"])["attempt"], r["t"])
    check(sorted(first) == [1, 2, 3], "attempt numbers in bodies: %s" % sorted(first))
    # backoff: after failure n the delay is in [base*2^(n-1)/2, base*2^(n-1)]
    gap1 = first[2] - first[1]
    gap2 = first[3] - first[2]
    check(gap1 >= 0.45, "first retry after %.3f s, expected >= 0.5 s" % gap1)
    check(gap2 >= 0.95, "second retry after %.3f s, expected >= 1 s" % gap2)
    check(gap1 < 15 and gap2 < 15, "retries far too late: %.1f %.1f" % (gap1, gap2))
    rows = attempts(ctx, iid)
    check([r[0] for r in rows] == [1, 2, 3], "attempt rows %s" % [r[0] for r in rows])
    check(rows[0][1] == 500 and rows[0][2] == "http" and rows[0][6] == "boom", "row 1 %s" % (rows[0],))
    check(rows[1][1] is None and rows[1][2] == "network", "row 2 %s" % (rows[1],))
    check(rows[2][1] == 200 and rows[2][2] is None and rows[2][4] is None, "row 3 %s" % (rows[2],))
    check(rows[0][4] is not None and rows[1][4] is not None, "next_attempt_at missing on failures")
    ev = [r[0] for r in q(ctx.db, "SELECT event_type FROM axme.intent_events(%s)", (iid,))]
    check(ev.count("intent.delivery_failed") == 2 and ev[-1] == "intent.completed", "events %s" % ev)


@test
def test_ordering_key_under_retries(ctx):
    """Per-key ordering on http: every intent fails twice (500) before a 200; the requests of one
    key still arrive in send order, each intent's attempts before the next intent's first, while
    another key and unkeyed intents go on in parallel."""
    addr = agent(ctx, "ordered", "/ordered", {"retry": {"base_delay_ms": 200, "max_delay_ms": 1000},
                                             "max_in_flight": 8})
    ctx.rx.script_by_attempt("/ordered", {1: {"status": 500, "body": "boom"}, 2: {"status": 500, "body": "boom"}})
    ids = []
    for n in range(1, 5):
        ids.append(send(ctx, addr, {"n": n, "k": "a"}, ordering_key="a"))
        ids.append(send(ctx, addr, {"n": n, "k": "b"}, ordering_key="b"))
    ids.append(send(ctx, addr, {"n": 0, "k": None}))
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=90)
    reqs = ctx.rx.requests("/ordered")
    for key in ("a", "b"):
        mine = sorted((r for r in reqs if json.loads(r["body"])["payload"]["k"] == key), key=lambda r: r["t"])
        seq = [(json.loads(r["body"])["payload"]["n"], json.loads(r["body"])["attempt"]) for r in mine]
        want = [(n, a) for n in range(1, 5) for a in (1, 2, 3)]
        check(seq == want, "key %s arrived as %s" % (key, seq))
        for prev, nxt in zip(mine, mine[1:]):
            check(nxt["t"] >= prev["t"], "key %s: requests out of order" % key)
    rows = q(ctx.db, """SELECT count(*) FROM axme.delivery_attempts d JOIN axme.intents i USING (intent_id)
                        WHERE i.to_agent = %s""", (addr,))
    check(rows[0][0] == 27, "attempt rows %s, expected 27" % rows[0][0])


@test
def test_dead_letter_and_replay(ctx):
    """Spent budget: FAILED, dead-lettered (exhausted), listed with the last error; replay works."""
    addr = agent(ctx, "dl", "/dl", {"retry": {"max_attempts": 2, "base_delay_ms": 200}})
    ctx.rx.script("/dl", [{"status": 502}, {"status": 503}, {"status": 200}])
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("FAILED",), timeout=20)
    row = q(ctx.db, "SELECT reason, last_error FROM axme.dead_letters WHERE intent_id = %s", (iid,))
    check(row and row[0][0] == "exhausted", "dead letter row %s" % row)
    check(row[0][1]["http_status"] == 503, "last error %s" % row[0][1])
    check(len(attempts(ctx, iid)) == 2, "attempt rows")
    q(ctx.db, "SELECT axme.replay(%s)", (iid,))
    wait_status(ctx, iid, ("COMPLETED",))
    ev = [r[0] for r in q(ctx.db, "SELECT event_type FROM axme.intent_events(%s)", (iid,))]
    check("intent.dead_lettered" in ev and "intent.replayed" in ev, "events %s" % ev)
    check(len(ctx.rx.requests("/dl")) == 3, "requests")


@test
def test_replay_dead_letters(ctx):
    """replay_dead_letters re-drives many and returns how many."""
    addr = agent(ctx, "dlmany", "/dlmany", {"retry": {"max_attempts": 1}})
    ctx.rx.script("/dlmany", [{"status": 500}] * 3)
    ids = [send(ctx, addr) for _ in range(3)]
    for iid in ids:
        wait_status(ctx, iid, ("FAILED",))
    n = q1(ctx.db, "SELECT axme.replay_dead_letters(%s)", (addr,))
    check(n == 3, "replayed %s" % n)
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",))
    check(q1(ctx.db, "SELECT axme.replay_dead_letters(%s, now())", (addr,)) == 0, "nothing left")


@test
def test_4xx_and_3xx_not_retried(ctx):
    """404 dead-letters at once (non_retryable), a 302 is not followed (redirect)."""
    addr = agent(ctx, "4xx", "/4xx", {"retry": {"base_delay_ms": 100}})
    ctx.rx.script("/4xx", [{"status": 404}])
    a = send(ctx, addr)
    wait_status(ctx, a, ("FAILED",))
    addr3 = agent(ctx, "3xx", "/3xx", {"retry": {"base_delay_ms": 100}})
    ctx.rx.script("/3xx", [{"status": 302, "headers": {"location": ctx.rx.url("/elsewhere")}}])
    b = send(ctx, addr3)
    wait_status(ctx, b, ("FAILED",))
    time.sleep(1)
    check(len(ctx.rx.requests("/4xx")) == 1, "404 retried")
    check(len(ctx.rx.requests("/3xx")) == 1, "302 retried")
    check(ctx.rx.requests("/elsewhere") == [], "redirect followed")
    check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (a,)) == "non_retryable", "404 reason")
    check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (b,)) == "redirect", "302 reason")
    check(attempts(ctx, a)[0][1] == 404 and attempts(ctx, b)[0][2] == "redirect", "attempt rows")


@test
def test_garbage_response_is_retried(ctx):
    """A server answering with no HTTP response at all (HTTP/0.9-style bytes) is a network failure: retried."""
    addr = agent(ctx, "garbage", "/garbage", {"retry": {"base_delay_ms": 100}})
    ctx.rx.script("/garbage", [{"raw": "hello, I am not HTTP\r\n"}], default={"status": 200})
    a = send(ctx, addr)
    wait_status(ctx, a, ("COMPLETED",))
    rows = attempts(ctx, a)
    check(len(rows) == 2 and rows[0][2] == "network" and rows[1][1] == 200, "attempt rows: %s" % (rows,))


@test
def test_retry_after(ctx):
    """429 with Retry-After: 2 waits at least 2 s though the backoff says 0.1 s; 503 with a date too."""
    addr = agent(ctx, "ra", "/ra", {"retry": {"base_delay_ms": 100}})
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    ctx.rx.script("/ra", [{"status": 429, "headers": {"retry-after": "2"}},
                          {"status": 503, "headers": {"retry-after": date}}, {"status": 200}])
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("COMPLETED",), timeout=30)
    reqs = ctx.rx.requests("/ra")
    gap1 = reqs[1]["t"] - reqs[0]["t"]
    gap2 = reqs[2]["t"] - reqs[1]["t"]
    check(gap1 >= 1.95, "Retry-After 2 ignored: retried after %.3f s" % gap1)
    check(gap2 >= 1.0, "Retry-After date ignored: retried after %.3f s" % gap2)
    check(gap1 < 20 and gap2 < 20, "far too late")


@test
def test_deadline_while_delivered_explicit(ctx):
    """explicit completion: a DELIVERED intent still times out at its deadline_at."""
    addr = agent(ctx, "expdl", "/expdl", {"completion": "explicit"})
    deadline = q1(ctx.db, "SELECT now() + interval '2 seconds'")
    iid = send(ctx, addr, deadline_at=deadline.isoformat())
    ctx.rx.wait_requests("/expdl", 1, 10)
    wait_until(lambda: attempts(ctx, iid), 10, "attempt row")
    check(status(ctx, iid) == "DELIVERED", "status %s" % status(ctx, iid))
    wait_status(ctx, iid, ("TIMED_OUT",), timeout=20)
    check(q1(ctx.db, "SELECT updated_at >= %s FROM axme.intents WHERE intent_id = %s", (deadline, iid)),
          "timed out before its deadline")


@test
def test_tls_verified_and_private_ca(ctx):
    """https: an unknown CA fails (tls, retried until dead-lettered); with ca_file it is delivered."""
    d = ctx.cluster.dir
    cert, key = os.path.join(d, "rx.pem"), os.path.join(d, "rx.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(cert, 0o644)
    rx = Receiver(tls=(cert, key))
    try:
        bad = "agent://acme/tests/tlsbad"
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
          (bad, rx.url("/tls"), json.dumps({"retry": {"max_attempts": 2, "base_delay_ms": 100}})))
        a = send(ctx, bad)
        wait_status(ctx, a, ("FAILED",))
        rows = attempts(ctx, a)
        check([r[2] for r in rows] == ["tls", "tls"], "attempts %s" % rows)
        check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (a,)) == "exhausted",
              "reason")
        good = "agent://acme/tests/tlsgood"
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
          (good, rx.url("/tls"), json.dumps({"ca_file": cert})))
        b = send(ctx, good)
        wait_status(ctx, b, ("COMPLETED",))
        check(len(rx.requests("/tls")) == 1, "requests over TLS: %d" % len(rx.requests("/tls")))
    finally:
        rx.server.shutdown()


@test
def test_hanging_endpoint_does_not_delay_healthy(ctx):
    """A hanging endpoint at its cap does not hold up another agent."""
    slow = agent(ctx, "hang", "/hang", {"max_in_flight": 2, "timeout_ms": 30000})
    fast = agent(ctx, "healthy", "/healthy")
    ctx.rx.script("/hang", [], default={"hang": 25})
    hung = [send(ctx, slow) for _ in range(6)]
    ctx.rx.wait_requests("/hang", 2, 10)
    t0 = time.time()
    ok = [send(ctx, fast) for _ in range(10)]
    for iid in ok:
        wait_status(ctx, iid, ("COMPLETED",), timeout=15)
    took = time.time() - t0
    check(took < 15, "healthy agent took %.1f s" % took)
    check(len(ctx.rx.requests("/hang")) == 2, "per-agent cap exceeded: %d" % len(ctx.rx.requests("/hang")))
    # do not leave them hanging for later tests
    ctx.rx.script("/hang", [], default={"status": 200})
    for iid in hung:
        q(ctx.db, "SELECT axme.resolve(%s, 'CANCELED')", (iid,))


@test
def test_hanging_endpoints_filling_the_worker_do_not_starve_others(ctx):
    """Hanging endpoints that take every slot of axme.max_in_flight still leave one for each other agent."""
    q(ctx.admin, "ALTER SYSTEM SET axme.max_in_flight = 4")
    q(ctx.admin, "SELECT pg_reload_conf()")
    time.sleep(1.5)
    slow = agent(ctx, "hogger", "/hog", {"max_in_flight": 50, "timeout_ms": 30000})
    fast = agent(ctx, "starved", "/starved")
    ctx.rx.script("/hog", [], default={"hang": 25})
    try:
        hung = [send(ctx, slow) for _ in range(10)]
        # requests still hanging from an earlier test may hold some of the 4 slots: the hanging
        # agent gets the rest, and the pipeline is full either way
        ctx.rx.wait_requests("/hog", 1, 10)
        time.sleep(1)
        t0 = time.time()
        ok = [send(ctx, fast) for _ in range(3)]
        for iid in ok:
            wait_status(ctx, iid, ("COMPLETED",), timeout=15)
        took = time.time() - t0
        check(took < 15, "healthy agent took %.1f s behind a full pipeline" % took)
        check(1 <= len(ctx.rx.requests("/hog")) <= 4, "global cap exceeded by the hanging agent: %d"
              % len(ctx.rx.requests("/hog")))
    finally:
        ctx.rx.script("/hog", [], default={"status": 200})
        q(ctx.admin, "ALTER SYSTEM RESET axme.max_in_flight")
        q(ctx.admin, "SELECT pg_reload_conf()")
        time.sleep(1.5)
    for iid in hung:        # those not delivered since the receiver answers again
        q(ctx.db, "SELECT axme.resolve(intent_id, 'CANCELED') FROM axme.intents WHERE intent_id = %s"
                  " AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')", (iid,))


def _ssrf_case(ctx, name, url):
    addr = "agent://acme/tests/%s" % name
    q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, '{}')", (addr, url))
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("FAILED",))
    rows = attempts(ctx, iid)
    check(rows and rows[0][2] == "ssrf_blocked", "%s: attempt %s" % (url, rows))
    check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (iid,)) == "ssrf_blocked",
          "%s: reason" % url)
    return rows[0][3]


@test
def test_ssrf(ctx):
    """Non-public targets are refused after DNS unless allowed; the GUC is not settable per database."""
    ctx.rx.script("/ssrf", [], default={"status": 200})
    err = _ssrf_case(ctx, "meta", "http://169.254.169.254/latest/meta-data")
    check("169.254.169.254" in err, "error does not name the address: %s" % err)
    _ssrf_case(ctx, "ten", "http://10.0.0.1:9/")
    try:
        q(ctx.db, "ALTER DATABASE axt SET axme.http_allowed_networks = '0.0.0.0/0'")
        raise AssertionError("ALTER DATABASE opened the allow-list")
    except psycopg2.Error as e:
        check(e.pgcode == "55P02", "ALTER DATABASE: %s %s" % (e.pgcode, e))
    # a kept-alive connection to the receiver, opened while loopback is allowed ...
    ok = send(ctx, agent(ctx, "ssrfok", "/ssrf"))
    wait_status(ctx, ok, ("COMPLETED",))
    # ... must not be used once it is no longer allowed
    q(ctx.admin, "ALTER SYSTEM SET axme.http_allowed_networks = ''")
    q(ctx.admin, "SELECT pg_reload_conf()")
    try:
        time.sleep(1.5)
        err = _ssrf_case(ctx, "loop", ctx.rx.url("/ssrf"))
        check("127.0.0.1" in err, "error does not name the address: %s" % err)
        _ssrf_case(ctx, "mapped", "http://[::ffff:127.0.0.1]:%d/ssrf" % ctx.rx.port)
        _ssrf_case(ctx, "localname", "http://localhost:%d/ssrf" % ctx.rx.port)
        check(len(ctx.rx.requests("/ssrf")) == 1, "a refused request reached the receiver")
    finally:
        q(ctx.admin, "ALTER SYSTEM RESET axme.http_allowed_networks")
        q(ctx.admin, "SELECT pg_reload_conf()")
        time.sleep(1.5)


def _rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])


@test
def test_worker_memory_stable(ctx):
    """Thousands of failing attempts do not grow the worker's private memory."""
    addr = "agent://acme/tests/refused"
    q(ctx.db, "SELECT axme.register_agent(%s, 'http', 'http://127.0.0.1:9/x', %s)",
      (addr, json.dumps({"max_in_flight": 64, "retry": {"max_attempts": 1000, "base_delay_ms": 50,
                                                         "max_delay_ms": 100},
                         # keep attempts flowing: the breaker would stop them (test_resilience.py)
                         "breaker": {"failure_threshold": 100000}})))
    ids = [r[0] for r in q(ctx.db, """SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.deliver.v1',
                                          'to_agent', %s, 'payload', '{}'::jsonb)) FROM generate_series(1, 300)""",
                              (addr,))]
    pid = worker_pids(ctx)[0]
    n_attempts = lambda: q1(ctx.db, "SELECT count(*) FROM axme.delivery_attempts a JOIN axme.agents g USING (agent_id) WHERE g.address = %s", (addr,))
    wait_until(lambda: n_attempts() >= 3000, 60, "3000 attempts")
    before = _rss_anon_kb(pid)
    start = n_attempts()
    wait_until(lambda: n_attempts() >= start + 10000, 120, "10000 more attempts")
    after = _rss_anon_kb(pid)
    for iid in ids:
        q(ctx.db, "SELECT axme.resolve(%s, 'CANCELED')", (iid,))
    if os.environ.get("AXME_TEST_SERVER_ENV"):
        # scripts/sanitize.sh: AddressSanitizer keeps freed memory in its quarantine (256 MB), so
        # RSS grows by design there; that run checks the 10000 attempts for memory errors instead
        print("    (worker RSS %d -> %d kB; not bounded under the sanitizer)" % (before, after))
        return
    check(after - before < 4096, "worker memory grew from %d kB to %d kB over 10000 attempts" % (before, after))


@test
def test_record_error_retried_not_fatal(ctx):
    """An error while recording outcomes is retried; the worker keeps running, nothing is lost."""
    pid = worker_pids(ctx)[0]
    q(ctx.db, "ALTER TABLE axme.delivery_attempts ADD CONSTRAINT test_no_teapot CHECK (http_status <> 418)")
    try:
        addr = agent(ctx, "teapot", "/teapot")
        ctx.rx.script("/teapot", [{"status": 418}])
        iid = send(ctx, addr)
        ctx.rx.wait_requests("/teapot", 1, 10)
        time.sleep(1.5)
        check(status(ctx, iid) == "DELIVERED", "recorded despite the constraint: %s" % status(ctx, iid))
    finally:
        q(ctx.db, "ALTER TABLE axme.delivery_attempts DROP CONSTRAINT test_no_teapot")
    wait_status(ctx, iid, ("FAILED",), timeout=10)
    check(worker_pids(ctx) == [pid], "the worker was restarted: %s -> %s" % (pid, worker_pids(ctx)))
    check(len(ctx.rx.requests("/teapot")) == 1, "sent again")
    check("recording deliveries failed, will retry" in ctx.cluster.log(), "no WARNING in the log")


@test
def test_terminate_restarts_worker(ctx):
    """pg_terminate_backend of the worker: the launcher starts a new one, delivery goes on."""
    old = worker_pids(ctx)
    check(len(old) == 1, "workers %s" % old)
    q(ctx.admin, "SELECT pg_terminate_backend(%s)", (old[0],))
    new = wait_until(lambda: [p for p in worker_pids(ctx) if p != old[0]], 15, "a new worker")
    addr = agent(ctx, "term", "/term")
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("COMPLETED",))
    check(new, "no new worker")


def _crash_case(ctx, name, crash):
    addr = agent(ctx, name, "/" + name, {"timeout_ms": 2000, "max_in_flight": 8})
    path = "/" + name
    ctx.rx.script(path, [], default={"hang": 0.5})
    ids = [send(ctx, addr, {"i": i}) for i in range(40)]
    ctx.rx.wait_requests(path, 8, 20)
    crash()
    ctx.db = ctx.cluster.connect("axt")
    ctx.admin = ctx.cluster.connect("postgres")
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=2 + 30 + 30)
    seen = {r["headers"]["webhook-id"] for r in ctx.rx.requests(path)}
    check(seen == set(ids), "delivered %d of %d" % (len(seen & set(ids)), len(ids)))


@test
def test_kill9_worker_mid_batch(ctx):
    """kill -9 of the worker mid-batch: after the restart every intent is delivered (same ids)."""
    def crash():
        pid = worker_pids(ctx)[0]
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
    _crash_case(ctx, "kill9", crash)


@test
def test_immediate_shutdown_mid_delivery(ctx):
    """pg_ctl stop -m immediate mid-delivery, start: every intent is delivered."""
    def crash():
        ctx.db.close()
        ctx.admin.close()
        ctx.cluster.stop("immediate")
        ctx.cluster.start()
    _crash_case(ctx, "immed", crash)


@test
def test_two_databases(ctx):
    """Two databases are served at once, each by its own worker, found without a restart."""
    for d in ("axt_a", "axt_b"):
        q(ctx.admin, "DROP DATABASE IF EXISTS %s" % d)
        q(ctx.admin, "CREATE DATABASE %s" % d)
    conns = {}
    t0 = time.time()
    for d in ("axt_a", "axt_b"):
        c = ctx.cluster.connect(d)
        q(c, "CREATE EXTENSION axme")
        conns[d] = c
    wait_until(lambda: len(worker_pids(ctx, "axt_a")) == 1 and len(worker_pids(ctx, "axt_b")) == 1,
               15, "workers of axt_a and axt_b")
    took = time.time() - t0
    ids = {}
    for d, c in conns.items():
        addr = agent(ctx, "two", "/two_" + d, conn=c)
        ids[d] = send(ctx, addr, conn=c)
    for d, c in conns.items():
        wait_status(ctx, ids[d], ("COMPLETED",), conn=c)
        check(len(ctx.rx.requests("/two_" + d)) == 1, "requests of %s" % d)
        c.close()
    print("    (workers of two new databases up %.2f s after CREATE EXTENSION)" % took)


@test
def test_drop_extension_and_database_while_delivering(ctx):
    """DROP EXTENSION stops delivery cleanly; DROP DATABASE succeeds at once with deliveries running."""
    q(ctx.admin, "DROP DATABASE IF EXISTS axt_drop")
    q(ctx.admin, "CREATE DATABASE axt_drop")
    c = ctx.cluster.connect("axt_drop")
    q(c, "CREATE EXTENSION axme")
    ctx.rx.script("/dropx", [], default={"hang": 3})
    addr = agent(ctx, "dropx", "/dropx", {"max_in_flight": 4}, conn=c)
    for i in range(20):
        send(ctx, addr, conn=c)
    ctx.rx.wait_requests("/dropx", 4, 15)
    q(c, "DROP EXTENSION axme CASCADE")
    wait_until(lambda: len(worker_pids(ctx, "axt_drop")) == 0, 20, "worker to leave after DROP EXTENSION")
    n = len(ctx.rx.requests("/dropx"))
    time.sleep(4)
    check(len(ctx.rx.requests("/dropx")) <= n + 4, "still delivering after DROP EXTENSION")
    # served again after CREATE EXTENSION, then drop the database under it
    q(c, "CREATE EXTENSION axme")
    wait_until(lambda: len(worker_pids(ctx, "axt_drop")) == 1, 15, "worker after CREATE EXTENSION")
    addr = agent(ctx, "dropx", "/dropx", {"max_in_flight": 4}, conn=c)
    for i in range(20):
        send(ctx, addr, conn=c)
    time.sleep(1)
    c.close()
    t0 = time.time()
    q(ctx.admin, "DROP DATABASE axt_drop")
    took = time.time() - t0
    check(took < 4.5, "DROP DATABASE took %.1f s" % took)
    check(q1(ctx.admin, "SELECT count(*) FROM pg_database WHERE datname = 'axt_drop'") == 0, "database left")
    ctx.rx.script("/dropx", [], default={"status": 200})


@test
def test_database_worker_cap_warns(ctx):
    """axme.max_database_workers reached: one worker runs, a WARNING names the database left unserved."""
    c2 = Cluster(ctx.cluster.bindir, ctx.cluster.port + 1, extra_conf="axme.max_database_workers = 1\n")
    try:
        c2.start()
        admin = c2.connect("postgres")
        for d in ("capped_a", "capped_b"):
            q(admin, "CREATE DATABASE %s" % d)
            c = c2.connect(d)
            q(c, "CREATE EXTENSION axme")
            c.close()
        served = wait_until(lambda: q(admin, """SELECT datname FROM pg_stat_activity
                                               WHERE backend_type = 'axme delivery worker'
                                                 AND datname LIKE 'capped%%'"""), 15, "a worker")
        check(len(served) == 1, "workers %s" % served)
        other = "capped_b" if served[0][0] == "capped_a" else "capped_a"
        wait_until(lambda: "axme.max_database_workers (1) reached" in c2.log() and '"%s"' % other in c2.log(),
                   20, "the WARNING naming %s" % other)
        time.sleep(1)
        check(len(q(admin, "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'axme delivery worker'")) == 1,
              "cap exceeded")
        check(q(admin, "SELECT datname FROM pg_stat_activity WHERE backend_type = 'axme delivery worker'") == served,
              "the served database changed")
        # not only the log: worker_status, metrics() and an alert row of the unserved database
        oc = c2.connect(other)
        rows = wait_until(lambda: q(oc, "SELECT kind, pid, state FROM axme.worker_status "
                                        "WHERE database = current_database()"), 10, "a worker_status row")
        check(rows == [("none", None, "not served: axme.max_database_workers (1) reached")], "worker_status %s" % rows)
        check("\naxme_database_unserved 1\n" in q1(oc, "SELECT axme.metrics()"), "metrics")
        alerts = wait_until(lambda: q(oc, "SELECT kind, details->>'reason' FROM axme.alerts"), 10, "an alert row")
        check(alerts == [("database_unserved", "max_database_workers")], "alerts %s" % alerts)
        sc = c2.connect(served[0][0])
        check("\naxme_database_unserved 0\n" in q1(sc, "SELECT axme.metrics()"), "metrics of the served one")
        check(q(sc, "SELECT kind FROM axme.alerts") == [], "an alert in the served database")
        sc.close()
        oc.close()
        admin.close()
    except Exception:
        print("\n".join(l for l in c2.log().splitlines() if "axme" in l)[-3000:])
        raise
    finally:
        c2.destroy()


@test
def test_worker_processes_exhausted_warns(ctx):
    """No background worker slot left: a WARNING names the database that is not served."""
    # the launcher and the logical replication launcher take both slots
    c3 = Cluster(ctx.cluster.bindir, ctx.cluster.port + 1, extra_conf="max_worker_processes = 2\n")
    try:
        c3.start()
        admin = c3.connect("postgres")
        q(admin, "CREATE DATABASE starved")
        c = c3.connect("starved")
        q(c, "CREATE EXTENSION axme")
        c.close()
        wait_until(lambda: "no background worker slot free" in c3.log() and '"starved"' in c3.log(),
                   20, "the WARNING naming starved")
        check(q(admin, "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'axme delivery worker'") == [],
              "a worker runs without a slot")
        sc = c3.connect("starved")
        rows = q(sc, "SELECT kind, state FROM axme.worker_status WHERE database = current_database()")
        check(rows == [("none", "not served: no background worker slot free (max_worker_processes)")],
              "worker_status %s" % rows)
        sc.close()
        admin.close()
    finally:
        c3.destroy()


@test
def test_hot_standby_waits_then_serves_after_promotion(ctx):
    """No axme delivery workers on a hot standby; after promotion they start and deliver."""
    from cluster import _as_postgres
    primary = Cluster(ctx.cluster.bindir, ctx.cluster.port + 1)
    standby = None
    try:
        primary.start()
        p = primary.connect("postgres")
        q(p, "CREATE DATABASE hs")
        pdb = primary.connect("hs")
        q(pdb, "CREATE EXTENSION axme")
        q(pdb, "SELECT axme.register_agent('agent://acme/tests/standby', 'poll')")
        ids = [send(ctx, "agent://acme/tests/standby", {"i": i}, conn=pdb) for i in range(3)]
        standby = Cluster(ctx.cluster.bindir, ctx.cluster.port + 2)
        subprocess.run(["rm", "-rf", standby.data], check=True)
        subprocess.run(_as_postgres([os.path.join(ctx.cluster.bindir, "pg_basebackup"), "-h", "/tmp",
                                     "-p", str(primary.port), "-U", "postgres", "-D", standby.data, "-R",
                                     "-c", "fast"]),
                       check=True, capture_output=True)
        with open(os.path.join(standby.data, "postgresql.conf"), "a") as f:
            f.write("\nport = %d\nhot_standby = on\n" % standby.port)
        standby.start()
        s = standby.connect("postgres")
        check(q1(s, "SELECT pg_is_in_recovery()") is True, "not a standby")
        time.sleep(2)
        check(q(s, "SELECT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'axme%%'") == [],
              "axme processes on a hot standby")
        pdb.close()
        p.close()
        primary.stop("fast")
        q(s, "SELECT pg_promote()")
        sdb = standby.connect("hs")
        q(sdb, "SELECT axme.register_agent('agent://acme/tests/standby', 'http', %s)", (ctx.rx.url("/standby"),))
        for iid in ids:
            wait_status(ctx, iid, ("COMPLETED",), conn=sdb, timeout=30)
        check(len(ctx.rx.requests("/standby")) == 3, "requests after promotion")
        sdb.close()
        s.close()
    finally:
        primary.destroy()
        if standby:
            standby.destroy()


@test
def test_upgrade_from_0_1_0(ctx):
    """CREATE EXTENSION axme VERSION '0.1.0' then ALTER EXTENSION UPDATE keeps data; http then works."""
    q(ctx.admin, "DROP DATABASE IF EXISTS axt_up")
    q(ctx.admin, "CREATE DATABASE axt_up")
    c = ctx.cluster.connect("axt_up")
    q(c, "CREATE EXTENSION axme VERSION '0.1.0'")
    q(c, "SELECT axme.register_agent('agent://acme/tests/old', 'poll')")
    old = send(ctx, "agent://acme/tests/old", conn=c)
    q(c, "SELECT axme.register_agent('agent://acme/tests/up', 'http', %s)", (ctx.rx.url("/up"),))
    pending = send(ctx, "agent://acme/tests/up", conn=c)
    time.sleep(1)
    check(ctx.rx.requests("/up") == [], "0.1.0 delivered over http")
    q(c, "ALTER EXTENSION axme UPDATE")
    check(q1(c, "SELECT extversion FROM pg_extension WHERE extname = 'axme'") ==
          q1(c, "SELECT default_version FROM pg_available_extensions WHERE name = 'axme'"), "version")
    check(status(ctx, old, c) == "SUBMITTED", "poll intent changed")
    # the http agent registered under 0.1.0 got a secret in the update, and its intent goes out signed
    secret = q1(c, "SELECT axme.agent_secret('agent://acme/tests/up')")
    check(secret and secret.startswith("whsec_"), "no secret after the update: %r" % secret)
    wait_status(ctx, pending, ("COMPLETED",), conn=c)
    r = ctx.rx.requests("/up")[0]
    rc, out = node_verify([{"secret": secret, "id": r["headers"]["webhook-id"],
                            "timestamp": r["headers"]["webhook-timestamp"],
                            "signature": r["headers"]["webhook-signature"], "body": r["body"].decode()}])
    check(rc == 0, out)
    c.close()
    q(ctx.admin, "DROP DATABASE axt_up")


# ------------------------------------------------------------------------------------------------

def free_port_pair():
    """Two consecutive ports free for TCP on loopback and for a unix socket in /tmp."""
    import random
    import socket
    for _ in range(200):
        p = random.randint(20000, 40000)
        ok = True
        for port in (p, p + 1):
            if os.path.exists("/tmp/.s.PGSQL.%d" % port):
                ok = False
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    raise RuntimeError("no free port pair")


def main(tests=None):
    """Run tests (default: this file's) in one throwaway cluster; prints "N passed, M failed"."""
    tests = TESTS if tests is None else tests
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--port", type=int, default=int(os.environ.get("AXME_HTTP_TEST_PORT", "0")),
                    help="first of two ports for the test clusters (default: two free ones)")
    ap.add_argument("-k", default=None, help="run tests whose name contains this")
    args = ap.parse_args()

    ctx = Ctx()
    ctx.rx = Receiver()
    ctx.cluster = Cluster(args.bindir, args.port or free_port_pair())
    passed = failed = 0
    try:
        ctx.cluster.start()
        ctx.admin = ctx.cluster.connect("postgres")
        q(ctx.admin, "CREATE DATABASE axt")
        ctx.db = ctx.cluster.connect("axt")
        q(ctx.db, "CREATE EXTENSION axme")
        for fn in tests:
            if args.k and not any(k in fn.__name__ for k in args.k.split(",")):
                continue
            t0 = time.time()
            try:
                if ctx.db.closed:
                    ctx.db = ctx.cluster.connect("axt")
                if ctx.admin.closed:
                    ctx.admin = ctx.cluster.connect("postgres")
                fn(ctx)
                passed += 1
                print("ok   %s (%.1f s)" % (fn.__name__, time.time() - t0), flush=True)
            except Exception:
                failed += 1
                print("FAIL %s (%.1f s)" % (fn.__name__, time.time() - t0), flush=True)
                traceback.print_exc()
                for c in ("db", "admin"):
                    try:
                        getattr(ctx, c).close()
                    except Exception:
                        pass
                    setattr(ctx, c, ctx.cluster.connect("axt" if c == "db" else "postgres"))
    finally:
        if failed:
            log = ctx.cluster.log()
            print("---- server log (last 60 lines) ----")
            print("\n".join(log.splitlines()[-60:]))
        ctx.cluster.destroy()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
