-- send: send_intent validation (every field), payload limit, budgets, idempotency keys,
-- get_intent and intent_events.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql
LOAD 'axme';

-- try_send(intent, key, arg): the SQLSTATE of send_intent(intent, key) ('ok' when it succeeds)
-- and whether the error message names arg, as every refusal must name what it refuses.
CREATE FUNCTION pg_temp.try_send(intent jsonb, key text, arg text, OUT state text, OUT names_arg boolean)
LANGUAGE plpgsql AS $f$
DECLARE
    msg text;
BEGIN
    PERFORM axme.send_intent(intent, key);
    state := 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    names_arg := arg IS NULL OR position(arg IN msg) > 0;
END $f$;

SELECT axme.register_agent('agent://myorg/prod/orders');
SELECT axme.register_agent('agent://myorg/prod/budget7', 'poll', NULL, '{"retry": {"max_attempts": 7}}');
SELECT axme.register_agent('agent://myorg/prod/send-streamer', 'stream');

-- A valid send: the intent is SUBMITTED and has events 1 (created) and 2 (submitted).
SELECT axme.send_intent('{"intent_type": "intent.order.process.v1",
                          "to_agent": "agent://myorg/prod/orders",
                          "payload": {"order": "ORD-1", "total": 42.5}}') AS id1 \gset
\x on
SELECT (d->>'intent_id')::uuid = :'id1' AS id_matches, d->>'intent_type' AS intent_type,
       d->'from_agent' AS from_agent, d->>'to_agent' AS to_agent,
       d->>'sender_role' = current_user AS sender_is_me,
       (d->>'correlation_id')::uuid IS NOT NULL AS correlation_generated, d->'reply_to' AS reply_to,
       d->'payload' AS payload, d->>'status' AS status, d->'waiting_reason' AS waiting_reason,
       d->'attempt' AS attempt, d->'max_delivery_attempts' AS max_delivery_attempts,
       d->'result' AS result, d->'error' AS error, d->'dead_letter_reason' AS dead_letter_reason,
       (d->>'created_at')::timestamptz <= now() AS created_ok,
       (d->>'updated_at')::timestamptz = (d->>'created_at')::timestamptz AS updated_ok,
       d->'deadline_at' AS deadline_at, d->'not_before' AS not_before,
       (d->>'next_attempt_at')::timestamptz <= now() AS due_now, d->'lease_until' AS lease_until,
       d->'human_task' AS human_task
FROM axme.get_intent(:'id1') d;
\x off
-- exactly the keys of the contract
SELECT k AS missing_key FROM unnest(ARRAY['intent_id', 'intent_type', 'from_agent', 'to_agent',
    'sender_role', 'correlation_id', 'reply_to', 'payload', 'status', 'waiting_reason', 'attempt',
    'max_delivery_attempts', 'result', 'error', 'dead_letter_reason', 'created_at', 'updated_at',
    'deadline_at', 'not_before', 'next_attempt_at', 'lease_until', 'human_task']) k
EXCEPT SELECT jsonb_object_keys(axme.get_intent(:'id1'));
SELECT seq, event_type, status, actor = current_user AS by_me, at <= clock_timestamp() AS at_ok
FROM axme.intent_events(:'id1');
SELECT seq, event_type FROM axme.intent_events(:'id1', 1);
SELECT count(*) FROM axme.intent_events(:'id1', 2);
SELECT count(*) FROM axme.intent_events(:'id1', 1000);

-- Every optional field is stored and shown (human_task: see test/sql/inbox.sql; reply_to and
-- escalate_to must be registered, escalate_to as an inbox).
SELECT axme.register_agent('agent://myorg/prod/shop-replies');
SELECT axme.register_agent('agent://myorg/prod/manager', 'inbox');
BEGIN;
SELECT axme.send_intent(jsonb_build_object(
    'intent_type', 'intent.order.ship.v2', 'to_agent', 'agent://myorg/prod/orders',
    'payload', jsonb_build_object('order', 'ORD-2'),
    'from_agent', 'agent://myorg/prod/shop', 'reply_to', 'agent://myorg/prod/shop-replies',
    'correlation_id', '9b2e1c3a-7f4d-4e5b-8a6c-0d1e2f3a4b5c',
    'deadline_at', now() + interval '1 day', 'not_before', now() + interval '1 hour',
    'max_delivery_attempts', 9, 'remind_after_seconds', 30, 'remind_interval_seconds', 60,
    'max_reminders', 3, 'escalate_to', 'agent://myorg/prod/manager')) AS id2 \gset
