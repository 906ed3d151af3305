"""Internal delivery: SQL handlers run by the internal worker.  Needs shared_preload_libraries=axme
(handlers run in a background worker); skipped without it.
Timing rule of the house: lower bounds strict, upper bounds generous."""
import json
import time
import unittest

from axmetest import AxmeTestCase, connect

OK = "agent://myorg/prod/int-ok"
FAILING = "agent://myorg/prod/int-failing"
SLOW = "agent://myorg/prod/int-slow"
HUGE = "agent://myorg/prod/int-huge"
ROLE = "agent://myorg/prod/int-role"
PAUSED = "agent://myorg/prod/int-paused"
POLL = "agent://myorg/prod/int-poll"
CLOSER = "agent://myorg/prod/int-closer"

SETUP = r"""
CREATE SCHEMA ih;
CREATE TABLE ih.log (intent_id uuid, run_as text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION ih.ok(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ih.log (intent_id, run_as) VALUES ((intent->>'intent_id')::uuid, current_user);
    RETURN jsonb_build_object('total', (intent->'payload'->>'qty')::numeric * (intent->'payload'->>'price')::numeric,
                              'run_as', current_user, 'search_path', current_setting('search_path'),
                              'status_seen', intent->>'status', 'attempt', intent->'attempt');
END $$;
CREATE FUNCTION ih.failing(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ih.log (intent_id, run_as) VALUES ((intent->>'intent_id')::uuid, current_user);
    RAISE EXCEPTION 'no stock for %', intent->'payload'->>'sku' USING ERRCODE = 'P0001';
END $$;
CREATE FUNCTION ih.slow(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ih.log (intent_id, run_as) VALUES ((intent->>'intent_id')::uuid, current_user);
    PERFORM pg_sleep((intent->'payload'->>'sleep')::float8);
    RETURN '{"slept": true}';
END $$;
CREATE FUNCTION ih.huge(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', repeat('é', 2000000);
END $$;
-- completes the intent named in the payload, without its receipt (axme's own worker: exempt)
CREATE FUNCTION ih.closer(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM axme.complete((intent->'payload'->>'target')::uuid, '{"by": "handler"}');
    RETURN '{"closed": true}';
END $$;
CREATE ROLE ih_runner;
GRANT USAGE ON SCHEMA ih TO ih_runner;
GRANT INSERT ON ih.log TO ih_runner;
"""


class InternalTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not cls.preloaded:
            return
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("DROP ROLE IF EXISTS ih_runner")
            cur.execute(SETUP)
            for addr, opts in [
                (OK, {"handler": "ih.ok"}),
                (FAILING, {"handler": "ih.failing", "retry": {"max_attempts": 3, "base_delay_ms": 200}}),
                (SLOW, {"handler": "ih.slow", "timeout_ms": 500, "retry": {"max_attempts": 1}}),
                (HUGE, {"handler": "ih.huge", "retry": {"max_attempts": 1}}),
                (ROLE, {"handler": "ih.ok", "db_role": "ih_runner"}),
                (PAUSED, {"handler": "ih.ok"}),
                (CLOSER, {"handler": "ih.closer", "retry": {"max_attempts": 1}}),
            ]:
                cur.execute("SELECT axme.register_agent(%s, 'internal', NULL, %s)", (addr, json.dumps(opts)))
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
        conn.close()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        if cls.preloaded:
            admin = connect("postgres")
            with admin.cursor() as cur:
                cur.execute("DROP ROLE IF EXISTS ih_runner")
            admin.close()

    def setUp(self):
        super().setUp()
        if not self.preloaded:
            self.skipTest("handlers run in the internal worker: needs shared_preload_libraries=axme")

    def wait_terminal(self, iid, timeout=30):
        doc = self.q1("SELECT axme.wait_for(%s, %s * interval '1 second')", (iid, timeout))
        self.assertIsNotNone(doc, "not terminal after %s s: %s" % (timeout, self.doc(iid)))
        return doc

    def test_success(self):
        iid = self.send(OK, payload={"qty": 3, "price": 2.5})
        doc = self.wait_terminal(iid)
        self.assertEqual(doc["status"], "COMPLETED")
        self.assertEqual(doc["result"]["total"], 7.5)
        self.assertEqual(doc["result"]["run_as"], self.q1("SELECT current_user"))  # the registering role
        self.assertEqual(doc["result"]["search_path"], "pg_catalog, pg_temp")
        self.assertEqual(doc["result"]["status_seen"], "DELIVERED")
        self.assertEqual(doc["result"]["attempt"], 1)
        self.assertEqual(self.events(iid), ["intent.created", "intent.submitted", "intent.delivered",
                                            "intent.completed"])
        self.assertEqual(self.q1("SELECT count(*) FROM ih.log WHERE intent_id = %s", (iid,)), 1)
        # the handler worker names itself as the actor of what it did
        self.assertEqual(self.q("SELECT event_type, actor FROM axme.events WHERE intent_id = %s AND seq > 2 ORDER BY seq",
                                (iid,)),
                         [("intent.delivered", "axme:handler-worker"), ("intent.completed", "axme:handler-worker")])

    def test_listed_in_worker_status(self):
        iid = self.send(OK, payload={"qty": 1, "price": 1})
        self.assertEqual(self.wait_terminal(iid)["status"], "COMPLETED")
        rows = self.q("""SELECT w.pid, w.state, w.deliveries_total, a.backend_type
                         FROM axme.worker_status w JOIN pg_stat_activity a USING (pid)
                         WHERE w.kind = 'handler worker' AND w.database = current_database()""")
        self.assertEqual(len(rows), 1, rows)
        pid, state, total, backend_type = rows[0]
        self.assertEqual(backend_type, "axme handler worker")
        self.assertIn(state, ("idle", "handling"))
        self.assertGreaterEqual(total, 1, "every handler run is an outcome recorded")

    def test_runs_as_db_role(self):
        iid = self.send(ROLE, payload={"qty": 1, "price": 1})
        doc = self.wait_terminal(iid)
        self.assertEqual(doc["status"], "COMPLETED", doc)
        self.assertEqual(doc["result"]["run_as"], "ih_runner")

    def test_handler_is_exempt_from_receipts(self):
        """axme.require_receipts binds receivers, not axme's own workers: a handler may complete a
        polled intent without its receipt, which a session may not."""
        self.register("agent://myorg/prod/int-rcpt", "poll")
        target = self.send("agent://myorg/prod/int-rcpt")
        self.assertEqual(self.poll("agent://myorg/prod/int-rcpt"), [(target, 1)])
        self.assertSQLState("55000", "SELECT axme.complete(%s)", (target,))
        iid = self.send(CLOSER, payload={"target": target})
        doc = self.wait_terminal(iid)
        self.assertEqual((doc["status"], doc["result"]), ("COMPLETED", {"closed": True}), doc)
        self.assertEqual((self.doc(target)["status"], self.doc(target)["result"]), ("COMPLETED", {"by": "handler"}))

    def test_exception_retries_then_dead_letters(self):
        iid = self.send(FAILING, payload={"sku": "X1"})
        t0 = time.monotonic()
        doc = self.wait_terminal(iid)
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)  # at least the backoffs (jittered)
        self.assertEqual(doc["status"], "FAILED")
        self.assertEqual(doc["dead_letter_reason"], "handler_error")
        self.assertEqual(doc["error"]["sqlstate"], "P0001")
        self.assertEqual(doc["error"]["message"], "no stock for X1")
        self.assertEqual(doc["attempt"], 3)
        ev = self.events(iid)
        self.assertEqual(ev.count("intent.delivered"), 3)
        self.assertEqual(ev.count("intent.delivery_failed"), 2)
        self.assertEqual(ev[-1], "intent.dead_lettered")
        # each run's work was rolled back with it
        self.assertEqual(self.q1("SELECT count(*) FROM ih.log WHERE intent_id = %s", (iid,)), 0)
        self.assertEqual(self.q1("SELECT reason FROM axme.dead_letters WHERE intent_id = %s", (iid,)), "handler_error")

    def test_timeout(self):
        iid = self.send(SLOW, payload={"sleep": 30})
        t0 = time.monotonic()
        doc = self.wait_terminal(iid)
        took = time.monotonic() - t0
        self.assertGreaterEqual(took, 0.5)
        self.assertLess(took, 20)
        self.assertEqual(doc["status"], "FAILED")
        self.assertEqual(doc["dead_letter_reason"], "handler_error")
        self.assertEqual(doc["error"]["reason"], "timeout")
        self.assertEqual(doc["error"]["sqlstate"], "57014")
        # and the worker goes on: a quick run of the same handler completes
        iid2 = self.send(SLOW, payload={"sleep": 0})
        self.assertEqual(self.wait_terminal(iid2)["status"], "COMPLETED")

    def test_huge_error_text_is_cut(self):
        iid = self.send(HUGE)
        doc = self.wait_terminal(iid)
        self.assertEqual(doc["status"], "FAILED")
        msg = doc["error"]["message"]
        self.assertLess(len(msg.encode()), 2100)
        self.assertTrue(msg.startswith("éé"), msg[:20])
        self.assertIn("bytes cut", msg)
        iid2 = self.send(OK, payload={"qty": 1, "price": 1})
        self.assertEqual(self.wait_terminal(iid2)["status"], "COMPLETED")

    def test_superuser_db_role_refused_at_run_time(self):
        """Registration refuses a superuser db_role; a role made superuser afterwards is refused
        when the handler would run: dead-lettered at once, the handler not run."""
        self.q("DROP ROLE IF EXISTS ih_later_super")
        self.q("CREATE ROLE ih_later_super")
        try:
            addr = "agent://myorg/prod/int-super"
            self.q("SELECT axme.register_agent(%s, 'internal', NULL, %s)",
                   (addr, json.dumps({"handler": "ih.ok", "db_role": "ih_later_super"})))
            self.q("SELECT axme.pause_agent(%s)", (addr,)) if self.q1(
                "SELECT to_regprocedure('axme.pause_agent(text)') IS NOT NULL") else \
                self.q("UPDATE axme.agents SET paused_at = now() WHERE address = %s", (addr,))
            iid = self.send(addr, payload={"qty": 1, "price": 1})
            self.q("ALTER ROLE ih_later_super SUPERUSER")
            self.q("UPDATE axme.agents SET paused_at = NULL WHERE address = %s", (addr,))
            self.q("SELECT axme._wake_internal()")
            doc = self.wait_terminal(iid)
            self.assertEqual(doc["status"], "FAILED")
            self.assertEqual(doc["dead_letter_reason"], "handler_error")
            self.assertIn("superuser", doc["error"]["message"])
            self.assertEqual(doc["attempt"], 1)
            self.assertEqual(self.q1("SELECT count(*) FROM ih.log WHERE intent_id = %s", (iid,)), 0)
            self.assertSQLState("42501", "SELECT axme.register_agent(%s, 'internal', NULL, %s)",
                                (addr, json.dumps({"handler": "ih.ok", "db_role": "ih_later_super"})))
        finally:
            self.q("DELETE FROM axme.agents WHERE address = 'agent://myorg/prod/int-super'")
            self.q("DROP ROLE IF EXISTS ih_later_super")

    def test_paused_agent_is_skipped(self):
        self.q("UPDATE axme.agents SET paused_at = now() WHERE address = %s", (PAUSED,))
        iid = self.send(PAUSED, payload={"qty": 1, "price": 1})
        time.sleep(2.0)
        self.assertEqual(self.status(iid), "SUBMITTED")
        self.assertEqual(self.doc(iid)["attempt"], 0)
        self.q("UPDATE axme.agents SET paused_at = NULL WHERE address = %s", (PAUSED,))
        self.q("SELECT axme._wake_internal()")
        self.assertEqual(self.wait_terminal(iid)["status"], "COMPLETED")

    def test_slow_handler_does_not_delay_webhooks(self):
        from test_timers import Receiver
        rcv = Receiver(hang=False)
        rcv.start()
        conn = connect(self.dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET axme.http_allowed_networks = '127.0.0.0/8'")
                cur.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
            self.q("SELECT axme.register_agent(%s, 'http', %s, '{}')",
                   ("agent://myorg/prod/int-hook", "http://127.0.0.1:%d/hook" % rcv.port))
            self.q("SELECT axme.register_agent(%s, 'internal', NULL, %s)",
                   ("agent://myorg/prod/int-slow6", json.dumps({"handler": "ih.slow", "timeout_ms": 8000,
                                                                "retry": {"max_attempts": 1}})))
            slow = self.send("agent://myorg/prod/int-slow6", payload={"sleep": 30})
            t0 = time.monotonic()
            while self.status(slow) != "DELIVERED" and time.monotonic() - t0 < 15:
                time.sleep(0.05)
            self.assertEqual(self.status(slow), "DELIVERED", "the slow handler did not start")
            hook = self.send("agent://myorg/prod/int-hook")
            doc = self.wait_terminal(hook, 10)
            self.assertEqual(doc["status"], "COMPLETED", doc)
            self.assertEqual(self.status(slow), "DELIVERED", "the webhook waited for the handler")
            self.wait_terminal(slow)
        finally:
            rcv.close()
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM RESET axme.http_allowed_networks")
                cur.execute("SELECT pg_reload_conf()")
            conn.close()

    def test_slow_handler_does_not_delay_timers(self):
        slow = self.send(SLOW, payload={"sleep": 30})   # times out after 0.5 s, then dead-lettered
        self.q("SELECT axme.register_agent(%s, 'internal', NULL, %s)",
               ("agent://myorg/prod/int-slow5", json.dumps({"handler": "ih.slow", "timeout_ms": 5000,
                                                            "retry": {"max_attempts": 1}})))
        slow5 = self.send("agent://myorg/prod/int-slow5", payload={"sleep": 30})
        t0 = time.monotonic()
        while self.status(slow5) != "DELIVERED" and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        self.assertEqual(self.status(slow5), "DELIVERED", "the 5 s handler did not start")
        iid = self.q1("""SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.job.v1',
                           'to_agent', %s, 'payload', '{}'::jsonb,
                           'deadline_at', clock_timestamp() + interval '1 second'))""", (POLL,))
        doc = self.wait_terminal(iid, 10)
        self.assertEqual(doc["status"], "TIMED_OUT")
        late = self.q1("""SELECT extract(epoch FROM e.at - i.deadline_at)::float8 FROM axme.intents i
                          JOIN axme.events e USING (intent_id)
                          WHERE intent_id = %s AND event_type = 'intent.timed_out'""", (iid,))
        self.assertGreaterEqual(late, 0.0)
        self.assertEqual(self.status(slow5), "DELIVERED", "the timer waited for the handler")
        self.wait_terminal(slow5)
        self.wait_terminal(slow)


if __name__ == "__main__":
    unittest.main()
