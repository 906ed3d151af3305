"""Tests of http resilience: circuit breaker, slow start, rate limit, secret rotation,
mTLS, 410 / disable_after and enable_agent, endpoint_health, alerts.

Run through test/http/run.sh (which also runs test_http.py and prints the combined count).
Timing checks: lower bounds strict, upper bounds generous (shared, noisy machines).
"""
import json
import os
import select
import subprocess
import time

import psycopg2
import psycopg2.extensions

from receiver import Receiver
import test_http
from test_http import q, q1, wait_until, check, agent, send, status, wait_status, node_verify

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def alerts(ctx, addr, kind=None):
    """[(id, kind, at epoch seconds, details)] of an agent, oldest first."""
    return q(ctx.db, """SELECT id, kind, extract(epoch FROM at)::float8, details FROM axme.alerts
                        WHERE agent = %s AND (%s::text IS NULL OR kind = %s) ORDER BY id""",
             (addr, kind, kind))


def wait_alert(ctx, addr, kind, n=1, timeout=30):
    return wait_until(lambda: (lambda r: r if len(r) >= n else None)(alerts(ctx, addr, kind)),
                      timeout, "%d %s alert(s) of %s" % (n, kind, addr))[n - 1]


def health(ctx, addr):
    with ctx.db.cursor() as cur:
        cur.execute("SELECT * FROM axme.endpoint_health WHERE agent = %s", (addr,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None


def charged(ctx, addr):
    """Sum of the attempt counters of an agent's intents (every charged attempt)."""
    return q1(ctx.db, """SELECT coalesce(sum(i.attempt), 0) FROM axme.intents i
                         JOIN axme.agents a USING (agent_id) WHERE a.address = %s""", (addr,))


def max_conc_until(reqs, t):
    return max([r["conc"] for r in reqs if r["t"] < t] or [0])


# ------------------------------------------------------------------------------------------------

@test
def test_breaker_open_cooldown_probe_close(ctx):
    """Opens after 10 failing intents; nothing during the cool-down; one probe; a failed probe
    re-opens with a longer cool-down; a good probe closes it; attempts charged == requests;
    a healthy agent beside it is unaffected; every change is an alert + NOTIFY axme_alerts."""
    listen = ctx.cluster.connect("axt")
    q(listen, "LISTEN axme_alerts")
    addr = agent(ctx, "brk", "/brk", {"breaker": {"failure_threshold": 10, "cooldown_ms": 1500},
                                       "retry": {"max_attempts": 50, "base_delay_ms": 100, "max_delay_ms": 200}})
    ok = agent(ctx, "brk-ok", "/brk-ok")
    ctx.rx.set_default("/brk", {"status": 500})
    ids = [send(ctx, addr, {"n": i}) for i in range(12)]
    opened = wait_alert(ctx, addr, "breaker_opened")
    check(opened[3]["consecutive_failures"] >= 10 and opened[3]["cooldown_ms"] == 1500, "opened %r" % (opened,))
    n_at_open = len(ctx.rx.requests("/brk"))
    check(n_at_open >= 10, "opened after %d requests" % n_at_open)
    h = health(ctx, addr)
    check(h["breaker_state"] == "open" and h["concurrency_limit"] == 0 and h["consecutive_failures"] >= 10,
          "health while open %r" % h)
    # a healthy agent is served while the breaker of the other is open
    oks = [send(ctx, ok) for _ in range(5)]
    for iid in oks:
        wait_status(ctx, iid, ("COMPLETED",), timeout=20)
    check(q1(ctx.db, "SELECT breaker_state FROM axme.endpoint_health WHERE agent = %s", (addr,)) == "open" or
          alerts(ctx, addr, "breaker_half_open"), "breaker state")
    # cool-down: no request, then exactly one probe (it fails: re-open, longer cool-down)
    half = wait_alert(ctx, addr, "breaker_half_open")
    check(half[2] - opened[2] >= 1.49, "half-open %.3f s after opening (cool-down 1.5 s)" % (half[2] - opened[2]))
    # (requests sent before the breaker opened may still arrive just after: 0.3 s of grace)
    during = [r for r in ctx.rx.requests("/brk") if opened[2] + 0.3 < r["t"] < half[2]]
    check(during == [], "%d requests during the cool-down" % len(during))
    reopened = wait_alert(ctx, addr, "breaker_opened", 2)
    check(reopened[3]["reopened"] is True and reopened[3]["cooldown_ms"] == 3000, "re-opened %r" % (reopened,))
    probes = [r for r in ctx.rx.requests("/brk") if half[2] <= r["t"] <= reopened[2]]
    check(len(probes) == 1, "%d probes" % len(probes))
    # the receiver recovers; after the longer cool-down one probe succeeds and closes it
    ctx.rx.set_default("/brk", {"status": 200})
    half2 = wait_alert(ctx, addr, "breaker_half_open", 2)
    check(half2[2] - reopened[2] >= 2.99, "second cool-down %.3f s (>= 3 s)" % (half2[2] - reopened[2]))
    check([r for r in ctx.rx.requests("/brk") if reopened[2] < r["t"] < half2[2]] == [],
          "requests during the second cool-down")
    closed = wait_alert(ctx, addr, "breaker_closed")
    check(closed[2] >= half2[2], "closed before half-open")
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=30)
    # not charged while open: every charged attempt is one request the receiver saw
    check(charged(ctx, addr) == len(ctx.rx.requests("/brk")),
          "attempts charged %d, requests %d" % (charged(ctx, addr), len(ctx.rx.requests("/brk"))))
    check([a[1] for a in alerts(ctx, addr)] ==
          ["breaker_opened", "breaker_half_open", "breaker_opened", "breaker_half_open", "breaker_closed"],
          "alert sequence %r" % [a[1] for a in alerts(ctx, addr)])
    check(alerts(ctx, ok) == [], "the healthy agent has alerts")
    h = health(ctx, addr)
    check(h["breaker_state"] == "closed" and h["consecutive_failures"] == 0 and h["last_success_at"] is not None
          and h["last_error_class"] == "http" and h["last_http_status"] == 500, "health after %r" % h)
    # NOTIFY axme_alerts: {"id", "agent", "kind"} only
    listen.poll()
    notes = [json.loads(n.payload) for n in listen.notifies]
    mine = [n for n in notes if n["agent"] == addr]
    check(len(mine) == 5 and all(set(n) == {"id", "agent", "kind"} for n in mine), "notifies %r" % mine)
    check([n["kind"] for n in mine] == [a[1] for a in alerts(ctx, addr)], "notify kinds")
    listen.close()


@test
def test_one_intent_retries_never_trip(ctx):
    """A single stubborn intent failing 14 times counts once: the breaker stays closed."""
    addr = agent(ctx, "stub", "/stub", {"breaker": {"failure_threshold": 10, "cooldown_ms": 60000},
                                         "retry": {"max_attempts": 14, "base_delay_ms": 50, "max_delay_ms": 100}})
    ctx.rx.set_default("/stub", {"status": 503})
    iid = send(ctx, addr)
    wait_status(ctx, iid, ("FAILED",), timeout=60)
    check(len(ctx.rx.requests("/stub")) == 14, "requests %d" % len(ctx.rx.requests("/stub")))
    check(alerts(ctx, addr) == [], "alerts %r" % alerts(ctx, addr))
    h = health(ctx, addr)
    check(h["breaker_state"] == "closed" and h["consecutive_failures"] == 1, "health %r" % h)
    check(h["success_rate_5m"] == 0 and h["attempts_5m"] == 14, "rate %r" % h)


@test
def test_healthy_burst_full_concurrency(ctx):
    """An endpoint without failures gets a burst at its full max_in_flight at once (no ramp)."""
    addr = agent(ctx, "burst", "/burst", {"max_in_flight": 16})
    ctx.rx.set_default("/burst", {"hang": 2.0, "status": 200})
    ids = [send(ctx, addr, {"n": i}) for i in range(16)]
    ctx.rx.wait_requests("/burst", 16, 20)
    h = health(ctx, addr)
    check(h["in_flight"] == 16 and h["concurrency_limit"] == 16 and h["breaker_state"] == "closed",
          "endpoint_health during the burst: %r" % h)
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=30)
    reqs = ctx.rx.requests("/burst")
    first_end = min(r["t_end"] for r in reqs)
    check(max_conc_until(reqs, first_end) == 16,
          "in flight before the first answer: %d (want 16)" % max_conc_until(reqs, first_end))


