-- task_types: the 14 human task types of the AXME protocol, each stored as itself with its
-- outcomes and defaults (nothing folded into another type; form, which AXME does not have, is
-- accepted as provide_data); attach_file demands evidence; assignees bind decide and reply while
-- the task is in the inbox it was sent to.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

SELECT axme.register_agent('agent://acme/types-test/ann', 'inbox');
SELECT axme.register_agent('agent://acme/types-test/ops', 'inbox');
CREATE FUNCTION pg_temp.task(tt text, extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_build_object('intent_type', 'intent.task.do.v1', 'to_agent', 'agent://acme/types-test/ann',
                              'payload', '{"n": 1}'::jsonb,
                              'human_task', jsonb_build_object('task_type', tt, 'title', 'Do ' || tt) || extra)
$f$;

-- every type with its defaults, as stored in the task thread
CREATE TEMP TABLE typed AS
SELECT t AS type_name, axme.send_intent(pg_temp.task(t)) AS id
FROM unnest(ARRAY['approval', 'review', 'clarification', 'provide_data', 'attach_file', 'manual_action',
                  'confirmation', 'validate_real_world', 'validate_output', 'assignment', 'delegation',
                  'reroute', 'override', 'escalate', 'form']) t;
SELECT d.type_name, th.task_type, th.task->>'type_name' AS sent_as, th.task->'allowed_outcomes' AS outcomes,
       th.task->'required_comment' AS comment_required, th.task->'evidence_required' AS evidence_required
FROM typed d JOIN axme.threads th ON th.intent_id = d.id ORDER BY th.task_type, d.type_name;
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.task('folding'))$$, NULL, true) AS unknown_type;
-- an outcome of a type that another behaves like, but that is not its own
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.task('escalate', '{"allowed_outcomes": ["override_approved"]}'))$$) AS foreign_outcome;

-- attach_file: evidence (the file) required unless the sender says otherwise
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed', NULL, '{"file": "a.pdf"}')$$,
                   (SELECT id FROM typed WHERE type_name = 'attach_file')) AS attach_without_evidence;
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed', NULL, '{"evidence": "s3://bucket/a.pdf"}')$$,
                   (SELECT id FROM typed WHERE type_name = 'attach_file')) AS attach_with_evidence;
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed')$$,
                   axme.send_intent(pg_temp.task('attach_file', '{"evidence_required": false}'))) AS attach_evidence_optional;
-- provide_data: the data must satisfy form_schema
SELECT axme.send_intent(pg_temp.task('provide_data', '{"form_schema": {"required": ["iban"], "properties": {"iban": {"type": "string"}}}}')) AS pd \gset
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed', NULL, '{"iban": 7}')$$, :'pd') AS provide_wrong_type;
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed', NULL, '{}')$$, :'pd') AS provide_missing;
SELECT pg_temp.err($$SELECT axme.decide($1, 'completed', NULL, '{"iban": "DE02"}')$$, :'pd') AS provide_ok;
-- every remaining type decided with its first outcome: the status it leads to
CREATE TEMP TABLE decided AS
SELECT d.type_name, d.id, th.task->'allowed_outcomes'->>0 AS outcome,
       pg_temp.err(format('SELECT axme.decide($1, %L, %L, %L)', th.task->'allowed_outcomes'->>0, 'because',
                          CASE WHEN (th.task->>'evidence_required')::boolean THEN '{"evidence": "photo"}' ELSE '{}' END),
                   d.id) AS decided
FROM typed d JOIN axme.threads th ON th.intent_id = d.id
WHERE d.type_name NOT IN ('attach_file');
SELECT d.type_name, d.outcome, d.decided, i.status, i.result->>'outcome' AS result_outcome
FROM decided d JOIN axme.intents i ON i.intent_id = d.id ORDER BY d.type_name;

-- assignees: who may respond, while the task is in the inbox it was sent to
SELECT axme.send_intent(pg_temp.task('approval', '{"assignees": ["ann@acme.example", "lead@acme.example"]}')) AS asg \gset
SELECT thread_id AS asg_thread FROM axme.threads WHERE intent_id = :'asg' \gset
SELECT pg_temp.err($$SELECT axme.decide($1, 'approved')$$, :'asg', true) AS decide_no_actor;
SELECT pg_temp.err($$SELECT axme.decide($1, 'approved', NULL, '{}', 'mallory@acme.example')$$, :'asg') AS decide_not_assignee;
SELECT pg_temp.err($$SELECT axme.reply($1, 'I will take it', 'mallory@acme.example')$$, :'asg_thread'::uuid) AS reply_not_assignee;
SELECT pg_temp.err($$SELECT axme.reply($1, 'Looking at it', 'lead@acme.example')$$, :'asg_thread'::uuid) AS reply_assignee;
SELECT pg_temp.err($$SELECT axme.decide($1, 'approved', 'ok', '{}', 'ann@acme.example')$$, :'asg') AS decide_assignee;
SELECT status, result->>'actor_name' AS actor_name FROM axme.intents WHERE intent_id = :'asg';
-- the calling role's name counts as an assignee too
SELECT pg_temp.err($$SELECT axme.decide($1, 'approved')$$,
                   axme.send_intent(pg_temp.task('approval', jsonb_build_object('assignees', jsonb_build_array(current_user::text))))) AS decide_role_assignee;
-- once delegated to another inbox, its owner decides who acts
SELECT axme.send_intent(pg_temp.task('delegation', '{"assignees": ["ann@acme.example"]}')) AS dlg \gset
SELECT axme.delegate((SELECT thread_id FROM axme.threads WHERE intent_id = :'dlg'), 'agent://acme/types-test/ops');
SELECT pg_temp.err($$SELECT axme.decide($1, 'assigned', NULL, '{}', 'ops on call')$$, :'dlg') AS decide_after_delegation;

-- leave nothing behind for the tests that count rows of the whole database
CREATE TEMP TABLE mine AS SELECT intent_id FROM axme.intents
WHERE to_agent IN ('agent://acme/types-test/ann', 'agent://acme/types-test/ops');
DELETE FROM axme.thread_messages WHERE thread_id IN (SELECT thread_id FROM axme.threads WHERE intent_id IN (SELECT intent_id FROM mine));
DELETE FROM axme.inbox_feed WHERE thread_id IN (SELECT thread_id FROM axme.threads WHERE intent_id IN (SELECT intent_id FROM mine));
SELECT axme._delete_intents(ARRAY(SELECT intent_id FROM mine))->>'intents' AS deleted;
SELECT axme.unregister_agent('agent://acme/types-test/ann', true);
SELECT axme.unregister_agent('agent://acme/types-test/ops', true);
