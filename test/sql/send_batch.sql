-- send_batch: axme.send_intents(jsonb[], text[]), the set-based send: the same rows and events as
-- send_intent, ids in input order, errors naming the element (1-based) with nothing written,
-- idempotency keys within one call and across calls, the array limits.
\i test/include/setup.psql

SELECT axme.register_agent('agent://batch/prod/orders');
SELECT axme.register_agent('agent://batch/prod/budget7', 'poll', NULL, '{"retry": {"max_attempts": 7}}');
SELECT axme.register_agent('agent://batch/prod/streamer', 'stream');
SELECT axme.register_agent('agent://batch/prod/desk', 'inbox');

-- doc(n, to): an intent document for element n.
CREATE FUNCTION pg_temp.doc(n int, to_agent text DEFAULT 'agent://batch/prod/orders', extra jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('intent_type', 'intent.order.process.v1', 'to_agent', to_agent,
                              'payload', jsonb_build_object('n', n)) || extra
$$;

-- Three intents to three agents: ids come back in input order, each stored as send_intent stores it.
CREATE TEMP TABLE sent AS
SELECT row_number() OVER () AS pos, id
FROM axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'agent://batch/prod/budget7'),
                             pg_temp.doc(3, 'agent://batch/prod/streamer',
                                         '{"max_delivery_attempts": 2, "correlation_id": "6f1c1d4e-1b7e-4d53-9a40-3c6a3f0d1c11"}')]) id;
SELECT s.pos, i.payload, i.to_agent, i.status, i.attempt, i.max_delivery_attempts, i.event_seq,
       i.sender_role = current_user::text::regrole AS sender_is_me, i.due_at = i.created_at AS due_now,
       i.correlation_id = '6f1c1d4e-1b7e-4d53-9a40-3c6a3f0d1c11' AS given_correlation
FROM sent s JOIN axme.intents i ON i.intent_id = s.id ORDER BY s.pos;
-- events 1 and 2 of each, as send_intent writes them
SELECT s.pos, e.seq, e.event_type, e.status, e.actor = current_user AS actor_is_me, e.details
FROM sent s JOIN axme.events e ON e.intent_id = s.id ORDER BY s.pos, e.seq;
-- the same document through send_intent stores the same columns
SELECT axme.send_intent(pg_temp.doc(1)) AS single_id \gset
SELECT (SELECT to_jsonb(i) - '{intent_id,correlation_id,created_at,updated_at,due_at}'::text[]
        FROM axme.intents i WHERE i.intent_id = :'single_id')
     = (SELECT to_jsonb(i) - '{intent_id,correlation_id,created_at,updated_at,due_at}'::text[]
        FROM axme.intents i JOIN sent s ON s.id = i.intent_id WHERE s.pos = 1) AS same_as_send_intent;
SELECT (SELECT array_agg(to_jsonb(e) - '{intent_id,at}'::text[] ORDER BY seq) FROM axme.events e WHERE e.intent_id = :'single_id')
     = (SELECT array_agg(to_jsonb(e) - '{intent_id,at}'::text[] ORDER BY seq) FROM axme.events e JOIN sent s ON s.id = e.intent_id WHERE s.pos = 1)
       AS same_events;
-- ids are time-ordered (UUIDv7) and increase in input order
SELECT bool_and(a.id < b.id) AS increasing FROM sent a JOIN sent b ON b.pos = a.pos + 1;

-- An empty array sends nothing.
SELECT count(*) FROM axme.send_intents('{}');

-- Every refusal names the element, 1-based, with send_intent's SQLSTATE, and writes nothing.
SELECT count(*) AS intents_before FROM axme.intents \gset
SELECT pg_temp.err($$SELECT axme.send_intents(NULL)$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), NULL])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2) - 'payload'])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2), pg_temp.doc(3, 'agent://batch/prod/nobody')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'not an address')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1, 'agent://batch/prod/orders', '{"colour": "red"}')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'agent://batch/prod/orders', '{"correlation_id": "x"}')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'agent://batch/prod/orders', '{"max_delivery_attempts": 0}')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'agent://batch/prod/orders', '{"deadline_at": "2001-01-01"}')])$$);
-- a plain intent to an inbox agent fails in axme._inbox_on_send, after the store: undone too
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2, 'agent://batch/prod/desk')])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1)], ARRAY['key-000001', 'key-000002'])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1)], ARRAY['short'])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[[pg_temp.doc(1)], [pg_temp.doc(2)]])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(array_fill(pg_temp.doc(1), ARRAY[10001]))$$);
SELECT count(*) - :intents_before AS written FROM axme.intents;

