-- bench/inbox: the first page of an inbox owner with 100,000 open threads (plus 20,000 done ones
-- and 50,000 open threads of another owner around it).  Run by bench/inbox/run.sh.
\set ON_ERROR_STOP 1
\timing off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS axme;
SELECT axme.register_agent('agent://bench/inbox/approver', 'inbox');
SELECT axme.register_agent('agent://bench/inbox/other', 'inbox');
\echo 'sending 170,000 tasks through axme.send_intent ...'
\timing on
SELECT count(axme.send_intent(jsonb_build_object(
           'intent_type', 'intent.bench.approve.v1',
           'to_agent', CASE WHEN g <= 120000 THEN 'agent://bench/inbox/approver' ELSE 'agent://bench/inbox/other' END,
           'payload', jsonb_build_object('n', g),
           'human_task', jsonb_build_object('task_type', 'approval', 'title', 'Approve order ' || g))))
FROM generate_series(1, 170000) g;
\timing off
-- 20,000 of the approver's tasks decided (done threads in the same owner), in one transaction
SELECT count(axme.decide(intent_id, 'approved')) AS decided
FROM (SELECT t.intent_id FROM axme.threads t WHERE t.owner = 'agent://bench/inbox/approver'
      ORDER BY t.created_at LIMIT 20000) s;
VACUUM ANALYZE axme.threads;
SELECT (SELECT count(*) FROM axme.threads WHERE owner = 'agent://bench/inbox/approver' AND status <> 'done') AS approver_open,
       (SELECT count(*) FROM axme.threads WHERE owner = 'agent://bench/inbox/approver' AND status = 'done') AS approver_done,
       (SELECT count(*) FROM axme.threads WHERE owner = 'agent://bench/inbox/other') AS other_open;

\echo 'the plan of the first page (50 rows), warm:'
SELECT count(*) FROM axme.inbox('agent://bench/inbox/approver') LIMIT 50;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM axme.inbox('agent://bench/inbox/approver') LIMIT 50;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM axme.inbox('agent://bench/inbox/approver', 'pending') LIMIT 50;
-- a cursor in the middle of the approver's feed
SELECT f.xid::text || ':' || f.change_seq AS mid_cursor
FROM axme.inbox_feed f JOIN axme.agents a ON a.agent_id = f.owner_id
WHERE a.address = 'agent://bench/inbox/approver' ORDER BY f.xid, f.change_seq OFFSET 60000 LIMIT 1 \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM axme.inbox_changes('agent://bench/inbox/approver', :'mid_cursor', 50);
-- the feed query inside inbox_changes, as it runs there
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM axme.inbox_feed x
WHERE x.owner_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://bench/inbox/approver')
  AND (x.xid, x.change_seq) > (split_part(:'mid_cursor', ':', 1)::xid8, split_part(:'mid_cursor', ':', 2)::bigint)
  AND x.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY x.xid, x.change_seq LIMIT 50;

-- Timings of 200 first-page calls each, measured inside the server (clock_timestamp around
-- each query), so client round trips do not count.
CREATE TEMP TABLE t (what text, ms float8);
CREATE TEMP TABLE cursors AS
SELECT row_number() OVER (ORDER BY f.xid, f.change_seq) AS n, f.xid::text || ':' || f.change_seq AS c
FROM axme.inbox_feed f JOIN axme.agents a ON a.agent_id = f.owner_id
WHERE a.address = 'agent://bench/inbox/approver';
DO $$
DECLARE
    t0 timestamptz;
    cur text;
BEGIN
    FOR i IN 1..200 LOOP
        t0 := clock_timestamp();
        PERFORM * FROM axme.inbox('agent://bench/inbox/approver') LIMIT 50;
        INSERT INTO t VALUES ('inbox(owner) LIMIT 50', extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        PERFORM * FROM axme.inbox('agent://bench/inbox/approver', 'pending') LIMIT 50 OFFSET 1000;
        INSERT INTO t VALUES ('inbox(owner, pending) LIMIT 50 OFFSET 1000', extract(epoch FROM clock_timestamp() - t0) * 1000);
        SELECT c INTO cur FROM cursors WHERE n = 500 * i;
        t0 := clock_timestamp();
        PERFORM * FROM axme.inbox_changes('agent://bench/inbox/approver', cur, 50);
        INSERT INTO t VALUES ('inbox_changes(owner, cursor, 50)', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
END $$;
SELECT what, count(*) AS calls, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3) AS p50_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3) AS p99_ms,
       round(max(ms)::numeric, 3) AS max_ms
FROM t GROUP BY what ORDER BY what;
