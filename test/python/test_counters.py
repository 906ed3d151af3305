"""The monotonic counters of axme.metrics() (axme_*_total): counted at commit only, per agent,
kept across a clean restart, http attempts by outcome; and the example alert rules and the
metrics() text checked with promtool (Debian package prometheus; skipped, saying so, without it).
"""
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest

import psycopg2

from axmetest import AxmeTestCase, connect, intent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "examples", "prometheus", "axme-alerts.yml")
RULE_TESTS = os.path.join(ROOT, "examples", "prometheus", "axme-alerts.test.yml")
A = "agent://myorg/prod/ctr-a"
B = "agent://myorg/prod/ctr-b"
C = "agent://myorg/prod/ctr-c"
D = "agent://myorg/prod/ctr-d"
HOOK = "agent://myorg/prod/ctr-hook"
HOOK4 = "agent://myorg/prod/ctr-hook4"


def wait_until(fn, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class Handler(http.server.BaseHTTPRequestHandler):
    """/ok answers 200, /busy 503 (retried), /gone 404 (dead-lettered at once)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        code = {"/ok": 200, "/busy": 503, "/gone": 404}.get(self.path, 500)
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class CountersTest(AxmeTestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not cls.preloaded:
            raise unittest.SkipTest("the counters live in shared memory: needs shared_preload_libraries = axme")
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            for a in (A, B, C, D):
                cur.execute("SELECT axme.register_agent(%s, 'poll', NULL, %s)",
                            (a, json.dumps({"retry": {"max_attempts": 1, "base_delay_ms": 1}})))
        conn.close()

    def counters(self):
        """{(metric, agent, outcome): value} of the per-agent *_total samples of axme.metrics()
        (not axme_worker_deliveries_total: that one counts per worker process)."""
        out = {}
        for line in self.q1("SELECT axme.metrics()").splitlines():
            m = re.match(r'^(axme_(?:intents|delivery_attempts)\w*_total)\{(.*)\} (\d+)$', line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out[(m.group(1), labels.get("agent"), labels.get("outcome"))] = int(m.group(3))
        return out

    def value(self, metric, agent, outcome=None):
        return self.counters().get(("axme_%s_total" % metric, agent, outcome))

    def test_commit_counts_rollback_does_not(self):
        before_a, before_b = self.value("intents_sent", A), self.value("intents_sent", B)
        self.assertIsNotNone(before_a, "every registered agent has its series, from zero")
        conn = self.connect(autocommit=False)
        for n in range(3):
            self.send(A, n, conn=conn)
        self.send(B, conn=conn)
        # not committed yet: nothing counted, not even by the sending session
        self.assertEqual(self.value("intents_sent", A), before_a)
        conn.commit()
        self.assertEqual(self.value("intents_sent", A), before_a + 3)
        self.assertEqual(self.value("intents_sent", B), before_b + 1, "per agent")
        # a rolled-back transaction counts nothing
        for n in range(5):
            self.send(A, n, conn=conn)
        conn.rollback()
        self.assertEqual(self.value("intents_sent", A), before_a + 3)
        # a rolled-back subtransaction neither; a released one does
        with conn.cursor() as cur:
            self.send(A, conn=conn)
            cur.execute("SAVEPOINT s1")
            self.send(A, conn=conn)
            self.send(B, conn=conn)
            cur.execute("ROLLBACK TO SAVEPOINT s1")
            cur.execute("SAVEPOINT s2")
            self.send(B, conn=conn)
            cur.execute("SAVEPOINT s3")
            self.send(B, conn=conn)
            cur.execute("RELEASE SAVEPOINT s2")
        conn.commit()
        self.assertEqual(self.value("intents_sent", A), before_a + 4)
        self.assertEqual(self.value("intents_sent", B), before_b + 3)
        # a send that fails inside a PL/pgSQL exception block (a subtransaction) counts nothing
        self.q("""DO $$ BEGIN
                    PERFORM axme.send_intent(%s::jsonb);
                    RAISE EXCEPTION 'undo';
                  EXCEPTION WHEN raise_exception THEN NULL; END $$""", (intent(A),))
        self.assertEqual(self.value("intents_sent", A), before_a + 4)

    def test_endings_by_kind(self):
        c0 = self.counters()
        ids = [self.send(D, n) for n in range(4)]
        got = dict(self.poll(D, max_count=10))
        self.assertEqual(set(got), set(ids))
        self.q("SELECT axme.complete(%s, '{}', %s)", (ids[0], got[ids[0]]))
        self.q("SELECT axme.fail(%s, '{\"e\": 1}', false, %s)", (ids[1], got[ids[1]]))
        # budget of one: a retryable failure is a dead letter
        self.q("SELECT axme.fail(%s, '{\"e\": 2}', true, %s)", (ids[2], got[ids[2]]))
        self.q("SELECT axme.resolve(%s, 'CANCELED')", (ids[3],))
        # a rolled-back completion counts nothing
        extra = self.send(D)
        att = dict(self.poll(D))[extra]
        conn = self.connect(autocommit=False)
        self.q("SELECT axme.complete(%s, '{}', %s)", (extra, att), conn)
        conn.rollback()
        c1 = self.counters()
        for metric, n in (("completed", 1), ("failed", 1), ("dead_lettered", 1), ("canceled", 1),
                          ("sent", 5), ("timed_out", 0)):
            key = ("axme_intents_%s_total" % metric, D, None)
            self.assertEqual(c1[key] - c0[key], n, metric)
        # a replayed dead letter dead-lettered again counts again
        self.q("SELECT axme.replay(%s)", (ids[2],))
        att = dict(self.poll_until(D))[ids[2]]
        self.q("SELECT axme.fail(%s, '{}', true, %s)", (ids[2], att))
        self.assertEqual(self.value("intents_dead_lettered", D),
                         c0[("axme_intents_dead_lettered_total", D, None)] + 2)
        # complete_many, the set-based path
        ids = [self.send(D, n) for n in range(3)]
        got = dict(self.poll(D, max_count=10))
        self.q("SELECT axme.complete_many(%s::uuid[], %s::int[])", (ids, [got[i] for i in ids]))
        self.assertEqual(self.value("intents_completed", D), c1[("axme_intents_completed_total", D, None)] + 3)

    def test_flush_then_read_is_the_same(self):
        self.send(A)
        before = self.counters()
        self.q1("SELECT axme._counters_flush()")
        self.assertEqual(self.counters(), before, "table + shared memory reads the same after a copy")
        rows = self.q("""SELECT c.value FROM axme.counters c JOIN axme.agents a USING (agent_id)
                         WHERE a.address = %s AND c.counter = 'sent'""", (A,))
        self.assertEqual(rows, [(before[("axme_intents_sent_total", A, None)],)])
        # a second copy with nothing new writes nothing
        self.assertEqual(self.q1("SELECT axme._counters_flush()"), 0)

    def test_http_attempts_by_outcome(self):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        admin = connect(self.dbname)
        try:
            with admin.cursor() as cur:
                cur.execute("ALTER SYSTEM SET axme.http_allowed_networks = '127.0.0.0/8'")
                cur.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
            base = "http://127.0.0.1:%d" % srv.server_port
            self.q("SELECT axme.register_agent(%s, 'http', %s, %s)",
                   (HOOK, base + "/ok", json.dumps({"retry": {"max_attempts": 2, "base_delay_ms": 10}})))
            self.q("SELECT axme.register_agent(%s, 'http', %s, %s)",
                   (HOOK4, base + "/gone", json.dumps({"retry": {"max_attempts": 3}})))
            c0 = self.counters()
            self.assertEqual(c0[("axme_delivery_attempts_total", HOOK, "http_5xx")], 0,
                             "http agents have every outcome's series from zero")
            ok = [self.send(HOOK, n) for n in range(3)]
            gone = self.send(HOOK4)
            for i in ok + [gone]:
                self.assertTrue(wait_until(lambda: self.status(i) in ("COMPLETED", "FAILED"), 30), i)
            # retried after a 503, then its budget of 2 is spent: two http_5xx, one dead letter
            self.q("UPDATE axme.agents SET endpoint_url = %s WHERE address = %s", (base + "/busy", HOOK))
            busy = self.send(HOOK)
            self.assertTrue(wait_until(lambda: self.status(busy) == "FAILED", 30), self.status(busy))
            c1 = self.counters()

            def d(agent, outcome):
                k = ("axme_delivery_attempts_total", agent, outcome)
                return c1.get(k, 0) - c0.get(k, 0)
            self.assertEqual(d(HOOK, "success"), 3)
            self.assertEqual(d(HOOK, "http_5xx"), 2)
            self.assertEqual(d(HOOK4, "http_4xx"), 1)
            self.assertEqual(d(HOOK4, "success"), 0)
            self.assertEqual(c1[("axme_intents_completed_total", HOOK, None)], 3)
            self.assertEqual(c1[("axme_intents_dead_lettered_total", HOOK, None)], 1)
            self.assertEqual(c1[("axme_intents_dead_lettered_total", HOOK4, None)], 1)
            # the worker's counts are the same rows in axme.delivery_attempts
            self.assertEqual(self.q1("""SELECT count(*) FROM axme.delivery_attempts d JOIN axme.agents a
                                        USING (agent_id) WHERE a.address = %s""", (HOOK,)), 5)
        finally:
            srv.shutdown()
            srv.server_close()
            with admin.cursor() as cur:
                cur.execute("ALTER SYSTEM RESET axme.http_allowed_networks")
                cur.execute("SELECT pg_reload_conf()")
            admin.close()

    @unittest.skipUnless(shutil.which("promtool"), "promtool missing: apt-get install prometheus")
    def test_promtool_checks_metrics_and_rules(self):
        self.send(A)
        text = self.q1("SELECT axme.metrics()")
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        # exit 1: not parseable; exit 3: lint findings.  The one finding allowed is the gauge
        # axme_latency_seconds with its quantile label, kept as it is (existing gauge names and
        # their labels do not change); anything else fails.
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if l.strip() and l != 'axme_latency_seconds non-summary metrics should not have "quantile" label']
        self.assertIn(r.returncode, (0, 3), r.stdout + r.stderr)
        self.assertEqual(problems, [])
        for line in text.splitlines():
            m = re.match(r"^# TYPE (\S+) counter$", line)
            if m:
                self.assertTrue(m.group(1).endswith("_total"), line)
        r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        if os.path.exists(RULE_TESTS):
            r = subprocess.run(["promtool", "test", "rules", RULE_TESTS], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def restart(self):
        """pg_ctl restart -m fast of the test cluster (its own data directory and postmaster.pid;
        never pg_ctlcluster, whose external pid file is shared by every cluster named alike)."""
        pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        pg_ctl = os.path.join(bindir or "/usr/lib/postgresql/15/bin", "pg_ctl")
        datadir = self.q1("SHOW data_directory")
        owner = self.q1("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'template0'")
        started = self.q1("SELECT pg_postmaster_start_time()")
        if not os.access(pg_ctl, os.X_OK) or not os.path.isdir(datadir):
            self.skipTest("pg_ctl or the data directory is not reachable from the test: cannot restart")
        for c in self._conns:
            c.close()
        self._conns = []
        cmd = [pg_ctl, "-D", datadir, "-w", "-t", "120", "-m", "fast",
               "-l", os.path.join(datadir, "axme_test_restart.log"), "restart"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", owner, "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.db = self.connect()
                self.assertNotEqual(self.q1("SELECT pg_postmaster_start_time()"), started, "not restarted")
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def test_survives_clean_restart(self):
        self.send(B)
        self.q1("SELECT axme._counters_flush()")
        self.send(B)            # counted after the last copy: kept by the shutdown's file
        conn = self.connect(autocommit=False)
        self.send(B, conn=conn)  # never committed
        before = self.counters()
        conn.rollback()
        self.restart()
        after = self.counters()
        self.assertEqual(after, before)
        self.send(B)
        self.assertEqual(self.value("intents_sent", B), before[("axme_intents_sent_total", B, None)] + 1)
        self.q1("SELECT axme._counters_flush()")
        self.assertEqual(self.value("intents_sent", B), before[("axme_intents_sent_total", B, None)] + 1)


    def test_drop_extension_forgets_the_counters(self):
        """Agent ids start again at 1 after DROP and CREATE EXTENSION: the new agents' counters
        start from zero, not from what the dropped ones counted."""
        other = self.dbname + "_again"
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s"' % other)
            cur.execute('CREATE DATABASE "%s"' % other)
        try:
            db = connect(other)
            with db.cursor() as cur:
                for _ in range(2):
                    cur.execute("CREATE EXTENSION axme")
                    cur.execute("SELECT axme.register_agent(%s)", (A,))
                    cur.execute("SELECT agent_id FROM axme.agents")
                    self.assertEqual(cur.fetchone()[0], 1)
                    cur.execute("SELECT axme.metrics()")
                    self.assertIn('axme_intents_sent_total{agent="%s",mode="poll"} 0\n' % A, cur.fetchone()[0])
                    cur.execute("SELECT axme.send_intent(%s)", (intent(A),))
                    cur.execute("SELECT axme.send_intent(%s)", (intent(A),))
                    cur.execute("SELECT axme.metrics()")
                    self.assertIn('axme_intents_sent_total{agent="%s",mode="poll"} 2\n' % A, cur.fetchone()[0])
                    cur.execute("DROP EXTENSION axme CASCADE")
            db.close()
        finally:
            with admin.cursor() as cur:
                cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % other)
            admin.close()

    def test_crash_keeps_what_was_copied(self):
        """A crash (kill -9 of a backend: the postmaster resets shared memory) loses only what
        was counted since the last copy, under a new epoch; counting goes on from there."""
        self.send(C)
        self.q1("SELECT axme._counters_flush()")
        copied = self.value("intents_sent", C)
        epoch = self.q1("SELECT epoch FROM axme._counters() WHERE agent_id IS NULL")
        self.send(C)            # not copied: lost in the crash
        victim = self.connect()
        pid = self.q1("SELECT pg_backend_pid()", conn=victim)
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            self.skipTest("cannot signal the server's processes as this user")
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass
        self._conns = []
        deadline = time.monotonic() + 60
        while True:
            try:
                self.db = self.connect()
                if self.q1("SELECT epoch FROM axme._counters() WHERE agent_id IS NULL") != epoch:
                    break
                self.db.close()
            except psycopg2.Error:
                pass
            self.assertLess(time.monotonic(), deadline, "no crash reset within 60 s of the kill")
            time.sleep(0.2)
        self.assertEqual(self.value("intents_sent", C), copied)
        self.send(C)
        self.assertEqual(self.value("intents_sent", C), copied + 1)
        self.q1("SELECT axme._counters_flush()")
        self.assertEqual(self.value("intents_sent", C), copied + 1)
        self.assertEqual(self.q1("""SELECT c.base FROM axme.counters c JOIN axme.agents a USING (agent_id)
                                    WHERE a.address = %s AND c.counter = 'sent'""", (C,)), copied)


if __name__ == "__main__":
    unittest.main()
