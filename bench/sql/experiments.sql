-- Sketches of the performance proposals in bench/README.md, measured by bench/experiments.py
-- next to the shipped functions.  They live in schema bench and are NOT part of axme.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- complete() as one statement on its fast path: update + event in one CTE; only when no row
-- matched does it fall back to axme.complete() to raise the precise error (P0002 / 55000).
CREATE OR REPLACE FUNCTION bench.complete_1stmt(p_id uuid, p_result jsonb DEFAULT '{}', p_attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    WITH u AS (
        UPDATE axme.intents i SET status = 'COMPLETED', result = p_result, due_at = NULL, lease_until = NULL,
               updated_at = now(), event_seq = i.event_seq + 1
        WHERE i.intent_id = p_id AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND (p_attempt IS NULL OR p_attempt = i.attempt)
        RETURNING i.intent_id, i.event_seq, i.attempt)
    INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
    SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', current_user,
           jsonb_build_object('attempt', u.attempt)
    FROM u;
    IF NOT FOUND THEN
        PERFORM axme.complete(p_id, p_result, p_attempt);   -- raises the precise error
    END IF;
    PERFORM axme._wake_waiters(p_id);
END $f$;

-- poll() with RETURN QUERY instead of FOR ... RETURN NEXT, returning only the columns it hands
-- out.  Sketch: the rare path (candidates that time out or are dead-lettered: wake-ups and the
-- refill loop) is left out; the queue measured here has none.
CREATE OR REPLACE FUNCTION bench.poll_rq(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (intent_id uuid, intent_type text, payload jsonb, from_agent text,
               correlation_id uuid, attempt integer, lease_until timestamptz)
LANGUAGE plpgsql AS $f$
DECLARE
    a axme.agents;
    t timestamptz := clock_timestamp();
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    RETURN QUERY
        WITH c AS (
            SELECT i.intent_id, i.due_at AS was_due,
                   coalesce(i.deadline_at <= t, false) AS timed_out,
                   i.status <> 'SUBMITTED' AND i.attempt - i.attempt_base >= i.max_delivery_attempts AS exhausted
            FROM axme.intents i
            WHERE i.agent_id = a.agent_id AND i.due_at <= t
            ORDER BY i.due_at
            LIMIT max_count
            FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE axme.intents i SET
                status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED' ELSE 'DELIVERED' END,
                attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN t END,
                lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                updated_at = now(),
                event_seq = i.event_seq + 1
            FROM c
            WHERE i.intent_id = c.intent_id
            RETURNING i.intent_id, i.intent_type, i.payload, i.from_agent, i.correlation_id, i.attempt,
                      i.lease_until, i.status, c.was_due, i.deadline_at, i.event_seq
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq,
                   CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                 WHEN 'FAILED' THEN 'intent.dead_lettered' ELSE 'intent.timed_out' END,
                   u.status, current_user,
                   CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                                 ELSE jsonb_build_object('deadline_at', u.deadline_at) END
            FROM u
        )
        SELECT u.intent_id, u.intent_type, u.payload, u.from_agent, u.correlation_id, u.attempt, u.lease_until
        FROM u WHERE u.status = 'DELIVERED' ORDER BY u.was_due;
END $f$;

-- Server-side timing loops (one transaction each; no round trips): microseconds per intent.
CREATE OR REPLACE FUNCTION bench.time_completes(form text, n integer) RETURNS numeric LANGUAGE plpgsql AS $f$
DECLARE
    r record;
    t0 timestamptz;
    k integer := 0;
BEGIN
    t0 := clock_timestamp();
    FOR r IN SELECT i.intent_id, i.attempt FROM axme.intents i WHERE i.status = 'DELIVERED' LIMIT n LOOP
        IF form = 'complete' THEN
            PERFORM axme.complete(r.intent_id, '{"ok": true}', r.attempt);
        ELSIF form = 'complete_many' THEN
            PERFORM count(*) FROM axme.complete_many(ARRAY[r.intent_id], ARRAY[r.attempt], ARRAY['{"ok": true}'::jsonb]);
        ELSIF form = 'complete_1stmt' THEN
            PERFORM bench.complete_1stmt(r.intent_id, '{"ok": true}', r.attempt);
        ELSE
            RAISE EXCEPTION 'unknown form %', form;
        END IF;
        k := k + 1;
    END LOOP;
    RETURN round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / k)::numeric, 1);
END $f$;

CREATE OR REPLACE FUNCTION bench.time_polls(form text, calls integer) RETURNS numeric LANGUAGE plpgsql AS $f$
DECLARE
    t0 timestamptz;
    k bigint := 0;
    n bigint;
BEGIN
    t0 := clock_timestamp();
    FOR j IN 1..calls LOOP
        IF form = 'poll' THEN
            SELECT count(*) INTO n FROM axme.poll('agent://bench/perf/worker', 100, '1 hour');
        ELSIF form = 'poll_rq' THEN
            SELECT count(*) INTO n FROM bench.poll_rq('agent://bench/perf/worker', 100, '1 hour');
        ELSIF form IN ('sql', 'sql_noevent') THEN
            -- axme's claim in bare SQL (DELIVERED path only), with and without the event insert
            WITH c AS (SELECT i.intent_id FROM axme.intents i
                       WHERE i.agent_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://bench/perf/worker')
                         AND i.due_at <= now() ORDER BY i.due_at LIMIT 100 FOR UPDATE SKIP LOCKED),
                 u AS (UPDATE axme.intents i SET status = 'DELIVERED', attempt = i.attempt + 1,
                         lease_until = now() + interval '1 hour', due_at = now() + interval '1 hour',
                         updated_at = now(), event_seq = i.event_seq + 1
                       FROM c WHERE i.intent_id = c.intent_id
                       RETURNING i.intent_id, i.intent_type, i.payload, i.from_agent, i.correlation_id,
                                 i.attempt, i.lease_until, i.event_seq),
                 e AS (INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
                       SELECT u.intent_id, u.event_seq, 'intent.delivered', 'DELIVERED', current_user,
                              jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                       FROM u WHERE form = 'sql')
            SELECT count(*) INTO n FROM u;
        ELSIF form = 'floor' THEN
            WITH x AS (UPDATE bench.lease_queue SET vt = now() + interval '1 hour', read_ct = read_ct + 1
                       WHERE msg_id IN (SELECT msg_id FROM bench.lease_queue WHERE vt <= now() ORDER BY vt
                                        LIMIT 100 FOR UPDATE SKIP LOCKED)
                       RETURNING msg_id, read_ct, message)
            SELECT count(*) INTO n FROM x;
        ELSE
            RAISE EXCEPTION 'unknown form %', form;
        END IF;
        k := k + n;
    END LOOP;
    RETURN round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / k)::numeric, 1);
END $f$;