\x on
SELECT d->>'from_agent' AS from_agent, d->>'reply_to' AS reply_to,
       d->>'correlation_id' AS correlation_id, d->>'status' AS status,
       (d->>'deadline_at')::timestamptz = now() + interval '1 day' AS deadline_kept,
       (d->>'not_before')::timestamptz = now() + interval '1 hour' AS not_before_kept,
       (d->>'next_attempt_at')::timestamptz = now() + interval '1 hour' AS due_at_not_before,
       d->'max_delivery_attempts' AS max_delivery_attempts, d->'human_task' AS human_task
FROM axme.get_intent(:'id2') d;
\x off
SELECT remind_after_seconds, remind_interval_seconds, max_reminders, escalate_to
FROM axme.intents WHERE intent_id = :'id2';
COMMIT;

-- Validation: each refusal has its SQLSTATE and names the offending field.
SELECT count(*) AS intents_before FROM axme.intents \gset
SELECT case_name, r.*
FROM (VALUES
    ('intent NULL',                 NULL::jsonb, NULL::text, 'intent'),
    ('intent is an array',          '[]', NULL, 'intent'),
    ('intent is a string',          '"x"', NULL, 'intent'),
    ('unknown field',               '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "urgency": 1}', NULL, 'urgency'),
    ('intent_type missing',         '{"to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type null',            '{"intent_type": null, "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type number',          '{"intent_type": 5, "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type empty',           '{"intent_type": "", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type upper case',      '{"intent_type": "Intent.Order.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type one segment',     '{"intent_type": "order.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type no version',      '{"intent_type": "intent.order", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type bare v',          '{"intent_type": "intent.order.v", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type empty segment',   '{"intent_type": "intent..order.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type trailing dot',    '{"intent_type": "intent.order.v1.", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type dash',            '{"intent_type": "intent.order-x.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, 'intent_type'),
    ('intent_type 256 chars',       jsonb_build_object('intent_type', repeat('a', 251) || '.b.v1', 'to_agent', 'agent://myorg/prod/orders', 'payload', '{}'::jsonb), NULL, 'intent_type'),
    ('intent_type 255 chars',       jsonb_build_object('intent_type', repeat('a', 250) || '.b.v1', 'to_agent', 'agent://myorg/prod/orders', 'payload', '{}'::jsonb), NULL, NULL),
    ('intent_type a.b.v10',         '{"intent_type": "a.b.v10", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, NULL),
    ('intent_type with _ and 0-9',  '{"intent_type": "x_1.y_2.z3.v0", "to_agent": "agent://myorg/prod/orders", "payload": {}}', NULL, NULL),
    ('to_agent missing',            '{"intent_type": "intent.a.v1", "payload": {}}', NULL, 'to_agent'),
    ('to_agent null',               '{"intent_type": "intent.a.v1", "to_agent": null, "payload": {}}', NULL, 'to_agent'),
    ('to_agent number',             '{"intent_type": "intent.a.v1", "to_agent": 7, "payload": {}}', NULL, 'to_agent'),
    ('to_agent malformed',          '{"intent_type": "intent.a.v1", "to_agent": "orders", "payload": {}}', NULL, 'to_agent'),
    ('to_agent 1-char name',        '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/o", "payload": {}}', NULL, 'to_agent'),
    ('to_agent not registered',     '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/nobody", "payload": {}}', NULL, 'agent://myorg/prod/nobody'),
    ('payload missing',             '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders"}', NULL, 'payload'),
    ('payload null',                '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": null}', NULL, 'payload'),
    ('payload array',               '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": [1]}', NULL, 'payload'),
    ('payload string',              '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": "x"}', NULL, 'payload'),
    ('payload number',              '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": 1}', NULL, 'payload'),
    ('from_agent malformed',        '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "from_agent": "shop"}', NULL, 'from_agent'),
    ('from_agent number',           '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "from_agent": 1}', NULL, 'from_agent'),
    ('reply_to malformed',          '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "reply_to": "agent://x/y/z"}', NULL, 'reply_to'),
    ('escalate_to malformed',       '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "escalate_to": "boss"}', NULL, 'escalate_to'),
    ('correlation_id not a uuid',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "correlation_id": "order-7"}', NULL, NULL),
    ('correlation_id empty',        '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "correlation_id": ""}', NULL, NULL),
    ('deadline_at garbage',         '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "deadline_at": "soon"}', NULL, 'deadline_at'),
    ('deadline_at number',          '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "deadline_at": 1700000000}', NULL, 'deadline_at'),
    ('deadline_at in the past',     '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "deadline_at": "2001-01-01T00:00:00Z"}', NULL, 'deadline_at'),
    ('not_before garbage',          '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "not_before": "later"}', NULL, 'not_before'),
    ('not_before infinity',         '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "not_before": "infinity"}', NULL, 'not_before'),
    ('deadline_at infinity',        '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "deadline_at": "infinity"}', NULL, 'deadline_at'),
    ('max_delivery_attempts 3.0',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": 3.0}', NULL, 'max_delivery_attempts'),
    ('not_before after deadline',   jsonb_build_object('intent_type', 'intent.a.v1', 'to_agent', 'agent://myorg/prod/orders', 'payload', '{}'::jsonb, 'deadline_at', now() + interval '1 hour', 'not_before', now() + interval '2 hours'), NULL, 'not_before'),
    ('max_delivery_attempts 0',     '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": 0}', NULL, 'max_delivery_attempts'),
    ('max_delivery_attempts 1001',  '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": 1001}', NULL, 'max_delivery_attempts'),
    ('max_delivery_attempts 2.5',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": 2.5}', NULL, 'max_delivery_attempts'),
    ('max_delivery_attempts "3"',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": "3"}', NULL, 'max_delivery_attempts'),
    ('remind_after_seconds 0',      '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "remind_after_seconds": 0}', NULL, 'remind_after_seconds'),
    ('remind_interval_seconds -5',  '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "remind_interval_seconds": -5}', NULL, 'remind_interval_seconds'),
    ('max_reminders -1',            '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_reminders": -1}', NULL, 'max_reminders'),
    ('max_reminders "x"',           '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_reminders": "x"}', NULL, 'max_reminders'),
    ('human_task string',           '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "human_task": "x"}', NULL, 'human_task'),
    ('human_task array',            '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "human_task": []}', NULL, 'human_task'),
    ('idempotency_key empty',       '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', '', 'idempotency_key'),
    ('idempotency_key 7 chars',     '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', 'abcdefg', 'idempotency_key'),
    ('idempotency_key 129 chars',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', repeat('k', 129), 'idempotency_key'),
    ('idempotency_key 8 chars',     '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', 'abcdefgh', NULL),
    ('idempotency_key 128 chars',   '{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}', repeat('k', 128), NULL)
) AS t(case_name, intent, key, arg), LATERAL pg_temp.try_send(intent, key, arg) r;
-- the P0002 for an unregistered receiver says how to register it
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/nobody", "payload": {}}')$$, NULL, true);
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "correlation_id": "order-7"}')$$);
-- only the five 'ok' cases above wrote anything, each an intent with its two events
SELECT count(*) - :intents_before AS new_intents FROM axme.intents;
SELECT count(*) AS intents_without_two_events FROM axme.intents i
WHERE i.to_agent = 'agent://myorg/prod/orders'
  AND (SELECT count(*) FROM axme.events e WHERE e.intent_id = i.intent_id) <> 2;

-- Payload limit: axme.max_payload_bytes (default 131072) octets of the payload's JSON text.
SELECT n, octet_length(jsonb_build_object('x', repeat('a', n))::text) AS octets, r.*
FROM (VALUES (131072 - 9), (131072 - 8)) AS t(n),
     LATERAL pg_temp.try_send(jsonb_build_object('intent_type', 'intent.big.v1', 'to_agent', 'agent://myorg/prod/orders',
                              'payload', jsonb_build_object('x', repeat('a', n))), NULL, 'payload') r;
SET axme.max_payload_bytes = 20;
SELECT c, n, octet_length(jsonb_build_object('x', repeat(c, n))::text) AS octets, r.*
FROM (VALUES ('a', 11), ('a', 12), ('é', 5), ('é', 6)) AS t(c, n),
     LATERAL pg_temp.try_send(jsonb_build_object('intent_type', 'intent.small.v1', 'to_agent', 'agent://myorg/prod/orders',
                              'payload', jsonb_build_object('x', repeat(c, n))), NULL, 'payload') r;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.small.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"x": "123456789012345"}}')$$);
RESET axme.max_payload_bytes;

-- Attempt budget: the intent's max_delivery_attempts, else the agent's retry.max_attempts,
-- else axme.max_delivery_attempts (default 5).
-- (budget_of sends in one statement and reads in the next: a STABLE get_intent nested in the
-- sending statement would read that statement's snapshot, taken before the send.)
CREATE FUNCTION pg_temp.budget_of(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $f$
DECLARE
    id uuid := axme.send_intent(intent);
BEGIN
    RETURN axme.get_intent(id)->'max_delivery_attempts';
END $f$;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}') AS guc_default;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/budget7", "payload": {}}') AS agent_option;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/budget7", "payload": {}, "max_delivery_attempts": 2}') AS intent_field;
SET axme.max_delivery_attempts = 3;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}}') AS guc_set;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/budget7", "payload": {}}') AS agent_beats_guc;
SELECT pg_temp.budget_of('{"intent_type": "intent.a.v1", "to_agent": "agent://myorg/prod/orders", "payload": {}, "max_delivery_attempts": 1}') AS intent_beats_guc;
RESET axme.max_delivery_attempts;

