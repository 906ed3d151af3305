-- wait_for: arguments, immediate return for a terminal intent, NULL on timeout, refusals inside
-- the sending transaction and above READ COMMITTED, statement_timeout.  (Wake-ups by another
-- session's commit are in the isolation spec wait_for_wakeup and test/python/test_wait_for.py.)
-- Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

SELECT axme.register_agent('agent://myorg/prod/waiter');
SELECT axme.register_agent('agent://myorg/prod/waiter-late');
SELECT axme.register_agent('agent://myorg/prod/waiter-held');
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 1}}') AS open_id \gset
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 2}}') AS done_id \gset
SELECT axme.complete(:'done_id', '{"total": 42}');

-- Arguments: timeout 0 .. 1 hour.
SELECT f AS call, pg_temp.err(f, :'done_id') AS result
FROM unnest(ARRAY[
    'SELECT axme.wait_for(NULL)',
    'SELECT axme.wait_for($1, NULL)',
    'SELECT axme.wait_for($1, ''-1 second'')',
    'SELECT axme.wait_for($1, ''1 hour 1 second'')',
    'SELECT axme.wait_for($1, ''1 month'')',
    'SELECT axme.wait_for($1, ''2 days'')',
    'SELECT axme.wait_for(''00000000-0000-0000-0000-000000000000'')',
    'SELECT axme.wait_for(''not-a-uuid'')',
    'SELECT axme.wait_for($1, ''1 hour'')',
    'SELECT axme.wait_for($1, ''0'')',
    'SELECT axme.wait_for($1)'
]) f;

-- A terminal intent: the get_intent document at once, whatever the timeout.
SELECT d->>'status' AS status, d->'result' AS result, d = axme.get_intent(:'done_id') AS same_as_get_intent
FROM axme.wait_for(:'done_id', '0') d;
SELECT (axme.wait_for(:'done_id', '1 hour'))->>'status' AS status, clock_timestamp() - now() < interval '1 minute' AS returned;

-- Not terminal: NULL when the timeout passes first (and not before it).
SELECT axme.wait_for(:'open_id', '0') IS NULL AS timed_out;
SELECT axme.wait_for(:'open_id', '200 milliseconds') IS NULL AS timed_out,
       clock_timestamp() - now() >= interval '200 milliseconds' AS waited_the_timeout;

-- Every terminal status ends the wait: FAILED, CANCELED, a dead letter, TIMED_OUT.
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 3}}') AS failed_id \gset
SELECT axme.fail(:'failed_id', '{"code": "x"}');
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 4}}') AS canceled_id \gset
SELECT axme.resolve(:'canceled_id', 'CANCELED');
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 5}, "max_delivery_attempts": 1}') AS dead_id \gset
SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.wait.v1', 'to_agent', 'agent://myorg/prod/waiter-late',
       'payload', jsonb_build_object('n', 6), 'deadline_at', clock_timestamp() + interval '1 second')) AS late_id \gset
SELECT axme.complete(:'open_id');
SELECT count(*) AS handed_out FROM axme.poll('agent://myorg/prod/waiter', 10);
SELECT axme.fail(:'dead_id', '{"code": "y"}', true, 1);
SELECT pg_sleep(1.2);
SELECT count(*) AS handed_out FROM axme.poll('agent://myorg/prod/waiter-late', 10);
SELECT d->>'status' AS status, d->>'dead_letter_reason' AS dead_letter_reason, d->'error' AS error
FROM unnest(ARRAY[:'failed_id', :'canceled_id', :'dead_id', :'late_id']::uuid[]) WITH ORDINALITY AS t(id, n),
     LATERAL axme.wait_for(id, '10 seconds') d ORDER BY n;
-- a replayed intent is no longer terminal: a new wait_for waits again
SELECT axme.replay(:'dead_id');
SELECT axme.wait_for(:'dead_id', '0') IS NULL AS waits_again;

-- Refused (55000) in the transaction that sent or changed the intent: its commit could never
-- become visible to the waiter.
BEGIN;
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter", "payload": {"n": 7}}') AS mine_id \gset
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 second'')', :'mine_id', true);
ROLLBACK;
SELECT axme.send_intent('{"intent_type": "intent.wait.v1", "to_agent": "agent://myorg/prod/waiter-held", "payload": {"n": 8}}') AS held_id \gset
BEGIN;
SELECT count(*) AS claimed FROM axme.poll('agent://myorg/prod/waiter-held', 10);
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 second'')', :'held_id');
-- but a terminal transition made in this transaction is visible to it: returns at once
SELECT axme.complete(:'held_id', '{}', 1);
SELECT (axme.wait_for(:'held_id', '1 second'))->>'status' AS status;
COMMIT;

-- Refused (55000) above READ COMMITTED, where the snapshot cannot see a later commit.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 second'')', :'dead_id', true);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 second'')', :'dead_id');
ROLLBACK;
-- an intent that is already terminal is returned at any level
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT (axme.wait_for(:'done_id', '1 second'))->>'status' AS status;
COMMIT;
-- READ COMMITTED inside an explicit transaction is fine
BEGIN;
SELECT axme.wait_for(:'dead_id', '0') IS NULL AS timed_out;
COMMIT;

-- statement_timeout and query cancel end the wait (57014), long before its own timeout.
SET statement_timeout = '300ms';
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 hour'')', :'dead_id') AS result,
       clock_timestamp() - statement_timestamp() < interval '1 minute' AS long_before_its_timeout;
RESET statement_timeout;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''1 hour'') FROM (SELECT pg_cancel_backend(pg_backend_pid())) s', :'dead_id');
