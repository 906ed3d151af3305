-- timers: the rows send_intent writes to axme.timers, and axme._fire_timers on a deadline.
-- Output must not depend on shared_preload_libraries: the timers here are due in a day (the
-- worker leaves them alone); one is made due inside an open transaction and fired there.
\i test/include/setup.psql

SELECT axme.register_agent('agent://myorg/prod/timers-p', 'poll');
CREATE TEMP TABLE ids (name text, id uuid);

-- No deadline, no reminder: no timer row.
INSERT INTO ids SELECT 'plain', axme.send_intent('{"intent_type": "intent.test.t.v1", "to_agent": "agent://myorg/prod/timers-p", "payload": {}}');
-- A deadline: one 'deadline' row due at deadline_at.
INSERT INTO ids SELECT 'deadline', axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/timers-p', 'payload', '{}'::jsonb, 'deadline_at', now() + interval '1 day'));
-- A reminder: one 'remind' row due remind_after_seconds after creation.
INSERT INTO ids SELECT 'remind', axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/timers-p', 'payload', '{}'::jsonb, 'remind_after_seconds', 86400,
    'remind_interval_seconds', 60, 'max_reminders', 2));
-- Both.
INSERT INTO ids SELECT 'both', axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/timers-p', 'payload', '{}'::jsonb, 'remind_after_seconds', 3600,
    'deadline_at', now() + interval '2 days'));
-- The same idempotent send twice: one intent, one set of timers.
INSERT INTO ids SELECT 'idem', axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/timers-p', 'payload', '{}'::jsonb, 'deadline_at', '2099-01-01T00:00:00Z'), 'timers-key-1');
INSERT INTO ids SELECT 'idem', axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/timers-p', 'payload', '{}'::jsonb, 'deadline_at', '2099-01-01T00:00:00Z'), 'timers-key-1');

SELECT ids.name, t.kind,
       CASE t.kind WHEN 'deadline' THEN t.due_at = i.deadline_at
                   ELSE t.due_at = i.created_at + i.remind_after_seconds * interval '1 second' END AS due_ok
FROM ids JOIN axme.intents i ON i.intent_id = ids.id
LEFT JOIN axme.timers t ON t.intent_id = ids.id
GROUP BY ids.name, t.kind, t.due_at, i.deadline_at, i.created_at, i.remind_after_seconds
ORDER BY 1, 2;
SELECT count(*) AS idem_intents FROM (SELECT DISTINCT id FROM ids WHERE name = 'idem') s;

-- A send that fails leaves no timer behind.
SELECT pg_temp.err($$SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.t.v1',
    'to_agent', 'agent://myorg/prod/nobody', 'payload', '{}'::jsonb, 'deadline_at', now() + interval '1 day'))$$);
SELECT count(*) AS timers FROM axme.timers WHERE intent_id IN (SELECT id FROM ids);  -- other tests' timers share the table

-- Firing: make the deadline due inside this transaction (the worker cannot see it) and fire.
BEGIN;
UPDATE axme.timers SET due_at = now() - interval '1 second'
WHERE intent_id = (SELECT id FROM ids WHERE name = 'deadline');
SELECT axme._fire_timers(50) >= 1 AS fired;  -- and whatever else is due in this database
SELECT status FROM axme.intents WHERE intent_id = (SELECT id FROM ids WHERE name = 'deadline');
SELECT event_type, status, details ? 'deadline_at' AS has_deadline
FROM axme.events WHERE intent_id = (SELECT id FROM ids WHERE name = 'deadline') ORDER BY seq;
SELECT count(*) AS left_for_it FROM axme.timers WHERE intent_id = (SELECT id FROM ids WHERE name = 'deadline');
COMMIT;

-- A timer of a terminal intent is dropped without an event (written again here: a terminal
-- transition may already have deleted it).
SELECT axme.resolve((SELECT id FROM ids WHERE name = 'idem' LIMIT 1), 'CANCELED');
BEGIN;
INSERT INTO axme.timers (intent_id, kind, due_at)
SELECT id, 'deadline', now() - interval '1 second' FROM ids WHERE name = 'idem' LIMIT 1
ON CONFLICT (intent_id, kind) DO UPDATE SET due_at = excluded.due_at;
SELECT axme._fire_timers(50) >= 1 AS fired;  -- and whatever else is due in this database
SELECT count(*) AS left_for_it FROM axme.timers WHERE intent_id = (SELECT id FROM ids WHERE name = 'idem' LIMIT 1);
SELECT event_type FROM axme.events WHERE intent_id = (SELECT id FROM ids WHERE name = 'idem' LIMIT 1) ORDER BY seq;
COMMIT;

-- Nothing is granted to PUBLIC.
SELECT has_table_privilege('public', 'axme.timers', 'SELECT') AS public_reads_timers,
       has_function_privilege('public', 'axme._fire_timers(integer)', 'EXECUTE') AS public_fires;
