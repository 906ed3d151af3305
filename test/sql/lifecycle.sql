-- lifecycle: poll, ack, progress, extend_lease, complete, fail, resolve, replay; every transition
-- of REFERENCE.md section 2 that 0.1.0 implements, and the refusals (55000).  Lease expiry,
-- redelivery, stale receipts, dead-lettering after exactly the budget, replay with a fresh
-- budget, deadlines and not_before.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

-- Intents get short names so the output shows which one a row is.
CREATE TEMP TABLE ids (name text PRIMARY KEY, id uuid NOT NULL UNIQUE);
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
CREATE FUNCTION pg_temp.name_of(intent_id uuid) RETURNS text LANGUAGE sql AS $f$
    SELECT coalesce((SELECT name FROM ids WHERE id = intent_id), 'unknown')
$f$;
-- the deterministic part of an intent's state
CREATE FUNCTION pg_temp.state(name text, OUT status text, OUT attempt int, OUT leased boolean,
                              OUT due boolean, OUT result jsonb, OUT error jsonb, OUT dead_letter_reason text)
LANGUAGE sql AS $f$
    SELECT d->>'status', (d->>'attempt')::int, d->'lease_until' <> 'null', d->'next_attempt_at' <> 'null',
           d->'result', d->'error', d->>'dead_letter_reason'
    FROM axme.get_intent(pg_temp.id(name)) d
$f$;
-- the events of an intent (seq, type, status, the attempt in the details)
CREATE FUNCTION pg_temp.events(name text) RETURNS TABLE (seq bigint, event_type text, status text, attempt jsonb)
LANGUAGE sql AS $f$
    SELECT seq, event_type, status, details->'attempt' FROM axme.intent_events(pg_temp.id(name))
$f$;

SELECT axme.register_agent('agent://myorg/prod/life', 'poll', NULL,
                           '{"retry": {"base_delay_ms": 1, "max_delay_ms": 2}}');
SELECT axme.register_agent('agent://myorg/prod/hook', 'http', 'https://example.com/hook');
-- never polled: its intents stay SUBMITTED (an http agent's would be posted by the worker)
SELECT axme.register_agent('agent://myorg/prod/idle', 'poll');
SELECT axme.register_agent('agent://myorg/prod/streamer', 'stream');

-- poll arguments.
SELECT pg_temp.err($$SELECT * FROM axme.poll(NULL)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('life')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/nobody')$$, NULL, true);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 0)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 10001)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', NULL)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', -1)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 1, NULL)$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 1, '999 milliseconds')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 1, '12 hours 1 second')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 1, '-30 seconds')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 10000, '1 second')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/life', 1, '12 hours')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://myorg/prod/hook')$$);
SELECT count(*) AS nothing_due FROM axme.poll('agent://myorg/prod/life', 10);

-- SUBMITTED -> DELIVERED: oldest due first, attempt + 1, a lease; leased intents are not
-- handed out again.  Each send is its own transaction, so each has its own due time.
SELECT pg_temp.send('a', 'agent://myorg/prod/life');
SELECT pg_temp.send('b', 'agent://myorg/prod/life');
SELECT pg_temp.send('c', 'agent://myorg/prod/life');
SELECT pg_temp.name_of(intent_id) AS name, intent_type, payload, from_agent,
       correlation_id = (axme.get_intent(intent_id)->>'correlation_id')::uuid AS correlation_ok,
       attempt, lease_until BETWEEN now() + interval '5 minutes' AND clock_timestamp() + interval '5 minutes' AS lease_ok
FROM axme.poll('agent://myorg/prod/life', 2, '5 minutes');
SELECT * FROM pg_temp.state('a');
SELECT * FROM pg_temp.events('a');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10, '5 minutes');
SELECT count(*) AS nothing_due FROM axme.poll('agent://myorg/prod/life', 10, '5 minutes');

