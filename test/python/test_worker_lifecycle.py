"""Worker lifecycle beyond test/http (which covers pg_stat_activity, restarts of the http worker,
two databases, DROP DATABASE/EXTENSION during deliveries): a database with an axme older than the
library gets a worker that waits, visibly, until ALTER EXTENSION axme UPDATE, then serves; DROP
EXTENSION and DROP DATABASE while it waits do not hang; a database without axme gets no worker;
pg_terminate_backend gives a new worker with a new axme.worker_status row."""
import time
import unittest

from axmetest import connect, intent

HOOK = "agent://myorg/prod/life-hook"


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    rows = q(conn, sql, args)
    return rows[0][0] if rows else None


def wait_until(fn, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


class WorkerLifecycleTest(unittest.TestCase):
    DB = "axme_lifecycle"

    @classmethod
    def setUpClass(cls):
        admin = connect("postgres")
        if "axme" not in q1(admin, "SHOW shared_preload_libraries"):
            admin.close()
            raise unittest.SkipTest("needs shared_preload_libraries = axme (the worker)")
        admin.close()

    def setUp(self):
        self.admin = connect("postgres")
        q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.DB)
        q(self.admin, 'CREATE DATABASE "%s"' % self.DB)
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.DB)
        self.admin.close()

    def db(self):
        c = connect(self.DB)
        self.conns.append(c)
        return c

    def workers(self):
        """[(pid,)] of the axme delivery workers of the test database (pg_stat_activity)."""
        return q(self.admin, """SELECT pid FROM pg_stat_activity
                                WHERE backend_type = 'axme delivery worker' AND datname = %s""", (self.DB,))

    def status(self, conn):
        return q(conn, "SELECT pid, state FROM axme.worker_status WHERE database = current_database()")

    def old_version_waiting(self):
        c = self.db()
        q(c, "CREATE EXTENSION axme VERSION '0.2.0'")
        # the commit of CREATE EXTENSION starts a worker, which finds 0.2.0 and waits
        self.assertTrue(wait_until(self.workers, 15), "no worker for a database with axme 0.2.0")
        return c

    def test_waits_for_alter_extension_update_then_serves(self):
        c = self.old_version_waiting()
        q(c, "SELECT axme.register_agent(%s, 'http', 'http://127.0.0.1:9/', '{\"retry\": {\"max_attempts\": 1}}')",
          (HOOK,))
        iid = q1(c, "SELECT axme.send_intent(%s)", (intent(HOOK),))
        time.sleep(3)
        self.assertEqual(q1(c, "SELECT status FROM axme.intents WHERE intent_id = %s", (iid,)), "SUBMITTED",
                         "a worker served a database whose axme is older than the library")
        self.assertEqual(q1(c, "SELECT count(*) FROM axme.delivery_attempts"), 0)
        self.assertEqual(len(self.workers()), 1)
        q(c, "ALTER EXTENSION axme UPDATE")
        st = wait_until(lambda: self.status(c), 10)
        self.assertEqual(len(st), 1, st)
        self.assertTrue(wait_until(lambda: q1(c, "SELECT status FROM axme.intents WHERE intent_id = %s",
                                              (iid,)) == "FAILED", 30), "not delivered after the update")
        self.assertEqual(q1(c, "SELECT count(*) FROM axme.delivery_attempts WHERE intent_id = %s", (iid,)), 1)
        self.assertFalse(self.status(c)[0][1].startswith("waiting"), self.status(c))

    def test_waiting_state_in_worker_status(self):
        # worker_status is a 0.3.0 view: read it from another database that has the current version
        other = "axme_lifecycle_observer"
        q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % other)
        q(self.admin, 'CREATE DATABASE "%s"' % other)
        obs = connect(other)
        try:
            q(obs, "CREATE EXTENSION axme")
            self.old_version_waiting()
            st = wait_until(lambda: q(obs, "SELECT state FROM axme.worker_status WHERE database = %s"
                                           " AND state LIKE 'waiting for ALTER EXTENSION%%'", (self.DB,)), 15)
            self.assertTrue(st, q(obs, "SELECT * FROM axme.worker_status"))
            self.assertIn("installed 0.2.0", st[0][0])
        finally:
            obs.close()
            q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % other)

    def test_drop_extension_while_waiting(self):
        c = self.old_version_waiting()
        t0 = time.monotonic()
        q(c, "DROP EXTENSION axme")
        self.assertLess(time.monotonic() - t0, 30)
        self.assertTrue(wait_until(lambda: not self.workers(), 15), "the worker stayed after DROP EXTENSION")

    def test_drop_database_while_waiting(self):
        c = self.old_version_waiting()
        c.close()
        self.conns.remove(c)
        t0 = time.monotonic()
        q(self.admin, 'DROP DATABASE "%s"' % self.DB)      # no FORCE: the worker must leave by itself
        self.assertLess(time.monotonic() - t0, 30)

    def test_database_without_axme_gets_no_worker(self):
        time.sleep(3)        # a probe may come and go right after CREATE DATABASE
        for _ in range(10):
            self.assertEqual(self.workers(), [], "a worker serves a database without axme")
            time.sleep(0.2)

    def test_terminated_worker_is_replaced(self):
        c = self.db()
        q(c, "CREATE EXTENSION axme")
        st = wait_until(lambda: self.status(c), 15)
        self.assertEqual(len(st), 1, st)
        old = st[0][0]
        q(self.admin, "SELECT pg_terminate_backend(%s)", (old,))
        new = wait_until(lambda: [r for r in self.status(c) if r[0] != old], 20)
        self.assertTrue(new, "no new worker after pg_terminate_backend")
        self.assertEqual([r[0] for r in self.status(c)], [new[0][0]], "the old worker's row stayed")
        self.assertEqual([r[0] for r in self.workers()], [new[0][0]])


if __name__ == "__main__":
    unittest.main()