@test
def test_slow_start_after_breaker_closes(ctx):
    """After the breaker closes, concurrency at the receiver ramps 1, 2, 4 ... up to max_in_flight."""
    hang = 0.5
    addr = agent(ctx, "ramp", "/ramp", {"max_in_flight": 16,
                                         "breaker": {"failure_threshold": 10, "cooldown_ms": 1000},
                                         "retry": {"max_attempts": 50, "base_delay_ms": 100, "max_delay_ms": 200}})
    ctx.rx.set_default("/ramp", {"status": 500})
    ids = [send(ctx, addr, {"n": i}) for i in range(10)]
    wait_alert(ctx, addr, "breaker_opened")
    ids += [send(ctx, addr, {"n": i}) for i in range(10, 60)]   # the backlog piles up
    ctx.rx.set_default("/ramp", {"hang": hang, "status": 200})
    closed = wait_alert(ctx, addr, "breaker_closed", timeout=30)
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=60)
    after = [r for r in ctx.rx.requests("/ramp") if r["t"] > closed[2]]
    after.sort(key=lambda r: r["t"])
    peak = max(r["conc"] for r in after)
    check(peak >= 12, "concurrency never ramped up: peak %d" % peak)
    t_close = closed[2]
    # one round trip after closing: at most 2 in flight (1, then 2)
    early = max_conc_until(after, t_close + hang * 0.9)
    check(early <= 2, "%d in flight within one round trip of closing" % early)
    first8 = min(r["t"] for r in after if r["conc"] >= 8)
    check(first8 - t_close >= 2 * hang, "8 in flight %.2f s after closing (slow start needs >= %.1f s)"
          % (first8 - t_close, 2 * hang))
    check(charged(ctx, addr) == len(ctx.rx.requests("/ramp")), "charged != requests")
    print("     ramp: peak %d in flight, 8 reached %.2f s after closing" % (peak, first8 - t_close))


