"""Operations with the worker running (preloaded): alerts raised once per crossing by the worker's
periodic check and NOTIFYed on axme_alerts, axme.worker_status from shared memory, cleanup run by
the worker every axme.cleanup_interval (a SIGHUP setting: changed with pg_reload_conf)."""
import json
import time
import unittest

from axmetest import AxmeTestCase, connect, collect_notifies, intent

DEAD = "agent://myorg/prod/ops-dead"
RATE = "agent://myorg/prod/ops-rate"
HOOK = "agent://myorg/prod/ops-hook"
CLEAN = "agent://myorg/prod/ops-clean"


def wait_until(fn, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class OpsTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not cls.preloaded:
            raise unittest.SkipTest("needs shared_preload_libraries = axme (the worker)")

    def set_system(self, **settings):
        admin = connect("postgres")
        with admin.cursor() as cur:
            for k, v in settings.items():
                if v is None:
                    cur.execute("ALTER SYSTEM RESET axme.%s" % k)
                else:
                    cur.execute("ALTER SYSTEM SET axme.%s = %%s" % k, (v,))
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        time.sleep(1.0)        # the worker reads the file at its next turn

    def alerts(self, agent, kind):
        return self.q("SELECT id, details FROM axme.alerts WHERE agent = %s AND kind = %s ORDER BY id", (agent, kind))

    def dead_letters(self, agent, n):
        for k in range(n):
            self.send(agent, k, max_delivery_attempts=1)
        for iid, attempt in self.poll(agent, n):
            self.q("SELECT axme.fail(%s, '{\"why\": \"boom\"}', true, %s)", (iid, attempt))

    def test_dead_letter_threshold_once_per_crossing(self):
        self.set_system(alert_dead_letter_threshold=3)
        try:
            self.q("SET axme.alert_dead_letter_threshold = 3")
            listener = self.connect()
            self.q("LISTEN axme_alerts", conn=listener)
            self.register(DEAD)
            self.dead_letters(DEAD, 2)
            self.q("SELECT axme._check_alerts()")
            self.assertEqual(self.alerts(DEAD, "dead_letter_threshold"), [], "alert below the threshold")
            self.dead_letters(DEAD, 1)
            # the worker's own periodic check raises it (about every 10 s)
            got = wait_until(lambda: self.alerts(DEAD, "dead_letter_threshold"), 40)
            self.assertEqual(len(got), 1, got)
            self.assertEqual(got[0][1]["dead_letters"], 3)
            notes = [json.loads(n.payload) for n in collect_notifies(listener, 1, timeout=5)]
            mine = [n for n in notes if n["agent"] == DEAD]
            self.assertEqual(mine, [{"id": got[0][0], "agent": DEAD, "kind": "dead_letter_threshold"}])
            # more dead letters, more checks: still one alert
            self.dead_letters(DEAD, 2)
            for _ in range(3):
                self.q("SELECT axme._check_alerts()")
            self.assertEqual(len(self.alerts(DEAD, "dead_letter_threshold")), 1)
            # below the threshold re-arms it; the next crossing alerts again
            self.assertEqual(self.q1("SELECT axme.purge_dead_letters(%s)", (DEAD,)), 5)
            self.q("SELECT axme._check_alerts()")
            self.dead_letters(DEAD, 3)
            self.q("SELECT axme._check_alerts()")
            self.assertEqual(len(self.alerts(DEAD, "dead_letter_threshold")), 2)
        finally:
            self.set_system(alert_dead_letter_threshold=None)

    def test_success_rate_low_then_recovered(self):
        self.q("SET axme.alert_success_rate = 0.5")
        self.set_system(alert_success_rate=0.5)
        try:
            self.register(RATE)
            for k in range(10):
                self.send(RATE, k)
            got = self.poll(RATE, 10)
            self.assertEqual(len(got), 10)
            for n, (iid, attempt) in enumerate(got):
                if n < 2:
                    self.q("SELECT axme.complete(%s, '{}', %s)", (iid, attempt))
                else:
                    self.q("SELECT axme.fail(%s, '{\"why\": \"no\"}', false, %s)", (iid, attempt))
            self.q("SELECT axme._check_alerts()")
            self.q("SELECT axme._check_alerts()")
            low = self.alerts(RATE, "success_rate_low")
            self.assertEqual(len(low), 1, low)
            self.assertEqual(low[0][1]["outcomes"], 10)
            self.assertAlmostEqual(float(low[0][1]["success_rate"]), 0.2)
            self.assertEqual(self.alerts(RATE, "agent_recovered"), [])
            for k in range(40):
                self.send(RATE, 100 + k)
            for iid, attempt in self.poll(RATE, 40):
                self.q("SELECT axme.complete(%s, '{}', %s)", (iid, attempt))
            self.q("SELECT axme._check_alerts()")
            self.q("SELECT axme._check_alerts()")
            rec = self.alerts(RATE, "agent_recovered")
            self.assertEqual(len(rec), 1, rec)
            self.assertGreaterEqual(float(rec[0][1]["success_rate"]), 0.5)
            self.assertEqual(len(self.alerts(RATE, "success_rate_low")), 1)
        finally:
            self.set_system(alert_success_rate=None)

    def test_worker_status(self):
        row = wait_until(lambda: self.q("""SELECT kind, pid, state, in_flight, started_at <= now(), deliveries_total
                                           FROM axme.worker_status WHERE database = current_database()"""), 15)
        self.assertEqual(len(row), 1, row)
        kind, pid, state, in_flight, started, total0 = row[0]
        self.assertEqual(kind, "delivery worker")
        self.assertTrue(started)
        self.assertEqual(self.q1("""SELECT backend_type FROM pg_stat_activity WHERE pid = %s
                                    AND datname = current_database()""", (pid,)), "axme delivery worker")
        self.assertIn(state, ("idle", "delivering", "checking alerts", "cleanup"))
        # one delivery (refused or blocked: nothing listens on port 9) is one outcome recorded
        self.q("SELECT axme.register_agent(%s, 'http', 'http://127.0.0.1:9/', '{\"retry\": {\"max_attempts\": 1}}')",
               (HOOK,))
        iid = self.send(HOOK)
        self.assertTrue(wait_until(lambda: self.status(iid) == "FAILED", 30), self.status(iid))
        total = wait_until(lambda: self.q1("""SELECT deliveries_total FROM axme.worker_status
                                               WHERE database = current_database() AND deliveries_total > %s""",
                                            (total0,)), 10)
        self.assertEqual(total, total0 + 1)
        rate = self.q1("SELECT deliveries_per_second FROM axme.worker_status WHERE database = current_database()")
        self.assertGreaterEqual(rate, 0)
        metrics = self.q1("SELECT axme.metrics()")
        self.assertIn('axme_worker_deliveries_total{kind="delivery worker",pid="%d"} %d' % (pid, total), metrics)

    def test_worker_cleans_up_every_interval(self):
        self.register(CLEAN)
        keyed = self.send(CLEAN, 1, key="ops-clean-key-1")
        live = self.send(CLEAN, 2)
        self.q("SELECT axme.resolve(%s, 'COMPLETED')", (keyed,))
        time.sleep(1.5)
        self.assertEqual(self.status(keyed), "COMPLETED", "cleaned up at the default retention")
        # SIGHUP: the new interval and retention apply to the running worker
        self.set_system(cleanup_interval="1s", retention_terminal="1s")
        try:
            gone = wait_until(lambda: not self.q("SELECT 1 FROM axme.intents WHERE intent_id = %s", (keyed,)), 20)
            self.assertTrue(gone, "the worker did not clean up")
            self.assertEqual(self.q1("SELECT count(*) FROM axme.events WHERE intent_id = %s", (keyed,)), 0)
            self.assertEqual(self.status(live), "SUBMITTED")
            self.assertEqual(self.send(CLEAN, 1, key="ops-clean-key-1"), keyed)
        finally:
            self.set_system(cleanup_interval=None, retention_terminal=None)


if __name__ == "__main__":
    unittest.main()
