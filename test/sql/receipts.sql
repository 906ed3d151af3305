-- receipts: a poll or stream hand-out's receipt (attempt) is required by default: ack, progress,
-- extend_lease, complete, complete_many and fail without it are refused (55000, with a hint).
-- resolve and the admin functions are exempt; axme.require_receipts = off or the agent option
-- "require_receipts": false turn the check off.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

CREATE TEMP TABLE ids (name text PRIMARY KEY, id uuid);
CREATE FUNCTION pg_temp.send(name text, agent text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ids VALUES (name, axme.send_intent(jsonb_build_object(
        'intent_type', 'intent.receipt.v1', 'to_agent', agent, 'payload', '{}'::jsonb)))
$$;
CREATE FUNCTION pg_temp.id(n text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = n $$;
CREATE FUNCTION pg_temp.status(n text) RETURNS text LANGUAGE sql AS $$
    SELECT status || ' attempt ' || attempt FROM axme.intents WHERE intent_id = pg_temp.id(n)
$$;

SELECT axme._receipts_required() AS required_by_default, current_setting('axme.require_receipts') AS setting;
SELECT axme.register_agent('agent://rcptorg/prod/poll', 'poll');
SELECT axme.register_agent('agent://rcptorg/prod/stream', 'stream');
SELECT pg_temp.send('never', 'agent://rcptorg/prod/poll');
SELECT pg_temp.send('p', 'agent://rcptorg/prod/poll');
SELECT pg_temp.send('q', 'agent://rcptorg/prod/poll');
SELECT pg_temp.send('s', 'agent://rcptorg/prod/stream');

-- never handed out: nothing to race with, no receipt needed
SELECT axme.complete(pg_temp.id('never'), '{"early": true}');
SELECT pg_temp.status('never');

SELECT count(*) AS handed_out FROM axme.poll('agent://rcptorg/prod/poll', 10);
SELECT count(*) AS handed_out FROM axme.poll('agent://rcptorg/prod/stream', 10);
-- every receiver call without the receipt: 55000 with the hint
SELECT pg_temp.err('SELECT axme.ack($1)', pg_temp.id('p'), true);
SELECT c, pg_temp.err(c, pg_temp.id('p')) FROM unnest(ARRAY[
    'SELECT axme.progress($1)',
    'SELECT axme.extend_lease($1, ''1 minute'')',
    'SELECT axme.complete($1)',
    'SELECT axme.fail($1)',
    'SELECT axme.fail($1, ''{}'', true)',
    'SELECT axme.complete_many(ARRAY[$1])',
    'SELECT axme.complete_many(ARRAY[$1], ARRAY[NULL]::integer[])'
]) c;
SELECT pg_temp.err('SELECT axme.complete($1)', pg_temp.id('s'));
SELECT pg_temp.status('p'), pg_temp.status('s');
-- with the receipt: fine
SELECT axme.ack(pg_temp.id('p'), 1);
SELECT axme.progress(pg_temp.id('p'), '{}', 1);
SELECT axme.extend_lease(pg_temp.id('p'), '1 minute', 1) > now() AS extended;
SELECT axme.complete_many(ARRAY[pg_temp.id('p'), pg_temp.id('s')], ARRAY[1, 1]) IS NOT NULL AS completed;
SELECT pg_temp.status('p'), pg_temp.status('s');

-- resolve and replay are exempt
SELECT axme.resolve(pg_temp.id('q'), 'CANCELED');
SELECT pg_temp.status('q');

-- the opt-out for a session (a user-settable GUC) ...
SELECT pg_temp.send('g', 'agent://rcptorg/prod/poll');
SELECT count(*) AS handed_out FROM axme.poll('agent://rcptorg/prod/poll', 10);
SET axme.require_receipts = off;
SELECT axme.ack(pg_temp.id('g'));
SELECT axme.complete(pg_temp.id('g'), '{"no_receipt": true}');
RESET axme.require_receipts;
SELECT pg_temp.status('g');

-- ... and for an agent
SELECT axme.register_agent('agent://rcptorg/prod/legacy', 'poll', NULL, '{"require_receipts": false}');
SELECT pg_temp.send('l1', 'agent://rcptorg/prod/legacy');
SELECT pg_temp.send('l2', 'agent://rcptorg/prod/legacy');
SELECT count(*) AS handed_out FROM axme.poll('agent://rcptorg/prod/legacy', 10);
SELECT axme.fail(pg_temp.id('l1'), '{}');
SELECT count(*) AS completed FROM axme.complete_many(ARRAY[pg_temp.id('l2')]);
SELECT pg_temp.status('l1'), pg_temp.status('l2');
SELECT pg_temp.err($$SELECT axme.register_agent('agent://rcptorg/prod/legacy', 'poll', NULL, '{"require_receipts": "no"}')$$);
-- turning it back on (null removes the option: the default, required)
SELECT axme.register_agent('agent://rcptorg/prod/legacy', 'poll', NULL, '{"require_receipts": null}');
SELECT pg_temp.send('l3', 'agent://rcptorg/prod/legacy');
SELECT count(*) AS handed_out FROM axme.poll('agent://rcptorg/prod/legacy', 10);
SELECT pg_temp.err('SELECT axme.complete($1)', pg_temp.id('l3'));

-- other modes hand out no receipts to check: an http agent reporting its results itself
-- (completion explicit) completes without one
SELECT axme.register_agent('agent://rcptorg/prod/hook', 'http', 'https://example.com/hook', '{"completion": "explicit"}');
SELECT axme.pause_agent('agent://rcptorg/prod/hook');
SELECT pg_temp.send('h', 'agent://rcptorg/prod/hook');
UPDATE axme.intents SET status = 'DELIVERED', attempt = 1 WHERE intent_id = pg_temp.id('h');  -- as the worker would
SELECT axme.complete(pg_temp.id('h'), '{"reported": true}');
SELECT pg_temp.status('h');