-- DELIVERED -> ACKNOWLEDGED -> IN_PROGRESS -> COMPLETED, extend_lease on the way.
SELECT axme.ack(pg_temp.id('a'), 1);
SELECT pg_temp.err('SELECT axme.ack($1, 1)', pg_temp.id('a'));
SELECT axme.progress(pg_temp.id('a'), '{"step": "charging"}', 1);
SELECT pg_temp.err('SELECT axme.progress($1, ''{}'', 1)', pg_temp.id('a'));
SELECT pg_temp.err('SELECT axme.ack($1, 1)', pg_temp.id('a'));
BEGIN;
SELECT pg_sleep(1.1);
-- leases run from the clock, not from the start of the transaction (which is 1.1 s old here)
SELECT axme.extend_lease(pg_temp.id('a'), '10 minutes', 1) > now() + interval '10 minutes 1 second' AS extended;
SELECT (axme.get_intent(pg_temp.id('a'))->>'lease_until')::timestamptz > now() + interval '10 minutes 1 second' AS lease_moved;
COMMIT;
SELECT axme.complete(pg_temp.id('a'), '{"charged": 42.5}', 1);
SELECT * FROM pg_temp.state('a');
SELECT * FROM pg_temp.events('a');
SELECT details->'progress' AS progress FROM axme.intent_events(pg_temp.id('a')) WHERE event_type = 'intent.in_progress';
-- nothing leaves a terminal status (a second terminal transition included)
SELECT f AS call, pg_temp.err(f, pg_temp.id('a')) AS result
FROM unnest(ARRAY[
    'SELECT axme.complete($1)',
    'SELECT axme.complete($1, ''{}'', 1)',
    'SELECT axme.fail($1)',
    'SELECT axme.fail($1, ''{}'', true)',
    'SELECT axme.resolve($1, ''CANCELED'')',
    'SELECT axme.resolve($1, ''COMPLETED'')',
    'SELECT axme.ack($1)',
    'SELECT axme.progress($1)',
    'SELECT axme.extend_lease($1, ''1 minute'')',
    'SELECT axme.replay($1)'
]) f;
SELECT * FROM pg_temp.state('a');
SELECT count(*) AS events_of_a FROM axme.intent_events(pg_temp.id('a'));

-- DELIVERED -> FAILED by the receiver's decision (retry => false): not a dead letter.
SELECT axme.fail(pg_temp.id('b'), '{"code": "out_of_stock"}', false, 1);
SELECT * FROM pg_temp.state('b');
SELECT * FROM pg_temp.events('b');
SELECT count(*) AS dead_letters FROM axme.dead_letters WHERE intent_id = pg_temp.id('b');
SELECT pg_temp.err('SELECT axme.replay($1)', pg_temp.id('b'));

-- DELIVERED -> ACKNOWLEDGED with the receipt; a wrong receipt is refused; -> CANCELED by resolve.
SELECT pg_temp.err('SELECT axme.ack($1, 2)', pg_temp.id('c'));
SELECT axme.ack(pg_temp.id('c'), 1);
SELECT axme.resolve(pg_temp.id('c'), 'CANCELED', '{"why": "duplicate order"}');
SELECT * FROM pg_temp.state('c');
SELECT * FROM pg_temp.events('c');

-- Refusals on a SUBMITTED intent; any non-terminal status may end COMPLETED/FAILED/CANCELED.
SELECT pg_temp.send('d', 'agent://myorg/prod/idle');
SELECT f AS call, pg_temp.err(f, pg_temp.id('d')) AS result
FROM unnest(ARRAY[
    'SELECT axme.ack($1)',
    'SELECT axme.ack($1, 0)',
    'SELECT axme.progress($1)',
    'SELECT axme.extend_lease($1, ''1 minute'')',
    'SELECT axme.fail($1, ''{}'', true)',
    'SELECT axme.replay($1)'
]) f;
SELECT * FROM pg_temp.state('d');
SELECT axme.complete(pg_temp.id('d'), '{"done": "without a hand-out"}');
SELECT * FROM pg_temp.state('d');
SELECT pg_temp.send('e', 'agent://myorg/prod/idle');
SELECT axme.resolve(pg_temp.id('e'), 'FAILED', '{"reason": "order withdrawn"}');
SELECT * FROM pg_temp.state('e');
SELECT pg_temp.send('e2', 'agent://myorg/prod/idle');
SELECT axme.fail(pg_temp.id('e2'), '{"reason": "refused"}');
SELECT * FROM pg_temp.state('e2');
SELECT * FROM pg_temp.events('e2');