-- A rolled-back send never existed, also in a rolled-back subtransaction.
BEGIN;
SELECT axme.send_intent('{"intent_type": "intent.rollback.v1", "to_agent": "agent://myorg/prod/send-streamer", "payload": {}}') IS NOT NULL AS sent;
ROLLBACK;
BEGIN;
SELECT axme.send_intent('{"intent_type": "intent.rollback.v1", "to_agent": "agent://myorg/prod/send-streamer", "payload": {"n": 1}}') IS NOT NULL AS sent;
SAVEPOINT s;
SELECT axme.send_intent('{"intent_type": "intent.rollback.v1", "to_agent": "agent://myorg/prod/send-streamer", "payload": {"n": 2}}') IS NOT NULL AS sent;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT count(*) AS intents, array_agg(payload->>'n') AS kept
FROM axme.intents WHERE intent_type = 'intent.rollback.v1';

-- Idempotency: (coalesce(from_agent, sender_role), key) -> one intent.
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') AS k1 \gset
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') = :'k1' AS same_key_same_intent;
SELECT axme.send_intent('{"payload": {"amount": 10, "order": "K-1"},   "to_agent": "agent://myorg/prod/orders", "intent_type": "intent.pay.v1"}',
                        'pay-K-1-0001') = :'k1' AS same_intent_other_key_order;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 11}}', 'pay-K-1-0001')$$);
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.refund.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}', 'pay-K-1-0001')$$);
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/budget7", "payload": {"order": "K-1", "amount": 10}}', 'pay-K-1-0001')$$);
SELECT count(*) AS intents_for_k1 FROM axme.intents WHERE payload->>'order' = 'K-1';
-- keys are case sensitive and scoped by from_agent
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'PAY-K-1-0001') <> :'k1' AS other_key_new_intent;
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "from_agent": "agent://myorg/prod/shop-a", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') AS k2 \gset
SELECT :'k2' <> :'k1' AS from_agent_scopes_key;
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "from_agent": "agent://myorg/prod/shop-a", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') = :'k2' AS same_from_agent_same_intent;
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "from_agent": "agent://myorg/prod/shop-b", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') NOT IN (:'k1', :'k2') AS other_from_agent_new_intent;
-- the key keeps returning the original intent after it is finished, and does not resend it
SELECT axme.complete(:'k1', '{"paid": true}');
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') = :'k1' AS same_after_complete;
SELECT (axme.get_intent(:'k1'))->>'status' AS status;
SELECT count(*) AS intents_for_k1 FROM axme.intents WHERE payload->>'order' = 'K-1';

