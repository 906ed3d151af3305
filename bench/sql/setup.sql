-- Benchmark fixtures: the three systems side by side in one database.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS axme;
CREATE EXTENSION IF NOT EXISTS pgq;
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;

-- axme receivers: sends go to a poll agent (no NOTIFY); the consume cycle drains another poll
-- agent; the stream agent is used by the stream-send rows and the latency measurements.
SELECT axme.register_agent('agent://bench/perf/sink', 'poll');
SELECT axme.register_agent('agent://bench/perf/worker', 'poll');
SELECT axme.register_agent('agent://bench/perf/stream', 'stream');
SELECT axme.register_agent('agent://bench/perf/waiter', 'poll');

-- Send floor: the same columns, defaults and CHECKs as axme.intents, with only the primary key
-- (no claim index, no event log, no validation).
CREATE TABLE bench.floor_intents (LIKE axme.intents INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE bench.floor_intents ADD PRIMARY KEY (intent_id);

-- "axme's writes in bare SQL": the rows and indexes axme keeps (intents with its primary key,
-- claim index and dead-letter index; events with theirs), written by one plain statement with no
-- validation and no function.  Separates what axme's data model costs from what its code costs.
CREATE TABLE bench.w_intents (LIKE axme.intents INCLUDING ALL);
CREATE TABLE bench.w_events (LIKE axme.events INCLUDING ALL);

-- Lease-queue floor (the pgmq shape): a bare table claimed with
-- UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING, then deleted.
CREATE TABLE bench.lease_queue (
    msg_id  bigserial PRIMARY KEY,
    vt      timestamptz NOT NULL DEFAULT now(),
    read_ct integer NOT NULL DEFAULT 0,
    message jsonb NOT NULL
);
CREATE INDEX lease_queue_vt_idx ON bench.lease_queue (vt);

-- The payload every system carries: a small order (~110 bytes of JSON).  STABLE (not IMMUTABLE)
-- so the planner inlines it: its body uses stable operators (text || int).
CREATE FUNCTION bench.order_payload(n bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('order_id', n, 'customer', 'c-' || (n % 1000),
                              'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (n % 97), 'qty', 2)),
                              'total', 59.90)
$$;

-- PgQ preload for the consume cycle: n events, a tick after every per_tick of them, so that each
-- batch a consumer gets holds per_tick events (bench.py sets the queue's ticker_max_count to 1).
-- The queues themselves are (re)created before every run by bench.py.
CREATE PROCEDURE bench.pgq_preload(queue text, n integer, per_tick integer) LANGUAGE plpgsql AS $$
DECLARE
    i integer := 0;
BEGIN
    WHILE i < n LOOP
        PERFORM pgq.insert_event(queue, 'intent.order.process.v1', bench.order_payload(g)::text)
        FROM generate_series(i + 1, least(n, i + per_tick)) g;
        COMMIT;
        IF pgq.ticker(queue) IS NULL THEN
            RAISE EXCEPTION 'pgq.ticker(%) did not tick after % events', queue, per_tick;
        END IF;
        COMMIT;
        i := i + per_tick;
    END LOOP;
END $$;