-- Idempotency keys: the same key twice in one call gives one intent; the same key again later
-- gives the same id; a key reused with another document is 23505 naming the element.
CREATE TEMP TABLE keyed AS
SELECT row_number() OVER () AS pos, id
FROM axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2), pg_temp.doc(1)],
                       ARRAY['batch-key-1', NULL, 'batch-key-1']) id;
SELECT count(DISTINCT id) AS distinct_ids, (SELECT id FROM keyed WHERE pos = 1) = (SELECT id FROM keyed WHERE pos = 3) AS first_equals_third,
       (SELECT count(*) FROM axme.intents i WHERE i.intent_id IN (SELECT id FROM keyed)) AS stored
FROM keyed;
SELECT (SELECT axme.send_intent(pg_temp.doc(1), 'batch-key-1')) = (SELECT id FROM keyed WHERE pos = 1) AS send_intent_finds_it,
       (SELECT id FROM axme.send_intents(ARRAY[pg_temp.doc(1)], ARRAY['batch-key-1']) id) = (SELECT id FROM keyed WHERE pos = 1) AS send_intents_finds_it;
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1), pg_temp.doc(2)], ARRAY['batch-key-2', 'batch-key-2'])$$);
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(5)], ARRAY['batch-key-1'])$$);
SELECT count(*) AS key2_rows FROM axme.idempotency_keys WHERE key = 'batch-key-2';

-- Options take send_intent's per-intent steps: a deadline makes a timer, a human task an inbox thread.
SELECT count(*) FROM axme.send_intents(ARRAY[
    pg_temp.doc(1, 'agent://batch/prod/orders', jsonb_build_object('deadline_at', now() + interval '1 hour')),
    pg_temp.doc(2, 'agent://batch/prod/desk', '{"human_task": {"task_type": "approval", "title": "Approve"}}'),
    pg_temp.doc(3, 'agent://batch/prod/orders', '{"not_before": "2999-01-01T00:00:00Z"}')]) id;
SELECT t.kind FROM axme.timers t JOIN axme.intents i USING (intent_id) WHERE i.payload = '{"n": 1}' AND i.deadline_at IS NOT NULL;
SELECT i.status, (SELECT count(*) FROM axme.threads th WHERE th.intent_id = i.intent_id) AS threads
FROM axme.intents i WHERE i.to_agent = 'agent://batch/prod/desk';
SELECT e.details FROM axme.events e JOIN axme.intents i USING (intent_id)
WHERE i.not_before = '2999-01-01T00:00:00Z' AND e.seq = 2;

-- A role that is not a sender is refused (42501) before anything is read.
CREATE ROLE axme_regress_batch_nobody;
SET ROLE axme_regress_batch_nobody;
SELECT pg_temp.err($$SELECT axme.send_intents(ARRAY[pg_temp.doc(1)])$$);
RESET ROLE;
DROP ROLE axme_regress_batch_nobody;

-- The shape it is made for: a statement-level trigger with a transition table sends one intent
-- per inserted row in one call (README "Sending many intents at once").
CREATE TABLE batch_orders (id int PRIMARY KEY, total numeric);
CREATE FUNCTION batch_orders_send() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM axme.send_intents(ARRAY(
        SELECT jsonb_build_object('intent_type', 'intent.order.process.v1',
                                  'to_agent', 'agent://batch/prod/orders',
                                  'payload', jsonb_build_object('order', n.id, 'total', n.total))
        FROM new_orders n ORDER BY n.id));
    RETURN NULL;
END $$;
CREATE TRIGGER batch_orders_send AFTER INSERT ON batch_orders
    REFERENCING NEW TABLE AS new_orders FOR EACH STATEMENT EXECUTE FUNCTION batch_orders_send();
INSERT INTO batch_orders SELECT g, g * 10 FROM generate_series(1, 250) g;
SELECT count(*), min((payload->>'order')::int), max((payload->>'order')::int)
FROM axme.intents WHERE to_agent = 'agent://batch/prod/orders' AND payload ? 'order';
DROP TABLE batch_orders;
DROP FUNCTION batch_orders_send();
