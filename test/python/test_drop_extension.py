"""DROP EXTENSION while the worker is busy in the same database never fails on a deadlock.

The worker's transactions (http claims and records, timers, internal handlers, operations checks)
each take a share lock on the extension object first (axme_lock_extension), so a DROP EXTENSION,
which locks that object exclusively before dropping any table, waits for the worker's transaction
or runs before it: it never holds one of axme's tables while the worker holds another.  Without
the lock this failed with "deadlock detected" in about one try in three.
"""
import datetime
import time

import psycopg2

from axmetest import AxmeTestCase, intent


class DropExtensionTest(AxmeTestCase):

    def busy_worker(self, conn):
        """Give the worker something to do in every loop: due timers, an internal handler, and
        intents that become due again."""
        with conn.cursor() as cur:
            cur.execute("CREATE OR REPLACE FUNCTION public.drop_test_handler(i jsonb) RETURNS jsonb "
                        "LANGUAGE sql AS 'SELECT pg_catalog.pg_sleep(0.01)::text::jsonb'")
            cur.execute("SELECT axme.register_agent('agent://acme/tests/drop-poll', 'poll')")
            cur.execute("SELECT axme.register_agent('agent://acme/tests/drop-internal', 'internal', "
                        "NULL, '{\"handler\": \"public.drop_test_handler\"}')")
            for n in range(200):
                soon = (datetime.datetime.now(datetime.timezone.utc)
                        + datetime.timedelta(milliseconds=100 + n)).isoformat()
                cur.execute("SELECT axme.send_intent(%s)",
                            (intent("agent://acme/tests/drop-poll", n, deadline_at=soon),))
            for n in range(20):
                cur.execute("SELECT axme.send_intent(%s)", (intent("agent://acme/tests/drop-internal", n),))

    def test_drop_while_worker_busy(self):
        if not self.preloaded:
            self.skipTest("the worker needs shared_preload_libraries=axme")
        conn = self.db
        failures = []
        for attempt in range(8):
            self.busy_worker(conn)
            time.sleep(0.05 + 0.02 * attempt)     # drop at different points of the worker's loop
            with conn.cursor() as cur:
                try:
                    cur.execute("DROP EXTENSION axme")
                except psycopg2.Error as e:
                    failures.append(f"try {attempt}: {e.pgcode} {e}")
                    cur.execute("DROP EXTENSION IF EXISTS axme")
                cur.execute("CREATE EXTENSION axme")
        self.assertEqual(failures, [])
