-- inbox: human tasks (send-time validation, every task type and alias, decisions and the status
-- each outcome gives), threads (reply, delegate, listing, change feed), reply_to completions,
-- reminders and escalation called directly, and what a terminal transition does to threads and
-- timers.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql
LOAD 'axme';

SELECT axme.register_agent('agent://acme/inbox-test/alice', 'inbox');
SELECT axme.register_agent('agent://acme/inbox-test/bob', 'inbox');
SELECT axme.register_agent('agent://acme/inbox-test/boss', 'inbox');
SELECT axme.register_agent('agent://acme/inbox-test/shop', 'poll');
SELECT axme.register_agent('agent://acme/inbox-test/worker', 'poll');

-- task(type, extra): an intent document with a human_task for alice.
CREATE FUNCTION pg_temp.task(tt text, extra jsonb DEFAULT '{}', top jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_build_object('intent_type', 'intent.task.do.v1', 'to_agent', 'agent://acme/inbox-test/alice',
                              'payload', '{"n": 1}'::jsonb,
                              'human_task', jsonb_build_object('task_type', tt, 'title', 'Do ' || tt) || extra) || top
$f$;
-- try_send(doc, field): SQLSTATE (or ok) and whether the message names the field.
CREATE FUNCTION pg_temp.try_send(doc jsonb, field text, OUT state text, OUT names_field boolean)
LANGUAGE plpgsql AS $f$
DECLARE
    msg text;
BEGIN
    PERFORM axme.send_intent(doc);
    state := 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    names_field := field IS NULL OR position(field IN msg) > 0;
END $f$;

-- Send-time validation: each refusal has its SQLSTATE and names the field; nothing is stored.
SELECT count(*) AS intents_before FROM axme.intents \gset
SELECT name, r.state, r.names_field FROM (VALUES
    ('no task_type',            pg_temp.task('approval', '{"task_type": null}'), 'human_task.task_type'),
    ('task_type number',        pg_temp.task('approval', '{"task_type": 7}'), 'human_task.task_type'),
    ('unknown task_type',       pg_temp.task('vote'), 'human_task.task_type'),
    ('no title',                pg_temp.task('approval', '{"title": null}'), 'human_task.title'),
    ('blank title',             pg_temp.task('approval', '{"title": "  "}'), 'human_task.title'),
    ('title 256 chars',         pg_temp.task('approval', jsonb_build_object('title', repeat('t', 256))), 'human_task.title'),
    ('description 2001 chars',  pg_temp.task('approval', jsonb_build_object('description', repeat('d', 2001))), 'human_task.description'),
    ('description number',      pg_temp.task('approval', '{"description": 5}'), 'human_task.description'),
    ('allowed_outcomes empty',  pg_temp.task('approval', '{"allowed_outcomes": []}'), 'human_task.allowed_outcomes'),
    ('allowed_outcomes string', pg_temp.task('approval', '{"allowed_outcomes": "approved"}'), 'human_task.allowed_outcomes'),
    ('allowed_outcomes 21',     pg_temp.task('approval', jsonb_build_object('allowed_outcomes', (SELECT jsonb_agg('approved'::text) FROM generate_series(1, 21)))), 'human_task.allowed_outcomes'),
    ('outcome of another type', pg_temp.task('approval', '{"allowed_outcomes": ["approved", "confirmed"]}'), 'human_task.allowed_outcomes'),
    ('outcome twice',           pg_temp.task('approval', '{"allowed_outcomes": ["approved", "approved"]}'), 'human_task.allowed_outcomes'),
    ('outcome not a string',    pg_temp.task('approval', '{"allowed_outcomes": [1]}'), 'human_task.allowed_outcomes'),
    ('required_comment "yes"',  pg_temp.task('approval', '{"required_comment": "yes"}'), 'human_task.required_comment'),
    ('evidence_required 1',     pg_temp.task('approval', '{"evidence_required": 1}'), 'human_task.evidence_required'),
    ('form_schema array',       pg_temp.task('form', '{"form_schema": []}'), 'human_task.form_schema'),
    ('form_schema bad required', pg_temp.task('form', '{"form_schema": {"required": "a"}}'), 'human_task.form_schema.required'),
    ('form_schema bad type',    pg_temp.task('form', '{"form_schema": {"properties": {"a": {"type": "date"}}}}'), 'human_task.form_schema.properties.a.type'),
    ('assignees string',        pg_temp.task('approval', '{"assignees": "bob"}'), 'human_task.assignees'),
    ('unknown task field',      pg_temp.task('approval', '{"priority": 1}'), 'priority'),
    ('task to a poll agent',    pg_temp.task('approval', '{}', '{"to_agent": "agent://acme/inbox-test/shop"}'), 'human_task'),
    ('inbox without a task',    '{"intent_type": "intent.a.v1", "to_agent": "agent://acme/inbox-test/alice", "payload": {}}', 'human_task'),
    ('reply_to unregistered',   pg_temp.task('approval', '{}', '{"reply_to": "agent://acme/inbox-test/nobody"}'), 'reply_to'),
    ('escalate_to unregistered', pg_temp.task('approval', '{}', '{"escalate_to": "agent://acme/inbox-test/nobody"}'), 'escalate_to'),
    ('escalate_to not inbox',   pg_temp.task('approval', '{}', '{"escalate_to": "agent://acme/inbox-test/shop"}'), 'escalate_to'),
    ('escalate_to unregistered, no task', '{"intent_type": "intent.a.v1", "to_agent": "agent://acme/inbox-test/shop", "payload": {}, "escalate_to": "agent://acme/inbox-test/nobody"}', 'escalate_to'),
    ('title 255 chars',         pg_temp.task('approval', jsonb_build_object('title', repeat('t', 255))), NULL),
    ('description 2000 chars',  pg_temp.task('approval', jsonb_build_object('description', repeat('d', 2000))), NULL),
    ('one outcome allowed',     pg_temp.task('approval', '{"allowed_outcomes": ["approved"]}'), NULL)
) AS c(name, doc, field), LATERAL pg_temp.try_send(doc, field) r;
SELECT count(*) - :intents_before AS stored FROM axme.intents;

-- A task: WAITING (WAITING_FOR_HUMAN) at once, event intent.human_task_assigned, a pending thread.
SELECT axme.send_intent(pg_temp.task('approval', '{"description": "Order ORD-1, 900 EUR"}',
                                     '{"from_agent": "agent://acme/inbox-test/shop"}')) AS t1 \gset
SELECT status, waiting_reason, due_at IS NULL AS nothing_due FROM axme.intents WHERE intent_id = :'t1';
SELECT seq, event_type, status, details - 'thread_id' AS details FROM axme.intent_events(:'t1');
SELECT kind, status, task_type, left(title, 20) AS title, from_agent, due_at FROM axme.inbox('agent://acme/inbox-test/alice')
ORDER BY title, from_agent;
SELECT thread_id AS th1 FROM axme.inbox('agent://acme/inbox-test/alice') WHERE intent_id = :'t1' \gset
SELECT (axme.intent_events(:'t1')).details->>'thread_id' = :'th1' AS event_names_thread OFFSET 2;
SELECT d->'task' AS task, d->'intent'->>'status' AS intent_status,
       jsonb_array_length(d->'timeline') AS events, d->'messages'->0->>'kind' AS first_message
FROM axme.inbox_thread(:'th1') d;

-- Every task type and alias: each allowed outcome gives its status (REFERENCE.md section 3).
CREATE TEMP TABLE decisions (type_name text, outcome text, comment text, data jsonb, extra jsonb);
INSERT INTO decisions VALUES
    ('approval', 'approved', NULL, '{}', '{}'),
    ('approval', 'rejected', NULL, '{}', '{}'),
    ('confirmation', 'confirmed', NULL, '{}', '{}'),
    ('confirmation', 'rejected', NULL, '{}', '{}'),
    ('review', 'approved', 'fine', '{}', '{}'),
    ('review', 'changes_requested', 'fix the totals', '{}', '{}'),
    ('review', 'rejected', NULL, '{}', '{}'),
    ('assignment', 'assigned', NULL, '{"assignee": "bob"}', '{}'),
    ('assignment', 'declined', NULL, '{}', '{}'),
    ('form', 'completed', NULL, '{"qty": 3, "note": "x"}', '{"form_schema": {"required": ["qty"], "properties": {"qty": {"type": "integer"}, "note": {"type": "string"}}}}'),
    ('clarification', 'provided', 'the customer meant 3', '{}', '{}'),
    ('manual_action', 'completed', NULL, '{"evidence": "photo-17.jpg"}', '{}'),
    ('manual_action', 'failed', 'truck broke down', '{"evidence": "call log"}', '{}'),
    ('override', 'override_approved', 'CFO said so', '{}', '{}'),
    ('override', 'rejected', 'policy stands', '{}', '{}'),
    ('provide_data', 'completed', NULL, '{}', '{}'),
    ('attach_file', 'completed', NULL, '{"file": "a.pdf", "evidence": "a.pdf"}', '{}'),
    ('validate_real_world', 'confirmed', NULL, '{}', '{}'),
    ('validate_output', 'rejected', NULL, '{}', '{}'),
    ('delegation', 'assigned', NULL, '{}', '{}'),
    ('reroute', 'declined', NULL, '{}', '{}'),
    ('escalate', 'approved', NULL, '{}', '{}'),
    ('escalate', 'rejected', NULL, '{}', '{}');
CREATE TEMP TABLE decided AS
SELECT d.*, axme.send_intent(pg_temp.task(d.type_name, d.extra)) AS id FROM decisions d;
SELECT count(*) FILTER (WHERE i.status = 'WAITING') AS waiting FROM decided d JOIN axme.intents i ON i.intent_id = d.id;
SELECT count(axme.decide(id, outcome, comment, data, 'Alice A.')) AS decided FROM decided;
SELECT d.type_name, d.outcome, t.task->>'task_type' AS canonical, t.task->'allowed_outcomes' AS allowed, i.status,
       i.result->>'outcome' AS result_outcome, i.result->>'actor' AS actor, i.result->>'actor_name' AS actor_name,
       i.result ?& ARRAY['outcome', 'comment', 'data', 'actor', 'decided_at'] AS result_complete,
       i.result->'data' = d.data AND i.result->>'comment' IS NOT DISTINCT FROM d.comment AS result_kept,
       i.waiting_reason, t.status AS thread_status
FROM decided d JOIN axme.intents i ON i.intent_id = d.id JOIN axme.threads t ON t.intent_id = d.id
ORDER BY d.type_name, d.outcome;

-- Invalid decisions: refused with their SQLSTATE; the task stays open and decidable.
SELECT axme.send_intent(pg_temp.task('clarification')) AS clar \gset
SELECT axme.send_intent(pg_temp.task('override')) AS ovr \gset
SELECT axme.send_intent(pg_temp.task('approval', '{"required_comment": true, "allowed_outcomes": ["rejected"]}')) AS appr \gset
SELECT axme.send_intent(pg_temp.task('manual_action')) AS man \gset
SELECT axme.send_intent(pg_temp.task('confirmation', '{"evidence_required": true}')) AS conf \gset
SELECT axme.send_intent(pg_temp.task('form', '{"form_schema": {"required": ["qty", "ok"], "properties": {"qty": {"type": "integer"}, "ok": {"type": "boolean"}, "tags": {"type": ["array", "null"]}}}}')) AS frm \gset
SELECT axme.send_intent(pg_temp.task('manual_action', '{"evidence_required": false}')) AS man2 \gset
SELECT name, pg_temp.err(call, id) AS result FROM (VALUES
    ('null intent',              'SELECT axme.decide(NULL, ''provided'', ''x'')', NULL::uuid),
    ('unknown intent',           'SELECT axme.decide(''00000000-0000-4000-8000-000000000000'', ''provided'', ''x'')', NULL),
    ('null outcome',             'SELECT axme.decide($1, NULL, ''x'')', :'clar'::uuid),
    ('outcome of another type',  'SELECT axme.decide($1, ''approved'', ''x'')', :'clar'),
    ('clarification no comment', 'SELECT axme.decide($1, ''provided'')', :'clar'),
    ('clarification blank',      'SELECT axme.decide($1, ''provided'', ''  '')', :'clar'),
    ('override no comment',      'SELECT axme.decide($1, ''override_approved'')', :'ovr'),
    ('required_comment missing', 'SELECT axme.decide($1, ''rejected'')', :'appr'),
    ('outcome not allowed here', 'SELECT axme.decide($1, ''approved'', ''x'')', :'appr'),
    ('manual_action no evidence', 'SELECT axme.decide($1, ''completed'')', :'man'),
    ('manual_action empty evidence', 'SELECT axme.decide($1, ''completed'', NULL, ''{"evidence": ""}'')', :'man'),
    ('evidence_required missing', 'SELECT axme.decide($1, ''confirmed'')', :'conf'),
    ('data not an object',       'SELECT axme.decide($1, ''completed'', NULL, ''[1]'')', :'frm'),
    ('data null',                'SELECT axme.decide($1, ''completed'', NULL, NULL)', :'frm'),
    ('form required missing',    'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 1}'')', :'frm'),
    ('form integer wrong',       'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 1.5, "ok": true}'')', :'frm'),
    ('form boolean wrong',       'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 1, "ok": "yes"}'')', :'frm'),
    ('form union wrong',         'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 1, "ok": true, "tags": 3}'')', :'frm'),
    ('comment too long',         'SELECT axme.decide($1, ''provided'', repeat(''c'', 10001))', :'clar'),
    ('actor too long',           'SELECT axme.decide($1, ''provided'', ''x'', ''{}'', repeat(''a'', 256))', :'clar'),
    ('not a human task',         'SELECT axme.decide($1, ''approved'')',
        axme.send_intent('{"intent_type": "intent.a.v1", "to_agent": "agent://acme/inbox-test/shop", "payload": {}}'))
) AS c(name, call, id);
SELECT count(*) AS still_waiting FROM axme.intents
WHERE intent_id IN (:'clar', :'ovr', :'appr', :'man', :'conf', :'frm') AND status = 'WAITING';
SELECT name, pg_temp.err(call, id) AS result FROM (VALUES
    ('form valid',             'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 2, "ok": false, "tags": null}'')', :'frm'::uuid),
    ('form decided twice',     'SELECT axme.decide($1, ''completed'', NULL, ''{"qty": 2, "ok": false}'')', :'frm'),
    ('evidence not required',  'SELECT axme.decide($1, ''failed'')', :'man2'),
    ('clarification valid',    'SELECT axme.decide($1, ''provided'', ''more context'')', :'clar'),
    ('clarification twice',    'SELECT axme.decide($1, ''provided'', ''again'')', :'clar')
) AS c(name, call, id);
SELECT status, result->'data' AS data FROM axme.intents WHERE intent_id = :'frm';

-- A finished task (resolved by someone else) is refused too, and its thread closed with it.
SELECT axme.resolve(:'ovr', 'CANCELED', '{"why": "obsolete"}');
SELECT pg_temp.err('SELECT axme.decide($1, ''rejected'', ''x'')', :'ovr') AS decide_canceled;
SELECT status, outcome->>'status' AS outcome_status, closed_at IS NOT NULL AS closed
FROM axme.threads WHERE intent_id = :'ovr';

-- The recorded actor is the role at call time (SET ROLE honoured); actor is only a display name.
-- (The role receives for alice's inbox: option db_role, roles and security.)
CREATE ROLE axme_regress_approver;
GRANT axme_agent TO axme_regress_approver;
SELECT axme.register_agent('agent://acme/inbox-test/alice', 'inbox', NULL, '{"db_role": "axme_regress_approver"}');
SELECT axme.send_intent(pg_temp.task('approval')) AS byrole \gset
SET ROLE axme_regress_approver;
SELECT axme.decide(:'byrole', 'approved', NULL, '{}', 'postgres');
RESET ROLE;
SELECT result->>'actor' AS actor, result->>'actor_name' AS actor_name FROM axme.intents WHERE intent_id = :'byrole';
SELECT actor, details->>'actor' AS details_actor FROM axme.events WHERE intent_id = :'byrole' AND event_type = 'intent.completed';
SELECT actor, actor_name FROM axme.thread_messages m JOIN axme.threads t USING (thread_id)
WHERE t.intent_id = :'byrole' AND m.kind = 'decided';
SELECT axme.register_agent('agent://acme/inbox-test/alice', 'inbox', NULL, '{"db_role": null}');
DROP ROLE axme_regress_approver;

-- reply and delegate: the thread becomes active; delegate moves it; errors.
SELECT axme.send_intent(pg_temp.task('review')) AS rv \gset
SELECT thread_id AS rth FROM axme.threads WHERE intent_id = :'rv' \gset
SELECT axme.reply(:'rth', 'Looking at it', 'Alice');
SELECT status, owner FROM axme.threads WHERE thread_id = :'rth';
SELECT axme.delegate(:'rth', 'agent://acme/inbox-test/bob', 'Bob knows the customer');
SELECT status, owner FROM axme.threads WHERE thread_id = :'rth';
SELECT count(*) AS in_bob FROM axme.inbox('agent://acme/inbox-test/bob');
SELECT count(*) FILTER (WHERE thread_id = :'rth') AS still_in_alice FROM axme.inbox('agent://acme/inbox-test/alice');
SELECT seq, kind, actor_name, body, details FROM axme.thread_messages WHERE thread_id = :'rth' ORDER BY seq;
SELECT name, pg_temp.err(call, id) AS result FROM (VALUES
    ('reply null thread',       'SELECT axme.reply(NULL, ''x'')', NULL::uuid),
    ('reply unknown thread',    'SELECT axme.reply(''00000000-0000-4000-8000-000000000000'', ''x'')', NULL),
    ('reply null message',      'SELECT axme.reply($1, NULL)', :'rth'::uuid),
    ('reply empty message',     'SELECT axme.reply($1, '' '')', :'rth'),
    ('reply too long',          'SELECT axme.reply($1, repeat(''m'', 10001))', :'rth'),
    ('reply actor too long',    'SELECT axme.reply($1, ''x'', repeat(''a'', 256))', :'rth'),
    ('delegate to self',        'SELECT axme.delegate($1, ''agent://acme/inbox-test/bob'')', :'rth'),
    ('delegate to poll agent',  'SELECT axme.delegate($1, ''agent://acme/inbox-test/shop'')', :'rth'),
    ('delegate to unknown',     'SELECT axme.delegate($1, ''agent://acme/inbox-test/nobody'')', :'rth'),
    ('delegate bad address',    'SELECT axme.delegate($1, ''bob'')', :'rth'),
    ('delegate null owner',     'SELECT axme.delegate($1, NULL)', :'rth'),
    ('delegate unknown thread', 'SELECT axme.delegate(''00000000-0000-4000-8000-000000000000'', ''agent://acme/inbox-test/alice'')', NULL),
    ('delegate note too long',  'SELECT axme.delegate($1, ''agent://acme/inbox-test/alice'', repeat(''n'', 10001))', :'rth'),
    ('decide after delegation', 'SELECT axme.decide($1, ''approved'')', :'rv'),
    ('reply after decision',    'SELECT axme.reply($1, ''too late'')', :'rth'),
    ('delegate after decision', 'SELECT axme.delegate($1, ''agent://acme/inbox-test/alice'')', :'rth')
) AS c(name, call, id);

-- Listing: status filter, open by default, newest first; errors.
SELECT status, count(*) FROM axme.threads WHERE owner = 'agent://acme/inbox-test/alice' GROUP BY status ORDER BY status;
SELECT (SELECT count(*) FROM axme.inbox('agent://acme/inbox-test/alice')) AS open,
       (SELECT count(*) FROM axme.inbox('agent://acme/inbox-test/alice', 'pending')) AS pending,
       (SELECT count(*) FROM axme.inbox('agent://acme/inbox-test/alice', 'active')) AS active,
       (SELECT count(*) FROM axme.inbox('agent://acme/inbox-test/alice', 'done')) AS done;
SELECT bool_and(created_at >= next_created) AS newest_first
FROM (SELECT created_at, lead(created_at) OVER () AS next_created FROM axme.inbox('agent://acme/inbox-test/alice', 'done')) s;
SELECT name, pg_temp.err(call) AS result FROM (VALUES
    ('bad status',        'SELECT * FROM axme.inbox(''agent://acme/inbox-test/alice'', ''open'')'),
    ('unknown owner',     'SELECT * FROM axme.inbox(''agent://acme/inbox-test/nobody'')'),
    ('bad owner',         'SELECT * FROM axme.inbox(''alice'')'),
    ('null owner',        'SELECT * FROM axme.inbox(NULL)'),
    ('thread null',       'SELECT axme.inbox_thread(NULL)'),
    ('thread unknown',    'SELECT axme.inbox_thread(''00000000-0000-4000-8000-000000000000'')'),
    ('changes bad cursor', 'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', ''abc'')'),
    ('changes negative',  'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', ''-1:5'')'),
    ('changes number',    'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', ''17'')'),
    ('changes overflow',  'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', ''1:9999999999999999999'')'),
    ('changes max 0',     'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', NULL, 0)'),
    ('changes max 1001',  'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/alice'', NULL, 1001)'),
    ('changes unknown owner', 'SELECT * FROM axme.inbox_changes(''agent://acme/inbox-test/nobody'')')
) AS c(name, call);

-- The change feed: pages in change order, each thread once at its last change, next_cursor
-- resumes, has_more says when to call again; the old owner hears that a thread left.
CREATE TEMP TABLE pages AS
WITH RECURSIVE p(n, changes, next_cursor, has_more) AS (
    SELECT 1, c.* FROM axme.inbox_changes('agent://acme/inbox-test/alice', NULL, 7) c
    UNION ALL
    SELECT p.n + 1, c.* FROM p, axme.inbox_changes('agent://acme/inbox-test/alice', p.next_cursor, 7) c
    WHERE p.has_more
) SELECT * FROM p;
SELECT n, jsonb_array_length(changes) AS changes, has_more FROM pages ORDER BY n;
SELECT count(*) AS changes, count(DISTINCT e->'thread'->>'thread_id') AS threads,
       bool_and(e->>'cursor' ~ '^[0-9]+:[0-9]+$') AS cursors_well_formed,
       (SELECT count(*) FROM axme.threads t WHERE t.owner = 'agent://acme/inbox-test/alice' OR t.thread_id = :'rth') AS expected_threads
FROM pages, jsonb_array_elements(changes) e;
CREATE FUNCTION pg_temp.cur(c text) RETURNS numeric[] LANGUAGE sql AS
    $f$ SELECT ARRAY[split_part(c, ':', 1)::numeric, split_part(c, ':', 2)::numeric] $f$;
SELECT bool_and(c1 < c2) AS cursors_increase FROM (
    SELECT pg_temp.cur(e->>'cursor') AS c1, lead(pg_temp.cur(e->>'cursor')) OVER (ORDER BY n, o) AS c2
    FROM pages, jsonb_array_elements(changes) WITH ORDINALITY x(e, o)) s WHERE c2 IS NOT NULL;
SELECT e->'thread'->>'owner' AS moved_to, e->'thread'->>'status' AS status
FROM pages, jsonb_array_elements(changes) e WHERE e->'thread'->>'thread_id' = :'rth';
SELECT next_cursor AS last_cursor FROM pages ORDER BY n DESC LIMIT 1 \gset
SELECT changes, next_cursor = :'last_cursor' AS same_cursor, has_more FROM axme.inbox_changes('agent://acme/inbox-test/alice', :'last_cursor');
SELECT axme.reply(thread_id, 'ping') FROM axme.threads WHERE intent_id = :'t1';
SELECT jsonb_array_length(changes) AS n, changes->0->'thread'->>'intent_id' = :'t1' AS is_t1,
       changes->0->'thread'->>'status' AS status, pg_temp.cur(next_cursor) > pg_temp.cur(:'last_cursor') AS advanced
FROM axme.inbox_changes('agent://acme/inbox-test/alice', :'last_cursor');
SELECT changes, next_cursor FROM axme.inbox_changes('agent://acme/inbox-test/bob', '999999999:1');

-- reply_to: a completion thread lands in the reply_to agent's inbox (any mode) in the same
-- transaction as the terminal transition, whichever path ends the intent.
SELECT axme.send_intent('{"intent_type": "intent.job.run.v1", "to_agent": "agent://acme/inbox-test/worker", "payload": {}, "reply_to": "agent://acme/inbox-test/shop"}') AS j1 \gset
SELECT axme.send_intent('{"intent_type": "intent.job.run.v1", "to_agent": "agent://acme/inbox-test/worker", "payload": {}, "reply_to": "agent://acme/inbox-test/shop"}') AS j2 \gset
SELECT axme.send_intent('{"intent_type": "intent.job.run.v1", "to_agent": "agent://acme/inbox-test/worker", "payload": {}, "reply_to": "agent://acme/inbox-test/bob"}') AS j3 \gset
SELECT axme.send_intent(pg_temp.task('approval', '{}', '{"reply_to": "agent://acme/inbox-test/shop"}')) AS j4 \gset
SELECT count(*) AS completions_before FROM axme.threads WHERE kind = 'completion';
BEGIN;
SELECT axme.complete(:'j1', '{"total": 42}');
SELECT kind, status, title, from_agent, outcome->>'status' AS status, outcome->'result' AS result
FROM axme.threads WHERE intent_id = :'j1';
ROLLBACK;
SELECT count(*) AS after_rollback FROM axme.threads WHERE intent_id = :'j1';
SELECT axme.complete(:'j1', '{"total": 42}');
SELECT axme.fail(:'j2', '{"why": "no stock"}');
SELECT count(*) AS completed_many FROM axme.complete_many(ARRAY[:'j3'::uuid]);
SELECT axme.decide(:'j4', 'rejected');
SELECT t.intent_id = :'j1' AS j1, t.intent_id = :'j2' AS j2, t.intent_id = :'j4' AS j4, t.owner, t.kind, t.status,
       t.outcome->>'status' AS outcome_status, t.outcome->'result'->>'outcome' AS decided
FROM axme.threads t WHERE t.kind = 'completion' AND t.intent_id IN (:'j1', :'j2', :'j3', :'j4')
ORDER BY t.created_at, t.owner;
SELECT kind, status FROM axme.inbox('agent://acme/inbox-test/shop');
-- a reply on a completion thread works; delegating one does not
SELECT thread_id AS cth FROM axme.threads WHERE intent_id = :'j1' AND kind = 'completion' \gset
SELECT pg_temp.err('SELECT axme.reply($1, ''thanks'')', :'cth') AS reply_completion,
       pg_temp.err('SELECT axme.delegate($1, ''agent://acme/inbox-test/bob'')', :'cth') AS delegate_completion;

-- Deadline: TIMED_OUT (as the timer loop does it, through _transition) closes the task thread
-- and deletes the intent's timers.
SELECT axme.send_intent(pg_temp.task('approval', '{}', jsonb_build_object('deadline_at', now() + interval '1 hour', 'remind_after_seconds', 60))) AS dl \gset
SELECT t.kind, t.due_at - i.created_at AS after FROM axme.timers t JOIN axme.intents i USING (intent_id)
WHERE intent_id = :'dl' ORDER BY kind;
SELECT due_at IS NOT NULL AS thread_due_at_set FROM axme.threads WHERE intent_id = :'dl';
SELECT (axme._transition(i, 'TIMED_OUT', 'intent.timed_out', jsonb_build_object('deadline_at', i.deadline_at))).status
FROM axme.intents i WHERE intent_id = :'dl';
SELECT status, outcome->>'status' AS outcome_status FROM axme.threads WHERE intent_id = :'dl';
SELECT count(*) AS timers_left FROM axme.timers WHERE intent_id = :'dl';
SELECT pg_temp.err('SELECT axme.decide($1, ''approved'')', :'dl') AS decide_timed_out;

-- Reminders and escalation, called as the timer loop calls them (fire: delete the due row, then
-- dispatch).  100/50/3: reminders due at created_at + 100, 150, 200 s, escalation at 250 s; each call
-- queues the next timer row.
CREATE FUNCTION pg_temp.fire(id uuid, k text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
    DELETE FROM axme.timers WHERE intent_id = id AND kind = k;
    IF k = 'remind' THEN PERFORM axme._timer_remind(id); ELSE PERFORM axme._timer_escalate(id); END IF;
    RETURN (SELECT string_agg(t.kind || ' at +' || extract(epoch FROM t.due_at - i.created_at) || ' s', ', ' ORDER BY t.kind)
            FROM axme.timers t JOIN axme.intents i USING (intent_id) WHERE t.intent_id = id);
END $f$;
SELECT axme.send_intent(pg_temp.task('approval', '{}', '{"remind_after_seconds": 100, "remind_interval_seconds": 50, "max_reminders": 3, "escalate_to": "agent://acme/inbox-test/boss"}')) AS rm \gset
SELECT pg_temp.fire(:'rm', 'remind') AS next_timer;
SELECT pg_temp.fire(:'rm', 'remind') AS next_timer;
SELECT pg_temp.fire(:'rm', 'remind') AS next_timer;
SELECT seq, event_type, status, details FROM axme.intent_events(:'rm', 3);
SELECT m.kind, m.details FROM axme.thread_messages m JOIN axme.threads t USING (thread_id)
WHERE t.intent_id = :'rm' ORDER BY m.seq;
SELECT pg_temp.fire(:'rm', 'escalate') AS next_timer;
SELECT seq, event_type, status, details - 'thread_id' AS details FROM axme.intent_events(:'rm', 6);
SELECT status, waiting_reason FROM axme.intents WHERE intent_id = :'rm';
SELECT owner, status FROM axme.threads WHERE intent_id = :'rm';
SELECT count(*) AS in_boss FROM axme.inbox('agent://acme/inbox-test/boss') WHERE intent_id = :'rm';
SELECT count(*) AS timers_left FROM axme.timers WHERE intent_id = :'rm';
SELECT axme.decide(:'rm', 'approved', NULL, '{}', 'The Boss');
SELECT status FROM axme.intents WHERE intent_id = :'rm';
-- on a terminal intent both are no-ops
SELECT axme._timer_remind(:'rm'), axme._timer_escalate(:'rm');
SELECT count(*) AS events FROM axme.intent_events(:'rm');

-- A reminder goes to the current owner: after a delegation, the new one.
SELECT axme.send_intent(pg_temp.task('approval', '{}', '{"remind_after_seconds": 100, "max_reminders": 2}')) AS rd \gset
SELECT axme.delegate(thread_id, 'agent://acme/inbox-test/bob') FROM axme.threads WHERE intent_id = :'rd';
SELECT pg_temp.fire(:'rd', 'remind') AS next_timer;
SELECT details->>'owner' AS reminded FROM axme.events WHERE intent_id = :'rd' AND event_type = 'intent.reminder';
SELECT m.kind, t.owner FROM axme.thread_messages m JOIN axme.threads t USING (thread_id)
WHERE t.intent_id = :'rd' ORDER BY m.seq;

-- max_reminders 0 with escalate_to: no reminder, the escalation due at once (remind_after_seconds);
-- no max_reminders: one reminder and, without escalate_to, nothing more.
SELECT axme.send_intent(pg_temp.task('approval', '{}', '{"remind_after_seconds": 100, "remind_interval_seconds": 50, "max_reminders": 0, "escalate_to": "agent://acme/inbox-test/boss"}')) AS rm0 \gset
SELECT pg_temp.fire(:'rm0', 'remind') AS next_timer;
SELECT count(*) AS reminders FROM axme.intent_events(:'rm0') WHERE event_type = 'intent.reminder';
SELECT axme.send_intent('{"intent_type": "intent.a.v1", "to_agent": "agent://acme/inbox-test/worker", "payload": {}, "remind_after_seconds": 30}') AS rmp \gset
SELECT pg_temp.fire(:'rmp', 'remind') AS next_timer;
SELECT count(*) AS reminders, (SELECT count(*) FROM axme.timers WHERE intent_id = :'rmp') AS timers_left
FROM axme.intent_events(:'rmp') WHERE event_type = 'intent.reminder';
-- escalation of an intent without a task: the event, the intent unchanged
SELECT axme.send_intent('{"intent_type": "intent.a.v1", "to_agent": "agent://acme/inbox-test/worker", "payload": {}, "escalate_to": "agent://acme/inbox-test/boss"}') AS esp \gset
SELECT axme._timer_escalate(:'esp');
SELECT event_type, status, details FROM axme.intent_events(:'esp', 2);

-- A task with not_before in the future stays SUBMITTED until _inbox_assign_due assigns it.
SELECT axme.send_intent(pg_temp.task('approval', '{}', jsonb_build_object('not_before', now() + interval '1 hour'))) AS nb \gset
SELECT status, (SELECT count(*) FROM axme.threads WHERE intent_id = :'nb') AS threads FROM axme.intents WHERE intent_id = :'nb';
SELECT axme._inbox_assign_due() AS assigned_early;
UPDATE axme.intents SET due_at = now() - interval '1 second' WHERE intent_id = :'nb';
SELECT axme._inbox_assign_due() AS assigned;
SELECT status, waiting_reason, (SELECT count(*) FROM axme.threads WHERE intent_id = :'nb') AS threads
FROM axme.intents WHERE intent_id = :'nb';

-- Idempotent resend of a task: the same intent, no second thread.
SELECT axme.send_intent(pg_temp.task('approval'), 'task-key-0001') AS k1 \gset
SELECT axme.send_intent(pg_temp.task('approval'), 'task-key-0001') = :'k1' AS same_intent;
SELECT count(*) AS threads FROM axme.threads WHERE intent_id = :'k1';

-- Retention: deleting intents (as axme.cleanup does) takes their threads, timelines and feed rows.
SELECT count(*) AS threads, (SELECT count(*) FROM axme.thread_messages m JOIN axme.threads t USING (thread_id) WHERE t.intent_id IN (:'j1', :'j4')) AS messages,
       (SELECT count(*) FROM axme.inbox_feed f JOIN axme.threads t USING (thread_id) WHERE t.intent_id IN (:'j1', :'j4')) AS feed_rows
FROM axme.threads WHERE intent_id IN (:'j1', :'j4');
DELETE FROM axme.events WHERE intent_id IN (:'j1', :'j4');
DELETE FROM axme.intents WHERE intent_id IN (:'j1', :'j4');
SELECT (SELECT count(*) FROM axme.threads) - count(*) AS other_threads_kept, count(*) AS threads_left
FROM axme.threads WHERE intent_id IN (:'j1', :'j4');
SELECT count(*) AS orphan_messages FROM axme.thread_messages m WHERE NOT EXISTS (SELECT FROM axme.threads t WHERE t.thread_id = m.thread_id);
SELECT count(*) AS orphan_feed_rows FROM axme.inbox_feed f WHERE NOT EXISTS (SELECT FROM axme.threads t WHERE t.thread_id = f.thread_id);
