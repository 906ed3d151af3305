"""wait_for across sessions: woken by another session's commit, NULL on timeout, cancelled by
statement_timeout and pg_cancel_backend.  The wake latency is printed, not asserted tightly."""
import statistics
import sys
import time
import unittest

import psycopg2.errors

from axmetest import AxmeTestCase, Waiter

AGENT = "agent://myorg/prod/waited-on"


class WaitForTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from axmetest import connect
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT axme.register_agent(%s)", (AGENT,))
        conn.close()

    def start_waiter(self, iid, timeout="30 seconds", setup_sql=None):
        w = Waiter(self.dbname, iid, timeout, setup_sql)
        w.start()
        self.assertTrue(w.wait_until_waiting(self.db), "the waiter never started waiting")
        return w

    def finish(self, w, within=20.0):
        w.join(within)
        self.assertFalse(w.is_alive(), "wait_for did not return")
        if w.error is not None:
            raise w.error
        return w.result

    def test_wakes_at_commit_of_complete_and_returns_the_document(self):
        latencies = []
        for n in range(20):
            iid = self.send(AGENT, n)
            # (a session's first get_intent compiles the PL/pgSQL; do it before, not in, the wake-up)
            w = self.start_waiter(iid, setup_sql="SELECT axme.get_intent('%s')" % iid)
            worker = self.connect(autocommit=False)
            self.q("SELECT axme.complete(%s, %s)", (iid, '{"total": %d}' % n), conn=worker)
            time.sleep(0.05)
            self.assertTrue(w.is_alive(), "wait_for returned before the commit")
            before_commit = time.monotonic()
            worker.commit()
            doc = self.finish(w)
            self.assertGreaterEqual(w.returned_at, before_commit)
            latencies.append(w.returned_at - before_commit)
            self.assertEqual(doc, self.doc(iid))
            self.assertEqual((doc["status"], doc["result"], doc["intent_id"]), ("COMPLETED", {"total": n}, iid))
        ms = sorted(x * 1000 for x in latencies)
        print("\n    wait_for wake latency (commit -> return, %s, 20 runs): p50 %.2f ms, max %.2f ms"
              % ("preloaded" if self.preloaded else "not preloaded: 50 ms re-check",
                 statistics.median(ms), ms[-1]), file=sys.stderr)
        # generous: far below the 1 s periodic re-check the wake-up must not rely on
        self.assertLess(statistics.median(ms), 500 if self.preloaded else 1000)

    def test_wakes_for_every_terminal_status(self):
        cases = [
            ("fail", "SELECT axme.fail(%s, '{\"code\": \"no\"}')", "FAILED"),
            ("cancel", "SELECT axme.resolve(%s, 'CANCELED')", "CANCELED"),
            ("resolve-completed", "SELECT axme.resolve(%s, 'COMPLETED', '{\"by\": \"hand\"}')", "COMPLETED"),
            ("complete_many", "SELECT axme.complete_many(ARRAY[%s]::uuid[])", "COMPLETED"),
        ]
        for name, sql, status in cases:
            with self.subTest(name):
                iid = self.send(AGENT)
                w = self.start_waiter(iid)
                self.q(sql, (iid,))
                self.assertEqual(self.finish(w)["status"], status)

    def test_wakes_when_poll_dead_letters_an_expired_intent(self):
        agent = "agent://myorg/prod/waited-expiring"
        self.register(agent, "poll", {"retry": {"max_attempts": 1}})
        iid = self.send(agent)
        self.assertEqual(self.poll(agent, lease="1 second"), [(iid, 1)])
        w = self.start_waiter(iid)
        time.sleep(1.3)
        self.assertEqual(self.poll(agent), [])
        doc = self.finish(w)
        self.assertEqual((doc["status"], doc["dead_letter_reason"]), ("FAILED", "exhausted"))

    def test_wakes_only_the_waiter_of_that_intent(self):
        iids = [self.send(AGENT, n) for n in range(6)]
        waiters = [self.start_waiter(i) for i in iids]
        self.q("SELECT axme.complete(%s)", (iids[0],))
        self.assertEqual(self.finish(waiters[0])["status"], "COMPLETED")
        time.sleep(0.3)
        self.assertTrue(all(w.is_alive() for w in waiters[1:]), "other waiters returned")
        self.q("SELECT axme.complete_many(%s::uuid[])", (iids[1:],))
        for w in waiters[1:]:
            self.assertEqual(self.finish(w)["status"], "COMPLETED")

    def test_rolled_back_completion_wakes_nobody(self):
        iid = self.send(AGENT)
        w = self.start_waiter(iid, "2 seconds")
        worker = self.connect(autocommit=False)
        self.q("SELECT axme.complete(%s)", (iid,), conn=worker)
        worker.rollback()
        self.assertIsNone(self.finish(w))
        self.assertEqual(self.status(iid), "SUBMITTED")

    def test_timeout_returns_null(self):
        iid = self.send(AGENT)
        start = time.monotonic()
        self.assertIsNone(self.q1("SELECT axme.wait_for(%s, '300 milliseconds')", (iid,)))
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        self.assertIsNone(self.q1("SELECT axme.wait_for(%s, '0')", (iid,)))

    def test_already_terminal_returns_at_once(self):
        iid = self.send(AGENT)
        self.q("SELECT axme.complete(%s, '{\"x\": 1}')", (iid,))
        start = time.monotonic()
        self.assertEqual(self.q1("SELECT axme.wait_for(%s, '1 hour')", (iid,))["result"], {"x": 1})
        self.assertLess(time.monotonic() - start, 30)

    def test_statement_timeout_cancels(self):
        iid = self.send(AGENT)
        self.q("SET statement_timeout = '300ms'")
        start = time.monotonic()
        with self.assertRaises(psycopg2.errors.QueryCanceled):
            self.q("SELECT axme.wait_for(%s, '1 hour')", (iid,))
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertLess(elapsed, 60)
        self.q("RESET statement_timeout")
        self.assertEqual(self.q1("SELECT 1"), 1)  # the session is usable afterwards

    def test_cancel_from_another_session(self):
        iid = self.send(AGENT)
        w = self.start_waiter(iid, "1 hour")
        self.assertTrue(self.q1("SELECT pg_cancel_backend(%s)", (w.pid,)))
        w.join(60)
        self.assertFalse(w.is_alive())
        self.assertIsInstance(w.error, psycopg2.errors.QueryCanceled)

    def test_replayed_intent_is_waited_for_again(self):
        agent = "agent://myorg/prod/waited-replay"
        self.register(agent, "poll", {"retry": {"max_attempts": 1}})
        iid = self.send(agent)
        self.poll(agent)
        self.q("SELECT axme.fail(%s, '{}', true, 1)", (iid,))
        self.assertEqual(self.q1("SELECT axme.wait_for(%s, '0')", (iid,))["status"], "FAILED")
        self.q("SELECT axme.replay(%s)", (iid,))
        w = self.start_waiter(iid)
        time.sleep(0.2)
        self.assertTrue(w.is_alive())
        self.assertEqual(self.poll(agent), [(iid, 2)])
        self.q("SELECT axme.complete(%s, '{}', 2)", (iid,))
        self.assertEqual(self.finish(w)["status"], "COMPLETED")


if __name__ == "__main__":
    unittest.main()