-- Argument errors of the receiving functions.
SELECT f AS call, pg_temp.err(f, pg_temp.id('d')) AS result
FROM unnest(ARRAY[
    'SELECT axme.ack(NULL)',
    'SELECT axme.ack(''00000000-0000-0000-0000-000000000000'')',
    'SELECT axme.ack(''not-a-uuid'')',
    'SELECT axme.progress(NULL)',
    'SELECT axme.extend_lease(NULL, ''1 minute'')',
    'SELECT axme.extend_lease($1, NULL)',
    'SELECT axme.extend_lease($1, ''999 milliseconds'')',
    'SELECT axme.extend_lease($1, ''12 hours 1 second'')',
    'SELECT axme.extend_lease(''00000000-0000-0000-0000-000000000000'', ''1 minute'')',
    'SELECT axme.complete(NULL)',
    'SELECT axme.complete(''00000000-0000-0000-0000-000000000000'')',
    'SELECT axme.complete(''not-a-uuid'')',
    'SELECT axme.fail(NULL)',
    'SELECT axme.fail($1, ''{}'', NULL)',
    'SELECT axme.fail(''00000000-0000-0000-0000-000000000000'')',
    'SELECT axme.resolve(NULL, ''CANCELED'')',
    'SELECT axme.resolve($1, NULL)',
    'SELECT axme.resolve($1, ''DONE'')',
    'SELECT axme.resolve($1, ''completed'')',
    'SELECT axme.resolve($1, ''TIMED_OUT'')',
    'SELECT axme.resolve($1, ''SUBMITTED'')',
    'SELECT axme.resolve(''00000000-0000-0000-0000-000000000000'', ''CANCELED'')',
    'SELECT axme.replay(NULL)',
    'SELECT axme.replay(''00000000-0000-0000-0000-000000000000'')'
]) f;

-- A failed attempt (fail with retry => true) goes back to SUBMITTED after a backoff; the last
-- allowed attempt dead-letters the intent (budget 2 here); replay gives a fresh budget.
SELECT pg_temp.send('f', 'agent://myorg/prod/life', '{"max_delivery_attempts": 2}');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.fail(pg_temp.id('f'), '{"code": "timeout"}', true, 1);
SELECT * FROM pg_temp.state('f');
SELECT pg_sleep(0.05);
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.fail(pg_temp.id('f'), '{"code": "timeout again"}', true, 2);
SELECT * FROM pg_temp.state('f');
SELECT pg_temp.name_of(intent_id) AS name, to_agent, reason, last_error, attempt,
       dead_lettered_at = now() AS now
FROM axme.dead_letters WHERE intent_id = pg_temp.id('f');
SELECT count(*) AS nothing_due FROM axme.poll('agent://myorg/prod/life', 10);
SELECT * FROM pg_temp.events('f');
SELECT details->>'reason' AS reason FROM axme.intent_events(pg_temp.id('f')) WHERE event_type = 'intent.dead_lettered';
-- FAILED (dead-lettered) -> SUBMITTED: replay
SELECT axme.replay(pg_temp.id('f'));
SELECT * FROM pg_temp.state('f');
SELECT count(*) AS dead_letters FROM axme.dead_letters WHERE intent_id = pg_temp.id('f');
SELECT pg_temp.err('SELECT axme.replay($1)', pg_temp.id('f'));
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.fail(pg_temp.id('f'), '{"code": "third"}', true, 3);
SELECT * FROM pg_temp.state('f');
SELECT pg_sleep(0.05);
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.fail(pg_temp.id('f'), '{"code": "fourth"}', true, 4);
SELECT * FROM pg_temp.state('f');
SELECT * FROM pg_temp.events('f');
-- ACKNOWLEDGED -> SUBMITTED and IN_PROGRESS -> SUBMITTED: failed attempts after ack or progress
SELECT pg_temp.send('f2', 'agent://myorg/prod/life');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.ack(pg_temp.id('f2'), 1);
SELECT axme.fail(pg_temp.id('f2'), '{"code": "after ack"}', true, 1);
SELECT * FROM pg_temp.state('f2');
SELECT pg_sleep(0.05);
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/life', 10);
SELECT axme.progress(pg_temp.id('f2'), '{}', 2);
SELECT axme.fail(pg_temp.id('f2'), '{"code": "after progress"}', true, 2);
SELECT * FROM pg_temp.state('f2');
SELECT * FROM pg_temp.events('f2');
SELECT axme.resolve(pg_temp.id('f2'), 'CANCELED');

