-- cancel: the sender ends its own intent (CANCELED, intent.canceled); who may; what the receiver
-- sees after; a task intent's thread closes.  replay_dead_letters by filter (since, until,
-- error_class, max_count).  axme.attempts reads delivery_attempts by agent address.
\i test/include/setup.psql

CREATE TEMP TABLE ids (name text PRIMARY KEY, id uuid NOT NULL UNIQUE);
GRANT ALL ON ids TO PUBLIC;
CREATE FUNCTION pg_temp.send(name text, agent text, extra jsonb DEFAULT '{}') RETURNS text
LANGUAGE sql AS $f$
    INSERT INTO ids VALUES (name, axme.send_intent(jsonb_build_object(
        'intent_type', 'intent.test.' || name || '.v1', 'to_agent', agent,
        'payload', jsonb_build_object('name', name)) || extra))
    RETURNING name
$f$;
CREATE FUNCTION pg_temp.id(name text) RETURNS uuid LANGUAGE sql AS $f$
    SELECT id FROM ids WHERE ids.name = id.name
$f$;
CREATE FUNCTION pg_temp.events(name text) RETURNS TABLE (seq integer, event_type text, status text, actor text, details jsonb)
LANGUAGE sql AS $f$
    SELECT seq, event_type, status, actor, details FROM axme.events WHERE intent_id = pg_temp.id(name) ORDER BY seq
$f$;

SET client_min_messages = warning;
DROP ROLE IF EXISTS cancel_sender_a;
DROP ROLE IF EXISTS cancel_sender_b;
DROP ROLE IF EXISTS cancel_worker;
RESET client_min_messages;
CREATE ROLE cancel_sender_a IN ROLE axme_sender;
CREATE ROLE cancel_sender_b IN ROLE axme_sender;
CREATE ROLE cancel_worker IN ROLE axme_agent;
SELECT axme.register_agent('agent://myorg/prod/canc', 'poll', NULL, '{"db_role": "cancel_worker"}');
SELECT axme.register_agent('agent://myorg/prod/cinbox', 'inbox');

-- arguments
SELECT pg_temp.err($$SELECT axme.cancel(NULL)$$);
SELECT pg_temp.err($$SELECT axme.cancel('00000000-0000-0000-0000-000000000000')$$);

-- the sending role cancels a SUBMITTED intent; another sender and the receiver may not
SET ROLE cancel_sender_a;
SELECT pg_temp.send('c1', 'agent://myorg/prod/canc');
SELECT pg_temp.send('c2', 'agent://myorg/prod/canc');
SELECT pg_temp.send('c3', 'agent://myorg/prod/canc');
SET ROLE cancel_sender_b;
SELECT pg_temp.err('SELECT axme.cancel($1)', pg_temp.id('c1'), true);
SET ROLE cancel_worker;
SELECT pg_temp.err('SELECT axme.cancel($1)', pg_temp.id('c1'));
SET ROLE cancel_sender_a;
SELECT pg_temp.err($$SELECT axme.cancel($1, repeat('x', 2001))$$, pg_temp.id('c1'));
SELECT axme.cancel(pg_temp.id('c1'), 'customer withdrew the order');
SELECT d->>'status' AS status, d->'result' AS result, d->'next_attempt_at' AS next_attempt_at
FROM axme.get_intent(pg_temp.id('c1')) d;
SELECT seq, event_type, status, actor, details FROM pg_temp.events('c1');
-- canceling twice: already terminal
SELECT pg_temp.err('SELECT axme.cancel($1)', pg_temp.id('c1'));
RESET ROLE;

-- a polled (DELIVERED) intent: the receiver's later complete gets 55000; poll hands out the one
-- left (c3), not the canceled c1 and c2
SET ROLE cancel_worker;
SELECT count(*) AS polled FROM axme.poll('agent://myorg/prod/canc', 1);
SET ROLE cancel_sender_a;
SELECT i.name, d->>'status' AS status FROM ids i, axme.get_intent(i.id) d WHERE i.name IN ('c2', 'c3') ORDER BY 1;
SELECT axme.cancel(pg_temp.id('c2'));
SELECT seq, event_type, status, actor, details - 'lease_until' AS details FROM pg_temp.events('c2');
SET ROLE cancel_worker;
SELECT pg_temp.err('SELECT axme.complete($1, ''{}'', 1)', pg_temp.id('c2'));
SELECT pg_temp.err('SELECT axme.ack($1)', pg_temp.id('c2'));
SELECT pg_temp.err('SELECT axme.fail($1, ''{}'', true)', pg_temp.id('c2'));
SELECT count(*) AS polled_after_cancel FROM axme.poll('agent://myorg/prod/canc', 10);
RESET ROLE;
-- an admin may cancel any intent
SELECT axme.cancel(pg_temp.id('c3'), 'by the operator');
SELECT seq, event_type, actor, details FROM pg_temp.events('c3') WHERE event_type = 'intent.canceled';

-- a human task: its thread closes, its timers go
SELECT pg_temp.send('t1', 'agent://myorg/prod/cinbox',
    '{"human_task": {"task_type": "approval", "title": "Approve"}, "deadline_at": "2999-01-01T00:00:00Z"}');
SELECT count(*) AS timers_before FROM axme.timers WHERE intent_id = pg_temp.id('t1');
SELECT axme.cancel(pg_temp.id('t1'), 'not needed');
SELECT count(*) AS timers_after FROM axme.timers WHERE intent_id = pg_temp.id('t1');
SELECT status, outcome->>'status' AS outcome_status FROM axme.threads WHERE intent_id = pg_temp.id('t1');
SELECT pg_temp.err($$SELECT axme.decide($1, 'approved')$$, pg_temp.id('t1'));