@test
def test_rate_limit(ctx):
    """rate_limit_per_second = 10: requests arrive at 10/s within 10 %; waiting is not charged."""
    addr = agent(ctx, "rate", "/rate", {"rate_limit_per_second": 10})
    ids = [send(ctx, addr, {"n": i}) for i in range(41)]
    for iid in ids:
        wait_status(ctx, iid, ("COMPLETED",), timeout=60)
    t = sorted(r["t"] for r in ctx.rx.requests("/rate"))
    rate = (len(t) - 1) / (t[-1] - t[0])
    print("     rate limit 10/s: measured %.2f/s over %d requests" % (rate, len(t)))
    check(rate <= 11.0, "rate %.2f/s above 10/s + 10 %%" % rate)
    check(rate >= 9.0, "rate %.2f/s below 10/s - 10 %%" % rate)
    # over any 1 s window, at most 10 + 1 (bucket of 1) requests
    worst = max(sum(1 for x in t if s <= x < s + 1.0) for s in t)
    check(worst <= 11, "%d requests within one second" % worst)
    check(charged(ctx, addr) == 41, "attempts charged %d" % charged(ctx, addr))


def verify_all(reqs_entry, secrets):
    """{secret: verified?} for one request, each secret alone, with npm standardwebhooks."""
    h = reqs_entry["headers"]
    out = {}
    for s in secrets:
        rc, _ = node_verify([{"secret": s, "id": h["webhook-id"], "timestamp": h["webhook-timestamp"],
                              "signature": h["webhook-signature"], "body": reqs_entry["body"].decode()}])
        out[s] = rc == 0
    return out


