-- ordering: ordering_key (1..128 characters) validated at send; for one agent, intents with the
-- same key are handed out one at a time in send order; a retrying head blocks only its key; a
-- dead-lettered or canceled intent releases the next; unkeyed intents and other keys go on;
-- ordering beats priority.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

SELECT axme.register_agent('agent://myorg/prod/ord', 'poll');
CREATE FUNCTION pg_temp.doc(n integer, extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_build_object('intent_type', 'intent.ord.v1', 'to_agent', 'agent://myorg/prod/ord',
                              'payload', jsonb_build_object('n', n)) || extra
$f$;
CREATE FUNCTION pg_temp.id(n integer) RETURNS uuid LANGUAGE sql AS $f$
    SELECT intent_id FROM axme.intents WHERE to_agent = 'agent://myorg/prod/ord' AND (payload->>'n')::int = n
$f$;
CREATE FUNCTION pg_temp.poll() RETURNS text LANGUAGE sql AS $f$
    SELECT coalesce(string_agg(p.payload->>'n' || '@' || p.attempt, ' ' ORDER BY (p.payload->>'n')::int), '-')
    FROM axme.poll('agent://myorg/prod/ord', 100) p
$f$;
CREATE FUNCTION pg_temp.att(n integer) RETURNS integer LANGUAGE sql AS $f$
    SELECT attempt FROM axme.intents WHERE intent_id = pg_temp.id(n)
$f$;

-- refused at send (22023), nothing stored
SELECT v AS ordering_key, pg_temp.err(format('SELECT axme.send_intent(%L)', pg_temp.doc(0, jsonb_build_object('ordering_key', v)))) AS result
FROM (VALUES (to_jsonb(repeat('k', 129))), ('""'), ('12')) x(v);
SELECT count(*) AS stored FROM axme.intents WHERE to_agent = 'agent://myorg/prod/ord';
SELECT axme.send_intent(pg_temp.doc(0, jsonb_build_object('ordering_key', repeat('é', 128)))) IS NOT NULL AS k128;
SELECT pg_temp.poll() AS handed_out;
SELECT axme.complete(pg_temp.id(0), '{}', 1) AS done;

-- k1: 1 2 3, k2: 4, unkeyed: 5 (sent one by one and in a batch)
SELECT axme.send_intent(pg_temp.doc(1, '{"ordering_key": "k1"}')) IS NOT NULL AS sent;
SELECT count(*) AS sent FROM axme.send_intents(ARRAY[pg_temp.doc(2, '{"ordering_key": "k1"}'),
    pg_temp.doc(3, '{"ordering_key": "k1"}'), pg_temp.doc(4, '{"ordering_key": "k2"}'), pg_temp.doc(5)]);
SELECT payload->>'n' AS n, ordering_key, due_at IS NOT NULL AS due,
       ordering_seq > lag(ordering_seq) OVER (PARTITION BY ordering_key ORDER BY (payload->>'n')::int) AS after_previous
FROM axme.intents WHERE to_agent = 'agent://myorg/prod/ord' AND status <> 'COMPLETED'
ORDER BY (payload->>'n')::int;
-- only the head of each key, and the unkeyed one
SELECT pg_temp.poll() AS handed_out;
SELECT pg_temp.poll() AS while_heads_are_held;

-- a retrying head blocks only its key: 1 goes back, 2 stays waiting; 4 completes and k2 is empty
SELECT axme.fail(pg_temp.id(1), '{"message": "again"}', true, 1) AS retry_1;
SELECT axme.complete(pg_temp.id(4), '{}', 1) AS done_4;
SELECT axme.send_intent(pg_temp.doc(6, '{"ordering_key": "k2"}')) IS NOT NULL AS sent_6;
UPDATE axme.intents SET due_at = now() WHERE intent_id = pg_temp.id(1);
SELECT pg_temp.poll() AS handed_out;

-- the head completes: the next of its key becomes due
SELECT axme.complete(pg_temp.id(1), '{}', pg_temp.att(1)) AS done_1;
SELECT pg_temp.poll() AS handed_out;
-- a failed head (fail without retry, as a dead letter) releases the next
SELECT axme.fail(pg_temp.id(2), '{"message": "no"}', false, pg_temp.att(2)) AS dead_2;
SELECT status FROM axme.intents WHERE intent_id = pg_temp.id(2);
SELECT pg_temp.poll() AS handed_out;

-- a canceled waiting intent does not release the one behind it; a canceled head does
SELECT axme.send_intent(pg_temp.doc(7, '{"ordering_key": "k1"}')) IS NOT NULL AS sent_7;
SELECT axme.send_intent(pg_temp.doc(8, '{"ordering_key": "k1"}')) IS NOT NULL AS sent_8;
SELECT axme.cancel(pg_temp.id(7), 'not needed') AS cancel_7;
SELECT pg_temp.poll() AS handed_out;
SELECT axme.cancel(pg_temp.id(3), 'stop') AS cancel_head_3;
SELECT pg_temp.poll() AS handed_out;

-- ordering beats priority: 10 of priority 100 waits behind 9 of priority 0
SELECT axme.send_intent(pg_temp.doc(9, '{"ordering_key": "k4"}')) IS NOT NULL AS sent_9;
SELECT axme.send_intent(pg_temp.doc(10, '{"ordering_key": "k4", "priority": 100}')) IS NOT NULL AS sent_10;
SELECT pg_temp.poll() AS handed_out;
SELECT payload->>'n' AS n, status, ordering_key, priority, due_at IS NOT NULL AS due
FROM axme.intents WHERE to_agent = 'agent://myorg/prod/ord' AND (payload->>'n')::int > 0
ORDER BY (payload->>'n')::int;
-- the events of a released intent are the ordinary ones
SELECT string_agg(event_type, ' ' ORDER BY seq) AS events_8 FROM axme.intent_events(pg_temp.id(8));