-- replay notifies nobody but a stream agent, and poll serves stream agents too
SELECT pg_temp.send('s', 'agent://myorg/prod/streamer', '{"max_delivery_attempts": 1}');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/streamer', 10);
SELECT axme.fail(pg_temp.id('s'), '{}', true, 1);
SELECT * FROM pg_temp.state('s');
SELECT axme.replay(pg_temp.id('s'));
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/streamer', 10);

-- The default backoff (base 1 s, equal jitter): the first retry is due 0.5 .. 1 s later and is
-- not handed out before.
SELECT axme.register_agent('agent://myorg/prod/slow-retry');
SELECT pg_temp.send('g', 'agent://myorg/prod/slow-retry');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/slow-retry');
BEGIN;
SELECT axme.fail(pg_temp.id('g'), '{"code": 503}', true, 1);
SELECT (d->>'next_attempt_at')::timestamptz - now() BETWEEN interval '500 ms' AND interval '1 s' AS backoff_ok
FROM axme.get_intent(pg_temp.id('g')) d;
COMMIT;
SELECT count(*) AS in_backoff FROM axme.poll('agent://myorg/prod/slow-retry');
SELECT details->>'next_attempt_at' IS NOT NULL AS next_attempt_at, details->'error' AS error
FROM axme.intent_events(pg_temp.id('g')) WHERE event_type = 'intent.delivery_failed';
-- the backoff itself: min(max, base * 2^(failures-1)), uniformly from its upper half
SELECT failures, min(ms) >= lo AS lower_ok, max(ms) <= hi AS upper_ok, count(DISTINCT ms) > 1 AS jitter
FROM (VALUES (1, 1000::bigint, 3600000::bigint, 500, 1000), (3, 1000, 3600000, 2000, 4000),
             (20, 1000, 5000, 2500, 5000), (0, 1000, 3600000, 500, 1000)) AS t(failures, base, cap, lo, hi),
     LATERAL (SELECT axme._backoff_ms(base, cap, failures) AS ms FROM generate_series(1, 200)) s
GROUP BY failures, lo, hi ORDER BY failures;

-- Leases that run out (1 second leases, real time):
--   h: handed out again with attempt + 1 (DELIVERED -> DELIVERED); its old receipt is refused;
--      after the last allowed lease runs out (budget 2) the next poll dead-letters it.
--   i: leases run out from ACKNOWLEDGED and IN_PROGRESS too.
--   j: a passed deadline_at: TIMED_OUT instead of a hand-out.
--   k: not_before: not handed out before; l: handed out once it has passed.
SELECT axme.register_agent('agent://myorg/prod/lease-h', 'poll', NULL, '{"retry": {"max_attempts": 2}}');
SELECT axme.register_agent('agent://myorg/prod/lease-i');
SELECT axme.register_agent('agent://myorg/prod/deadline');
SELECT axme.register_agent('agent://myorg/prod/delay');
SELECT pg_temp.send('h', 'agent://myorg/prod/lease-h');
SELECT pg_temp.send('i', 'agent://myorg/prod/lease-i');
SELECT pg_temp.send('j', 'agent://myorg/prod/deadline', jsonb_build_object('deadline_at', clock_timestamp() + interval '1 second'));
SELECT pg_temp.send('k', 'agent://myorg/prod/delay', jsonb_build_object('not_before', clock_timestamp() + interval '1 hour'));
SELECT pg_temp.send('l', 'agent://myorg/prod/delay', jsonb_build_object('not_before', clock_timestamp() + interval '1 second'));
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-h', 10, '1 second');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-i', 10, '1 second');
SELECT axme.ack(pg_temp.id('i'), 1);
SELECT pg_sleep(1.2);
-- round 2
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-h', 10, '1 second');
SELECT f AS call, pg_temp.err(f, pg_temp.id('h')) AS result
FROM unnest(ARRAY[
    'SELECT axme.ack($1, 1)',
    'SELECT axme.progress($1, ''{}'', 1)',
    'SELECT axme.extend_lease($1, ''1 minute'', 1)',
    'SELECT axme.complete($1, ''{"by": "the first holder"}'', 1)',
    'SELECT axme.fail($1, ''{}'', true, 1)',
    'SELECT axme.fail($1, ''{}'', false, 1)'
]) f;
SELECT * FROM pg_temp.state('h');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-i', 10, '1 second');
SELECT axme.progress(pg_temp.id('i'), '{}', 2);
SELECT count(*) AS handed_out FROM axme.poll('agent://myorg/prod/deadline', 10);
SELECT * FROM pg_temp.state('j');
SELECT * FROM pg_temp.events('j');
SELECT pg_temp.err('SELECT axme.complete($1)', pg_temp.id('j'));
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/delay', 10);
SELECT pg_sleep(1.2);
-- round 3
SELECT count(*) AS handed_out FROM axme.poll('agent://myorg/prod/lease-h', 10, '1 second');
SELECT * FROM pg_temp.state('h');
SELECT * FROM pg_temp.events('h');
SELECT pg_temp.name_of(intent_id) AS name, reason, attempt FROM axme.dead_letters WHERE intent_id = pg_temp.id('h');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-i', 10, '1 minute');
SELECT * FROM pg_temp.events('i');
SELECT axme.complete(pg_temp.id('i'), '{}', 3);
-- replay after expiry: a fresh budget of 2 hand-outs
SELECT axme.replay(pg_temp.id('h'));
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/lease-h', 10, '1 minute');
SELECT axme.complete(pg_temp.id('h'), '{"finally": true}', 3);
SELECT * FROM pg_temp.state('h');
SELECT * FROM pg_temp.state('k');

