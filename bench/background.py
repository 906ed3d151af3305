#!/usr/bin/python3
"""The worker's periodic queries with millions of finished intents in history.

Run by `bash bench/run.sh background` in a throwaway cluster (fsync=off).  Writes BENCH_HISTORY
(default 1,000,000; the issue's figure is 10,000,000) COMPLETED intents straight into
axme.intents next to a stream agent and a poll agent (no inbox agent: the state in which 0.3.0's
timer turn scanned the whole table), then times each periodic statement (median of BENCH_CALLS
calls, each in its own transaction, rolled back) and counts what it read of axme.intents
(pg_stat_xact_user_tables), next to 0.3.0's timer turn and inbox assignment in the same run.
Writes bench/BACKGROUND.md.
"""
import os
import statistics
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
HISTORY = int(os.environ.get("BENCH_HISTORY", "1000000"))
CALLS = int(os.environ.get("BENCH_CALLS", "20"))
STREAM = "agent://bench/history/stream"
POLL = "agent://bench/history/poll"

OLD = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.inbox_assign_due_0_3(max_count integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    n integer := 0;
BEGIN
    FOR i IN
        SELECT x.* FROM axme.intents x JOIN axme.agents a ON a.agent_id = x.agent_id
        WHERE a.delivery_mode = 'inbox' AND x.due_at <= now() AND x.status = 'SUBMITTED'
          AND x.human_task IS NOT NULL
        ORDER BY x.due_at LIMIT max_count
        FOR UPDATE OF x SKIP LOCKED
    LOOP
        PERFORM axme._assign_task(i, axme._check_human_task(i.human_task));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION bench.timers_turn_0_3(since timestamptz, upto timestamptz,
                                  OUT next_due timestamptz, OUT internal_agents boolean)
LANGUAGE plpgsql AS $$
BEGIN
    next_due := least(axme._wake_streams(since, upto), (SELECT min(t.due_at) FROM axme.timers t));
    IF pg_catalog.to_regprocedure('axme._inbox_assign_due(integer)') IS NOT NULL THEN
        IF bench.inbox_assign_due_0_3(1000) >= 1000 THEN
            next_due := upto;       -- more to assign: at once
        END IF;
        next_due := least(next_due,
            (SELECT min(f.due_at) FROM axme.agents a
             CROSS JOIN LATERAL (SELECT i.due_at FROM axme.intents i
                                 WHERE i.agent_id = a.agent_id AND i.due_at > upto
                                 ORDER BY i.due_at LIMIT 1) f
             WHERE a.delivery_mode = 'inbox'));
    END IF;
    IF EXISTS (SELECT FROM axme.agents a WHERE a.delivery_mode = 'stream') THEN
        next_due := least(next_due, upto + interval '1 second');
    END IF;
    internal_agents := EXISTS (SELECT FROM axme.agents a WHERE a.delivery_mode = 'internal');
END $$;

"""

STATS = ("SELECT coalesce(seq_scan, 0), coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)"
         " FROM pg_stat_xact_user_tables WHERE relid = 'axme.intents'::regclass")

PERIODIC = [
    ("timer turn (axme._timers_turn)", "SELECT * FROM axme._timers_turn(now() - interval '1 second', now())"),
    ("timer turn of 0.3.0", "SELECT * FROM bench.timers_turn_0_3(now() - interval '1 second', now())"),
    ("inbox assignment (axme._inbox_assign_due)", "SELECT axme._inbox_assign_due(1000)"),
    ("inbox assignment of 0.3.0", "SELECT bench.inbox_assign_due_0_3(1000)"),
    ("due timers (axme._fire_timers)", "SELECT axme._fire_timers(100)"),
    ("alert check (axme._check_alerts)", "SELECT axme._check_alerts()"),
    ("cleanup step (axme._cleanup_step)", "SELECT axme._cleanup_step(1000)"),
    ("http claim (axme._http_claim)", "SELECT count(*) FROM axme._http_claim(100, '{}', '{}')"),
]


def main():
    c = psycopg2.connect(dbname=os.environ.get("PGDATABASE", "postgres"))
    c.autocommit = True
    cur = c.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS axme")
    cur.execute(OLD)
    cur.execute("SELECT axme.register_agent(%s, 'stream')", (STREAM,))
    cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
    t0 = time.time()
    for start in range(0, HISTORY, 500000):
        cur.execute("""
            INSERT INTO axme.intents (intent_id, agent_id, intent_type, to_agent, sender_role,
                correlation_id, payload, status, attempt, max_delivery_attempts, result,
                created_at, updated_at, event_seq)
            SELECT gen_random_uuid(), a.agent_id, 'intent.order.process.v1', a.address, current_user::text::regrole,
                   gen_random_uuid(), jsonb_build_object('order_id', g, 'total', 59.90), 'COMPLETED', 1, 5,
                   '{}', now() - interval '1 hour' - g * interval '1 ms',
                   now() - interval '1 hour' - g * interval '1 ms', 4
            FROM generate_series(%s, %s) g
            JOIN axme.agents a ON a.address = CASE WHEN g %% 2 = 0 THEN %s ELSE %s END
        """, (start + 1, min(HISTORY, start + 500000), STREAM, POLL))
    cur.execute("VACUUM ANALYZE axme.intents")
    fill_s = time.time() - t0
    # a few live intents: due now, delayed, handed out
    for n in range(10):
        cur.execute("SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.x.v1', 'to_agent', %s, 'payload', '{}'::jsonb))", (POLL,))
        cur.execute("SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.x.v1', 'to_agent', %s, 'payload', '{}'::jsonb, 'not_before', now() + interval '1 hour'))", (STREAM,))
    cur.execute("SELECT count(*) FROM axme.poll(%s, 5)", (POLL,))
    cur.execute("SELECT pg_size_pretty(pg_total_relation_size('axme.intents'))")
    size = cur.fetchone()[0]

    rows = []
    for name, sql in PERIODIC:
        times = []
        seq = fetched = 0
        for i in range(CALLS):
            c.autocommit = False
            # the backend's pending counts (pg_stat_xact_*) hold earlier transactions until they
            # are flushed: the difference around the statement is what it read
            cur.execute(STATS)
            s0 = cur.fetchone()
            t = time.perf_counter()
            cur.execute(sql)
            times.append((time.perf_counter() - t) * 1000)
            cur.execute(STATS)
            s1 = cur.fetchone()
            seq, seqrows, fetched = (s1[0] - s0[0], s1[1] - s0[1], s1[2] - s0[2])
            c.rollback()
            c.autocommit = True
            if name.endswith("0.3.0") and i >= 2:
                break       # slow: three calls are enough
        rows.append((name, statistics.median(times), max(times), seq, seqrows, fetched))
        print("%-45s median %.3f ms, max %.3f ms; seq scans %d (%d rows), index tuples fetched %d"
              % rows[-1], flush=True)

    L = ["# Background work with history\n",
         "Generated by `bash bench/run.sh background` on %s: %s COMPLETED intents of history "
         "(axme.intents %s with its indexes, written in %.0f s), a stream and a poll agent, no inbox "
         "agent, a few live intents. Each statement %d times (0.3.0's slow ones 3 times), each call "
         "its own transaction; median and max in ms; what one call read of axme.intents from "
         "`pg_stat_xact_user_tables`. **fsync=off**, a shared 2-core machine.\n"
         % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "{:,}".format(HISTORY), size, fill_s, CALLS),
         "| periodic statement | median ms | max ms | sequential scans of axme.intents (rows) | index tuples fetched |",
         "|---|---:|---:|---:|---:|"]
    for name, medv, maxv, seq, seqrows, fetched in rows:
        L.append("| %s | %.3f | %.3f | %d (%s) | %d |" % (name, medv, maxv, seq, "{:,}".format(seqrows), fetched))
    L.append("\nTarget: a timer turn under 5 ms with 10 million intents of history.\n")
    open(os.path.join(HERE, "BACKGROUND.md"), "w").write("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
