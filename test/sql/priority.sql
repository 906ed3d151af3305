-- priority: -100..100 (default 0), validated at send (22023 naming the field); among due intents
-- of one agent higher priority is handed out first, FIFO by due time within a priority, a retry
-- goes behind; the same for send_intents.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

SELECT axme.register_agent('agent://myorg/prod/prio', 'poll');
CREATE FUNCTION pg_temp.doc(n integer, extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_build_object('intent_type', 'intent.prio.v1', 'to_agent', 'agent://myorg/prod/prio',
                              'payload', jsonb_build_object('n', n)) || extra
$f$;

-- refused at send (22023), nothing stored
SELECT v AS priority, pg_temp.err(format('SELECT axme.send_intent(%L)', pg_temp.doc(0, jsonb_build_object('priority', v)))) AS result
FROM (VALUES ('101'::jsonb), ('-101'), ('1.5'), ('"high"'), ('true')) x(v);
SELECT pg_temp.err(format('SELECT axme.send_intents(ARRAY[%L, %L]::jsonb[])',
                          pg_temp.doc(0), pg_temp.doc(0, '{"priority": 1000}'))) AS batch_element;
SELECT count(*) AS stored FROM axme.intents WHERE to_agent = 'agent://myorg/prod/prio';

-- stored: absent and null are 0, the bounds are accepted
SELECT axme.send_intent(pg_temp.doc(1)) IS NOT NULL AS p0;
SELECT axme.send_intent(pg_temp.doc(2, '{"priority": -100}')) IS NOT NULL AS pm100;
SELECT axme.send_intent(pg_temp.doc(3, '{"priority": 100}')) IS NOT NULL AS p100;
SELECT axme.send_intent(pg_temp.doc(4, '{"priority": 5}')) IS NOT NULL AS p5;
SELECT axme.send_intent(pg_temp.doc(5, '{"priority": null}')) IS NOT NULL AS pnull;
SELECT count(*) AS sent FROM axme.send_intents(ARRAY[pg_temp.doc(6, '{"priority": 5}'), pg_temp.doc(7)]);
SELECT payload->>'n' AS n, priority FROM axme.intents
WHERE to_agent = 'agent://myorg/prod/prio' ORDER BY (payload->>'n')::int;

-- handed out: highest priority first, send order (due time) within a priority
SELECT string_agg(p.payload->>'n', ' ' ORDER BY ord) AS handed_out
FROM axme.poll('agent://myorg/prod/prio', 10) WITH ORDINALITY AS p(intent_id, intent_type, payload, from_agent,
     correlation_id, attempt, lease_until, traceparent, ord);

-- a retry goes behind: FIFO by due time within a priority, and a retry is due after its backoff,
-- so an intent of the same priority sent before the retry became due is handed out first
SELECT count(*) FROM (
    SELECT axme.fail(i.intent_id, '{"message": "again"}', true, i.attempt)
    FROM axme.intents i WHERE i.to_agent = 'agent://myorg/prod/prio' AND i.payload->>'n' = '4') f;
SELECT axme.send_intent(pg_temp.doc(8, '{"priority": 5}')) IS NOT NULL AS p5_later;
SELECT i4.due_at > i8.due_at AS retry_due_after_send
FROM axme.intents i4, axme.intents i8
WHERE i4.payload->>'n' = '4' AND i8.payload->>'n' = '8'
  AND i4.to_agent = 'agent://myorg/prod/prio' AND i8.to_agent = 'agent://myorg/prod/prio';
-- both become due, their order kept; the leased others stay out of the way
UPDATE axme.intents SET due_at = due_at - interval '1 hour'
WHERE to_agent = 'agent://myorg/prod/prio' AND payload->>'n' IN ('4', '8');
SELECT string_agg(p.payload->>'n' || '@' || p.attempt, ' ' ORDER BY ord) AS handed_out
FROM axme.poll('agent://myorg/prod/prio', 10) WITH ORDINALITY AS p(intent_id, intent_type, payload, from_agent,
     correlation_id, attempt, lease_until, traceparent, ord);

-- the next due time of an agent whatever the priority (the workers' look-ups)
SELECT axme._agent_next_due(agent_id, NULL) = (SELECT min(due_at) FROM axme.intents i WHERE i.agent_id = a.agent_id)
       AS next_due_is_min,
       ARRAY(SELECT axme._agent_priorities(agent_id)) AS priorities
FROM axme.agents a WHERE address = 'agent://myorg/prod/prio';