@test
def test_rotate_secret(ctx):
    """rotate_secret: during the grace period every valid secret verifies (standardwebhooks), after
    it only the new one; a rotation in a grace period keeps the valid ones; at most 5; admins only."""
    addr = agent(ctx, "rot2", "/rot2")
    s0 = q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,))
    s1 = q1(ctx.db, "SELECT axme.rotate_secret(%s, '5 seconds')", (addr,))
    t1 = time.time()
    check(s1.startswith("whsec_") and s1 != s0, "new secret %r" % s1)
    check(q1(ctx.db, "SELECT axme.agent_secret(%s)", (addr,)) == s1, "agent_secret is not the new one")
    wait_status(ctx, send(ctx, addr), ("COMPLETED",))
    r = ctx.rx.requests("/rot2")[-1]
    check(len(r["headers"]["webhook-signature"].split(" ")) == 2, "signatures %r" % r["headers"]["webhook-signature"])
    check(verify_all(r, [s0, s1]) == {s0: True, s1: True}, "during grace: %r" % verify_all(r, [s0, s1]))
    # a second rotation within the grace period keeps both valid ones
    s2 = q1(ctx.db, "SELECT axme.rotate_secret(%s, '2 seconds')", (addr,))
    t2 = time.time()
    wait_status(ctx, send(ctx, addr), ("COMPLETED",))
    r = ctx.rx.requests("/rot2")[-1]
    check(verify_all(r, [s0, s1, s2]) == {s0: True, s1: True, s2: True}, "second grace: %r" % verify_all(r, [s0, s1, s2]))
    # after both grace periods only the newest signs
    time.sleep(max(0, t1 + 5.3 - time.time()))
    check(time.time() > t2 + 2.0, "timing")
    wait_status(ctx, send(ctx, addr), ("COMPLETED",))
    r = ctx.rx.requests("/rot2")[-1]
    check(len(r["headers"]["webhook-signature"].split(" ")) == 1, "signatures after grace %r" % r["headers"]["webhook-signature"])
    check(verify_all(r, [s0, s1, s2]) == {s0: False, s1: False, s2: True}, "after grace: %r" % verify_all(r, [s0, s1, s2]))
    # at most 5 valid secrets
    for _ in range(7):
        q(ctx.db, "SELECT axme.rotate_secret(%s)", (addr,))
    n = q1(ctx.db, """SELECT count(*) FROM axme.agent_secrets s JOIN axme.agents a USING (agent_id)
                      WHERE a.address = %s AND (s.expires_at IS NULL OR s.expires_at > now())""", (addr,))
    check(n == 5, "%d valid secrets" % n)
    # grace 0: only the new one
    s9 = q1(ctx.db, "SELECT axme.rotate_secret(%s, '0')", (addr,))
    check(q(ctx.db, """SELECT s.secret FROM axme.agent_secrets s JOIN axme.agents a USING (agent_id)
                       WHERE a.address = %s""", (addr,)) == [(s9,)], "grace 0 kept old secrets")
    # errors
    for sql, args, code in [
            ("SELECT axme.rotate_secret(%s, '-1 second')", (addr,), "22023"),
            ("SELECT axme.rotate_secret(%s, NULL)", (addr,), "22023"),
            ("SELECT axme.rotate_secret(%s)", ("agent://acme/tests/nobody",), "P0002"),
            ("SELECT axme.rotate_secret(%s)", ("not an address",), "22023")]:
        try:
            q(ctx.db, sql, args)
            raise AssertionError("no error for %s" % sql)
        except psycopg2.Error as e:
            check(e.pgcode == code, "%s: %s, want %s" % (sql, e.pgcode, code))
    q(ctx.db, "SELECT axme.register_agent('agent://acme/tests/rotpoll', 'poll')")
    try:
        q(ctx.db, "SELECT axme.rotate_secret('agent://acme/tests/rotpoll')")
        raise AssertionError("poll agent rotated")
    except psycopg2.Error as e:
        check(e.pgcode == "22023", "poll agent: %s" % e.pgcode)
    # not an admin: 42501
    q(ctx.db, "DROP ROLE IF EXISTS rot_user")
    q(ctx.db, "CREATE ROLE rot_user")
    q(ctx.db, "GRANT USAGE ON SCHEMA axme TO rot_user")
    q(ctx.db, "GRANT EXECUTE ON FUNCTION axme.rotate_secret(text, interval) TO rot_user")
    try:
        q(ctx.db, "SET ROLE rot_user")
        try:
            q(ctx.db, "SELECT axme.rotate_secret(%s)", (addr,))
            raise AssertionError("non-admin rotated")
        except psycopg2.Error as e:
            check(e.pgcode == "42501", "non-admin: %s" % e.pgcode)
    finally:
        q(ctx.db, "RESET ROLE")
        q(ctx.db, "REVOKE ALL ON FUNCTION axme.rotate_secret(text, interval) FROM rot_user")
        q(ctx.db, "REVOKE ALL ON SCHEMA axme FROM rot_user")
        q(ctx.db, "DROP ROLE rot_user")


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