-- replay_dead_letters by filter.  Dead letters of four kinds at fixed times.
SELECT axme.register_agent('agent://myorg/prod/dl', 'poll', NULL, '{"db_role": "cancel_worker"}');
SELECT pg_temp.send('d' || g, 'agent://myorg/prod/dl', '{"max_delivery_attempts": 1}') FROM generate_series(1, 8) g;
SELECT count(*) AS polled FROM axme.poll('agent://myorg/prod/dl', 8);
SELECT axme.fail(pg_temp.id('d' || g),
                 jsonb_build_object('class', CASE WHEN g <= 4 THEN 'timeout' ELSE 'connect' END), true, 1)
FROM generate_series(1, 8) g;
UPDATE axme.intents i SET dead_lettered_at = '2026-01-01T00:00:00Z'::timestamptz + (x.g || ' hours')::interval
FROM ids, generate_series(1, 8) x(g) WHERE ids.name = 'd' || x.g AND i.intent_id = ids.id;
SELECT ids.name, i.dead_letter_reason, i.error->>'class' AS class, i.dead_lettered_at
FROM ids JOIN axme.intents i ON i.intent_id = ids.id WHERE ids.name LIKE 'd%' ORDER BY 1;
-- arguments
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://myorg/prod/dl', max_count => 0)$$);
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://myorg/prod/dl', '2026-02-01T00:00:00Z', '2026-01-01T00:00:00Z')$$);
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://myorg/prod/dl', error_class => repeat('x', 101))$$);
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://myorg/prod/nobody')$$);
SET ROLE cancel_sender_a;
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://myorg/prod/dl')$$);
RESET ROLE;
-- the one-argument call is not ambiguous (the two-argument form is gone)
SELECT axme.replay_dead_letters('agent://myorg/prod/dl', until => '2025-01-01T00:00:00Z') AS none_before;
-- [02:00, 04:00) of class timeout: d2, d3
SELECT axme.replay_dead_letters('agent://myorg/prod/dl', '2026-01-01T02:00:00Z', '2026-01-01T04:00:00Z', 'timeout') AS replayed;
-- class connect, at most 2: the oldest two (d5, d6)
SELECT axme.replay_dead_letters('agent://myorg/prod/dl', error_class => 'connect', max_count => 2) AS replayed;
-- a dead-letter reason none of them has: none
SELECT axme.replay_dead_letters('agent://myorg/prod/dl', error_class => 'non_retryable') AS replayed_none;
SELECT ids.name, d->>'status' AS status FROM ids, axme.get_intent(ids.id) d WHERE ids.name LIKE 'd%' ORDER BY 1;
-- by dead-letter reason: every one left (d1, d4, d7, d8)
SELECT axme.replay_dead_letters('agent://myorg/prod/dl', error_class => 'exhausted') AS replayed;
SELECT axme.replay_dead_letters('agent://myorg/prod/dl') AS nothing_left;
SELECT count(*) FILTER (WHERE event_type = 'intent.replayed') AS replayed_events
FROM axme.events WHERE intent_id IN (SELECT id FROM ids WHERE name LIKE 'd%');
-- more than one batch (1000) with max_count NULL
SELECT axme.register_agent('agent://myorg/prod/dl2', 'poll');
SELECT count(pg_temp.send('b' || g, 'agent://myorg/prod/dl2', '{"max_delivery_attempts": 1}')) AS sent FROM generate_series(1, 1500) g;
SELECT count(*) AS polled FROM axme.poll('agent://myorg/prod/dl2', 1500);
SELECT count(axme.fail(id, '{}', true, 1)) AS failed FROM ids WHERE name LIKE 'b%';
SELECT axme.replay_dead_letters('agent://myorg/prod/dl2') AS replayed_all;
SELECT count(*) AS submitted FROM axme.intents i JOIN ids ON ids.id = i.intent_id WHERE ids.name LIKE 'b%' AND i.status = 'SUBMITTED';

-- axme.attempts: delivery_attempts by agent address
SELECT axme.register_agent('agent://myorg/prod/atth', 'http', 'https://example.com/hook');
INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms, http_status, error_class)
SELECT pg_temp.id('c1'), 1, agent_id, '2026-01-01', 12.5, 503, 'http' FROM axme.agents WHERE address = 'agent://myorg/prod/atth';
SELECT intent_id = pg_temp.id('c1') AS same_intent, attempt, agent, http_status, error_class
FROM axme.attempts WHERE agent = 'agent://myorg/prod/atth';
SELECT has_table_privilege('axme_sender', 'axme.attempts', 'SELECT') AS sender_may_read,
       has_table_privilege('axme_agent', 'axme.attempts', 'SELECT') AS agent_may_read;
DELETE FROM axme.delivery_attempts WHERE intent_id = pg_temp.id('c1');

-- leave nothing behind for the tests that count rows of the whole database
DELETE FROM axme.thread_messages WHERE thread_id IN (SELECT thread_id FROM axme.threads WHERE intent_id IN (SELECT id FROM ids));
DELETE FROM axme.inbox_feed WHERE thread_id IN (SELECT thread_id FROM axme.threads WHERE intent_id IN (SELECT id FROM ids));
SELECT axme._delete_intents(ARRAY(SELECT id FROM ids))->>'intents' AS deleted;
SELECT axme.unregister_agent(a, true) FROM unnest(ARRAY['agent://myorg/prod/canc', 'agent://myorg/prod/cinbox',
    'agent://myorg/prod/dl', 'agent://myorg/prod/dl2', 'agent://myorg/prod/atth']) a;
DROP ROLE cancel_sender_a;
DROP ROLE cancel_sender_b;
DROP ROLE cancel_worker;