-- sender_role is the role the session runs as (SET ROLE counts); without from_agent the key is
-- scoped to it.
SET client_min_messages = warning;
DROP ROLE IF EXISTS axme_regress_sender;
RESET client_min_messages;
CREATE ROLE axme_regress_sender;
GRANT axme_sender TO axme_regress_sender;
SET ROLE axme_regress_sender;
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') AS k3 \gset
SELECT axme.send_intent('{"intent_type": "intent.pay.v1", "to_agent": "agent://myorg/prod/orders", "payload": {"order": "K-1", "amount": 10}}',
                        'pay-K-1-0001') = :'k3' AS same_role_same_intent;
RESET ROLE;
SELECT :'k3' NOT IN (:'k1', :'k2') AS role_scopes_key;
SELECT d->>'sender_role' AS sender_role FROM axme.get_intent(:'k3') d;
SELECT seq, event_type, actor FROM axme.intent_events(:'k3');
SELECT (axme.get_intent(:'k1'))->>'sender_role' = current_user AS k1_sent_by_me;
REVOKE axme_sender FROM axme_regress_sender;
DROP ROLE axme_regress_sender;

-- get_intent and intent_events arguments.
SELECT pg_temp.err($$SELECT axme.get_intent(NULL)$$);
SELECT pg_temp.err($$SELECT axme.get_intent('00000000-0000-0000-0000-000000000000')$$);
SELECT pg_temp.err($$SELECT axme.get_intent('not-a-uuid')$$);
SELECT pg_temp.err($$SELECT * FROM axme.intent_events(NULL)$$);
SELECT pg_temp.err($$SELECT * FROM axme.intent_events($1, NULL)$$, :'id1');
SELECT pg_temp.err($$SELECT * FROM axme.intent_events($1, -1)$$, :'id1');
SELECT pg_temp.err($$SELECT * FROM axme.intent_events('00000000-0000-0000-0000-000000000000')$$);
SELECT pg_temp.err($$SELECT * FROM axme.intent_events('not-a-uuid')$$);