@test
def test_mtls_client_certificate(ctx):
    """A receiver that demands a client certificate: refused without one, delivered with
    client_cert_file / client_key_file (our own CA, made here with openssl)."""
    d = os.path.join(ctx.cluster.dir, "mtls")
    os.makedirs(d)
    os.chmod(d, 0o755)
    p = lambda n: os.path.join(d, n)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=axme test CA",
            "-keyout", p("ca.key"), "-out", p("ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % ("127.0.0.1" if name == "server" else "axme client"),
                "-keyout", p(name + ".key"), "-out", p(name + ".csr"))
        with open(p(name + ".ext"), "w") as f:
            f.write(ext + "\n")
        openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", p(name + ".ext"), "-out", p(name + ".pem"))
    for f in os.listdir(d):
        os.chmod(p(f), 0o644)
    rx = Receiver(tls=(p("server.pem"), p("server.key")), client_ca=p("ca.pem"))
    try:
        no = "agent://acme/tests/mtls-no"
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
          (no, rx.url("/mtls"), json.dumps({"ca_file": p("ca.pem"), "retry": {"max_attempts": 1}})))
        a = send(ctx, no)
        wait_status(ctx, a, ("FAILED",))
        cls = q1(ctx.db, "SELECT error_class FROM axme.delivery_attempts WHERE intent_id = %s", (a,))
        check(cls in ("tls", "network"), "without a client certificate: %r" % cls)
        check(rx.requests("/mtls") == [], "request served without a client certificate")
        yes = "agent://acme/tests/mtls-yes"
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
          (yes, rx.url("/mtls"), json.dumps({"ca_file": p("ca.pem"), "client_cert_file": p("client.pem"),
                                              "client_key_file": p("client.key")})))
        b = send(ctx, yes)
        wait_status(ctx, b, ("COMPLETED",))
        check(len(rx.requests("/mtls")) == 1, "requests %d" % len(rx.requests("/mtls")))
        # the same as PEM contents instead of files
        pem = "agent://acme/tests/mtls-pem"
        read = lambda n: open(p(n)).read()
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
          (pem, rx.url("/mtls"), json.dumps({"ca_file": read("ca.pem"), "client_cert_file": read("client.pem"),
                                              "client_key_file": read("client.key")})))
        c = send(ctx, pem)
        wait_status(ctx, c, ("COMPLETED",))
        check(len(rx.requests("/mtls")) == 2, "requests %d" % len(rx.requests("/mtls")))
        # a symbolic link out of axme.tls_files_directory is refused at registration
        os.symlink("/etc/passwd", p("evil.pem"))
        try:
            q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
              ("agent://acme/tests/mtls-evil", rx.url("/mtls"), json.dumps({"ca_file": p("evil.pem")})))
            raise AssertionError("a symbolic link out of the directory was accepted")
        except psycopg2.Error as e:
            check(e.pgcode == "22023" and "leads outside" in e.pgerror, e.pgerror)
        # the directory changes (reload): the files of agent yes are no longer read, the attempt
        # fails with error class tls and nothing is sent
        q(ctx.db, "ALTER SYSTEM SET axme.tls_files_directory = '/nonexistent/axme-tls'")
        q(ctx.db, "SELECT pg_reload_conf()")
        time.sleep(1)
        q(ctx.db, "SELECT axme.register_agent(%s, 'http', %s, '{\"retry\": {\"max_attempts\": 1}}')", (yes, rx.url("/mtls")))
        e = send(ctx, yes)
        wait_status(ctx, e, ("FAILED",))
        row = q(ctx.db, "SELECT error_class, error FROM axme.delivery_attempts WHERE intent_id = %s", (e,))
        check(row and row[0][0] == "tls" and "not a file inside axme.tls_files_directory" in row[0][1], "attempt %s" % row)
        check(len(rx.requests("/mtls")) == 2, "sent with a refused file: %d" % len(rx.requests("/mtls")))
    finally:
        q(ctx.db, "ALTER SYSTEM RESET axme.tls_files_directory")
        q(ctx.db, "SELECT pg_reload_conf()")
        rx.server.shutdown()