-- complete_many: the set-based complete; unknown, terminal or stale-receipt ids are skipped.
SELECT axme.register_agent('agent://myorg/prod/batch');
SELECT pg_temp.send('m1', 'agent://myorg/prod/batch');
SELECT pg_temp.send('m2', 'agent://myorg/prod/batch');
SELECT pg_temp.send('m3', 'agent://myorg/prod/batch');
SELECT pg_temp.send('m4', 'agent://myorg/prod/batch');
SELECT pg_temp.name_of(intent_id) AS name, attempt FROM axme.poll('agent://myorg/prod/batch', 10);
SELECT axme.complete(pg_temp.id('m4'), '{}', 1);
SELECT pg_temp.name_of(id) AS completed FROM axme.complete_many(
    ARRAY[pg_temp.id('m1'), pg_temp.id('m2'), pg_temp.id('m3'), pg_temp.id('m4'), '00000000-0000-0000-0000-000000000000'],
    ARRAY[1, 1, 7, NULL, NULL],
    ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}', '{}']::jsonb[]) id ORDER BY 1;
SELECT name, (pg_temp.state(name)).status, (pg_temp.state(name)).result FROM ids WHERE name LIKE 'm_' ORDER BY name;
SELECT pg_temp.err($$SELECT axme.complete_many(NULL)$$);
SELECT pg_temp.err($$SELECT axme.complete_many(ARRAY[gen_random_uuid()], ARRAY[1, 2])$$);

-- Every event sequence is 1, 2, 3, ... without gaps, and the intent's last event carries its status.
SELECT count(*) AS intents_with_gaps FROM ids
WHERE (SELECT array_agg(seq ORDER BY seq) FROM axme.intent_events(id))
      <> (SELECT array_agg(n::bigint ORDER BY n) FROM generate_series(1, (SELECT count(*) FROM axme.intent_events(id))) n);
SELECT count(*) AS last_event_status_mismatch FROM ids
WHERE (SELECT status FROM axme.intent_events(id) ORDER BY seq DESC LIMIT 1) <> axme.get_intent(id)->>'status';

-- A lease taken late in a long transaction still lies in the future.
SELECT pg_temp.send('late', 'agent://myorg/prod/life');
BEGIN;
SELECT pg_sleep(1.2);
SELECT pg_temp.name_of(intent_id) AS name, lease_until > clock_timestamp() AS lease_in_future
FROM axme.poll('agent://myorg/prod/life', 1, '1 second');
COMMIT;

-- NULL results, errors and details are refused, not stored.
SELECT pg_temp.err('SELECT axme.complete($1, NULL, 1)', pg_temp.id('late'));
SELECT pg_temp.err('SELECT axme.fail($1, NULL)', pg_temp.id('late'));
SELECT pg_temp.err('SELECT axme.progress($1, NULL, 1)', pg_temp.id('late'));
SELECT (axme.get_intent(pg_temp.id('late')))->>'status' AS still;
