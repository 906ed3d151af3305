"""Background work bounded by what is due: the worker's periodic queries (the timer turn with
stream wake-ups and inbox assignment, the alert check, a cleanup step, the http claim) read only
due or pending rows through their indexes, however many finished intents history holds.

History is written straight into axme.intents (AXME_TEST_HISTORY rows, default 200,000, all
COMPLETED an hour or more ago) next to a stream agent, a poll agent and a few live intents; then
each periodic query runs in one transaction and pg_stat_xact_user_tables must show no sequential
scan of axme.intents and only a handful of index tuples fetched.  The plans are what is checked,
never times (the times of 10 million rows are in bench/background)."""
import os
import time

from axmetest import AxmeTestCase, intent

STREAM = "agent://myorg/prod/bg-stream"
POLL = "agent://myorg/prod/bg-poll"
HISTORY = int(os.environ.get("AXME_TEST_HISTORY", "200000"))

# the worker's periodic statements, as src/timers.c and src/ops.c run them
PERIODIC = {
    "timers_turn": "SELECT next_due, internal_agents FROM axme._timers_turn(now() - interval '1 second', now())",
    "fire_timers": "SELECT axme._fire_timers(100)",
    "inbox_assign_due": "SELECT axme._inbox_assign_due(1000)",
    "check_alerts": "SELECT axme._check_alerts()",
    "cleanup_step": "SELECT axme._cleanup_step(1000)",
    "http_claim": "SELECT count(*) FROM axme._http_claim(100, '{}', '{}')",
}


class BackgroundBoundedTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from axmetest import connect
        c = connect(cls.dbname)
        with c.cursor() as cur:
            cur.execute("SELECT axme.register_agent(%s, 'stream')", (STREAM,))
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
            # history: finished intents, the shape send + poll + complete leaves behind
            cur.execute("""
                INSERT INTO axme.intents (intent_id, agent_id, intent_type, to_agent, sender_role,
                    correlation_id, payload, status, attempt, max_delivery_attempts, result,
                    created_at, updated_at, event_seq)
                SELECT gen_random_uuid(), a.agent_id, 'intent.test.job.v1', a.address, current_user::text::regrole,
                       gen_random_uuid(), jsonb_build_object('n', g), 'COMPLETED', 1, 5, '{}',
                       now() - interval '1 hour' - g * interval '10 ms',
                       now() - interval '1 hour' - g * interval '10 ms', 4
                FROM generate_series(1, %s) g
                JOIN axme.agents a ON a.address = CASE WHEN g %% 2 = 0 THEN %s ELSE %s END
            """, (HISTORY, STREAM, POLL))
            cur.execute("ANALYZE axme.intents")
        c.close()

    def xact_scans(self, sql):
        """(seq_scan, idx_tup_fetch) of axme.intents caused by sql, and its time in ms."""
        c = self.connect(autocommit=False)
        with c.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute(sql)
            ms = (time.perf_counter() - t0) * 1000
            cur.execute("""SELECT coalesce(seq_scan, 0), coalesce(idx_tup_fetch, 0)
                           FROM pg_stat_xact_user_tables
                           WHERE relid = 'axme.intents'::regclass""")
            seq, fetched = cur.fetchone()
        c.rollback()
        c.close()
        return seq, fetched, ms

    def test_periodic_queries_read_only_due_rows(self):
        # a few live intents: due now, delayed, handed out
        for n in range(5):
            self.q1("SELECT axme.send_intent(%s)", (intent(POLL, n),))
            self.q1("SELECT axme.send_intent(%s)", (intent(STREAM, n, not_before="2999-01-01T00:00:00Z"),))
        self.q("SELECT count(*) FROM axme.poll(%s, 2)", (POLL,))
        for name, sql in PERIODIC.items():
            with self.subTest(name):
                seq, fetched, ms = self.xact_scans(sql)
                print("  %-17s %d history rows: %.2f ms, %d seq scans, %d index tuples fetched of axme.intents"
                      % (name, HISTORY, ms, seq, fetched))
                self.assertEqual(seq, 0, "%s scanned axme.intents sequentially" % name)
                self.assertLess(fetched, 100, "%s fetched %d rows of axme.intents" % (name, fetched))

    def test_turn_without_inbox_agents_skips_inbox_work(self):
        # no inbox agent: the inbox assignment is not run at all (its function is not called)
        c = self.connect(autocommit=False)
        with c.cursor() as cur:
            cur.execute("SET LOCAL track_functions = 'all'")
            cur.execute("SELECT pg_stat_get_xact_function_calls('axme._inbox_assign_due(integer)'::regprocedure)")
            before = cur.fetchone()[0] or 0
            cur.execute(PERIODIC["timers_turn"])
            cur.execute("SELECT pg_stat_get_xact_function_calls('axme._inbox_assign_due(integer)'::regprocedure)")
            after = cur.fetchone()[0] or 0
        c.rollback()
        self.assertEqual(after - before, 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