@test
def test_410_disables_and_enable_redrives(ctx):
    """410 Gone: dead letter non_retryable, agent disabled (alert); later intents wait uncharged;
    enable_agent re-drives them; endpoint_health shows it."""
    addr = agent(ctx, "gone", "/gone")
    ctx.rx.script("/gone", [{"status": 410}])
    a = send(ctx, addr)
    wait_status(ctx, a, ("FAILED",))
    check(q1(ctx.db, "SELECT dead_letter_reason FROM axme.intents WHERE intent_id = %s", (a,)) == "non_retryable",
          "reason")
    wait_alert(ctx, addr, "endpoint_disabled")
    row = q(ctx.db, "SELECT disabled_at IS NOT NULL, disabled_reason FROM axme.agents WHERE address = %s", (addr,))[0]
    check(row[0] and "410" in row[1], "agent %r" % (row,))
    waiting = [send(ctx, addr, {"n": i}) for i in range(3)]
    time.sleep(1.5)
    check(len(ctx.rx.requests("/gone")) == 1, "requests while disabled")
    check(all(status(ctx, i) == "SUBMITTED" for i in waiting), "waiting intents moved")
    check(charged(ctx, addr) == 1, "charged while disabled")
    h = health(ctx, addr)
    check(h["disabled_at"] is not None and h["waiting"] == 3 and h["next_attempt_at"] is None
          and h["concurrency_limit"] == 0, "health %r" % h)
    check(q1(ctx.db, "SELECT axme.enable_agent(%s)", (addr,)) is True, "enable_agent returned false")
    for i in waiting:
        wait_status(ctx, i, ("COMPLETED",))
    wait_alert(ctx, addr, "endpoint_enabled")
    check(q1(ctx.db, "SELECT axme.enable_agent(%s)", (addr,)) is False, "enabling an enabled agent")
    check(status(ctx, a) == "FAILED", "the 410 intent was re-driven")
    for sql, code in [("SELECT axme.enable_agent('agent://acme/tests/nobody')", "P0002"),
                      ("SELECT axme.enable_agent('bad')", "22023")]:
        try:
            q(ctx.db, sql)
            raise AssertionError("no error: " + sql)
        except psycopg2.Error as e:
            check(e.pgcode == code, "%s: %s" % (sql, e.pgcode))


@test
def test_disable_after_failing(ctx):
    """Failing with no success for axme.disable_after disables the endpoint; enable turns it on."""
    q(ctx.admin, "ALTER SYSTEM SET axme.disable_after = '3s'")
    q(ctx.admin, "SELECT pg_reload_conf()")
    try:
        addr = agent(ctx, "dis", "/dis", {"retry": {"max_attempts": 200, "base_delay_ms": 200, "max_delay_ms": 300}})
        ctx.rx.set_default("/dis", {"status": 500})
        t0 = time.time()
        iid = send(ctx, addr)
        al = wait_alert(ctx, addr, "endpoint_disabled", timeout=30)
        first = min(r["t"] for r in ctx.rx.requests("/dis"))
        check(al[2] - first >= 3.0, "disabled %.2f s after the first failure (want >= 3 s)" % (al[2] - first))
        check(al[3]["reason"] == "failing", "details %r" % al[3])
        n = len(ctx.rx.requests("/dis"))
        time.sleep(1)
        check(len(ctx.rx.requests("/dis")) <= n + 1, "requests while disabled")
        check(status(ctx, iid) == "SUBMITTED", "intent %s" % status(ctx, iid))
        ctx.rx.set_default("/dis", {"status": 200})
        q(ctx.db, "SELECT axme.enable_agent(%s)", (addr,))
        wait_status(ctx, iid, ("COMPLETED",))
        check(time.time() - t0 >= 3.0, "timing")
    finally:
        q(ctx.admin, "ALTER SYSTEM RESET axme.disable_after")
        q(ctx.admin, "SELECT pg_reload_conf()")


@test
def test_paused_agent_gets_nothing(ctx):
    """An agent with paused_at set is handed nothing (not charged) until it is cleared."""
    addr = agent(ctx, "paused", "/paused")
    q(ctx.db, "UPDATE axme.agents SET paused_at = now() WHERE address = %s", (addr,))
    iid = send(ctx, addr)
    time.sleep(1.5)
    check(ctx.rx.requests("/paused") == [] and status(ctx, iid) == "SUBMITTED", "delivered while paused")
    q(ctx.db, "UPDATE axme.agents SET paused_at = NULL WHERE address = %s", (addr,))
    q(ctx.db, "SELECT axme._wake_http()")
    wait_status(ctx, iid, ("COMPLETED",))


@test
def test_replay_dead_letters_ramps(ctx):
    """replay_dead_letters re-drives through the ramp: the first round trip has 1 request in flight."""
    hang = 0.5
    addr = agent(ctx, "replay-ramp", "/rr", {"max_in_flight": 16, "retry": {"max_attempts": 1}})
    ctx.rx.set_default("/rr", {"status": 404})
    ids = [send(ctx, addr, {"n": i}) for i in range(24)]
    for i in ids:
        wait_status(ctx, i, ("FAILED",))
    ctx.rx.set_default("/rr", {"hang": hang, "status": 200})
    t0 = time.time()
    check(q1(ctx.db, "SELECT axme.replay_dead_letters(%s)", (addr,)) == 24, "replayed")
    for i in ids:
        wait_status(ctx, i, ("COMPLETED",), timeout=60)
    after = [r for r in ctx.rx.requests("/rr") if r["t"] >= t0]
    first = min(r["t"] for r in after)
    check(max_conc_until(after, first + hang * 0.9) <= 2, "burst on replay: %d in flight in the first round trip"
          % max_conc_until(after, first + hang * 0.9))


@test
def test_option_validation(ctx):
    """breaker / rate_limit_per_second / client cert options are checked (section 0)."""
    for opts in ({"breaker": {"failure_threshold": 5}}, {"breaker": {"cooldown_ms": 1}},
                 {"breaker": {"x": 1}}, {"rate_limit_per_second": 0}, {"rate_limit_per_second": "5"},
                 {"client_cert_file": "/x.pem"}, {"client_cert_file": "rel.pem", "client_key_file": "/k"}):
        try:
            q(ctx.db, "SELECT axme.register_agent('agent://acme/tests/optv', 'http', %s, %s)",
              (ctx.rx.url("/optv"), json.dumps(opts)))
            raise AssertionError("accepted %r" % opts)
        except psycopg2.Error as e:
            check(e.pgcode == "22023", "%r: %s" % (opts, e.pgcode))


if __name__ == "__main__":
    test_http.main(TESTS)
