-- security: roles, caller checks in the SECURITY DEFINER functions, row-level security on the
-- tables.  Two senders (alice, bob), two receivers (w1 for agent one, w2 for agent two), an admin
-- member, a role with no axme role.  Each refusal is pinned by its SQLSTATE; each permitted call
-- by its effect.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

-- The three roles exist, cannot log in, and PUBLIC holds none of them.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles
WHERE rolname IN ('axme_admin', 'axme_sender', 'axme_agent') ORDER BY rolname;

-- Every table has row-level security; no role gets INSERT, UPDATE, DELETE or TRUNCATE on any
-- table; only axme_admin may read agent_secrets.
SELECT c.oid::regclass AS table_without_rls FROM pg_class c
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity;
SELECT r.rolname, c.oid::regclass AS writable FROM pg_class c,
       (VALUES ('axme_admin'), ('axme_sender'), ('axme_agent')) r(rolname)
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')
  AND has_table_privilege(r.rolname, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, UPDATE');
SELECT r.rolname, has_table_privilege(r.rolname, 'axme.agent_secrets', 'SELECT') AS reads_secrets,
       has_column_privilege(r.rolname, 'axme.agents', 'options', 'SELECT') AS reads_options,
       has_column_privilege(r.rolname, 'axme.agents', 'endpoint_url', 'SELECT') AS reads_endpoint_url,
       has_column_privilege(r.rolname, 'axme.agents', 'db_role', 'SELECT') AS reads_db_role
FROM (VALUES ('axme_admin'), ('axme_sender'), ('axme_agent')) r(rolname) ORDER BY 1;
-- which public functions each role may execute
SELECT p.proname, has_function_privilege('axme_sender', p.oid, 'EXECUTE') AS sender,
       has_function_privilege('axme_agent', p.oid, 'EXECUTE') AS agent,
       has_function_privilege('axme_admin', p.oid, 'EXECUTE') AS admin
FROM pg_proc p WHERE p.pronamespace = 'axme'::regnamespace AND p.proname NOT LIKE '\_%'
ORDER BY p.proname;
-- views run with their reader's rights
SELECT c.oid::regclass AS view_not_security_invoker FROM pg_class c
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'v'
  AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false);
-- who may read each view: the monitoring views show each reader its own rows; endpoint_health
-- (endpoint URLs) and worker_status (private function) are for admins only
SELECT c.relname AS view, has_table_privilege('axme_sender', c.oid, 'SELECT') AS sender,
       has_table_privilege('axme_agent', c.oid, 'SELECT') AS agent,
       has_table_privilege('axme_admin', c.oid, 'SELECT') AS admin,
       has_table_privilege('pg_monitor', c.oid, 'SELECT') AS monitor
FROM pg_class c WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'v' ORDER BY 1;

SET client_min_messages = warning;
DROP ROLE IF EXISTS sec_alice;
DROP ROLE IF EXISTS sec_bob;
DROP ROLE IF EXISTS sec_w1;
DROP ROLE IF EXISTS sec_w1_member;
DROP ROLE IF EXISTS sec_w2_member;
DROP ROLE IF EXISTS sec_w2;
DROP ROLE IF EXISTS sec_exec;
DROP ROLE IF EXISTS sec_mon;
DROP ROLE IF EXISTS sec_admin;
DROP ROLE IF EXISTS sec_nobody;
DROP ROLE IF EXISTS sec_legacy;
RESET client_min_messages;
CREATE ROLE sec_alice;
CREATE ROLE sec_bob;
CREATE ROLE sec_w1;
CREATE ROLE sec_w1_member IN ROLE sec_w1;
CREATE ROLE sec_w2;
CREATE ROLE sec_admin;
CREATE ROLE sec_nobody;
GRANT axme_sender TO sec_alice, sec_bob;
GRANT axme_agent TO sec_w1, sec_w2;
GRANT axme_admin TO sec_admin;

-- Only admins register agents; registered_by is the caller.
SET ROLE sec_alice;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://secorg/prod/one', 'poll', NULL, '{"db_role": "sec_alice"}')$$);
RESET ROLE;
SET ROLE sec_admin;
SELECT axme.register_agent('agent://secorg/prod/one', 'poll', NULL, '{"db_role": "sec_w1"}');
SELECT axme.register_agent('agent://secorg/prod/two', 'stream', NULL, '{"db_role": "sec_w2"}');
RESET ROLE;
SELECT axme.register_agent('agent://secorg/prod/hook', 'http', 'https://user:token@example.com/hook',
                           '{"headers": {"Authorization": "Bearer s3cret"}, "db_role": "sec_w2", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}');
SELECT axme.register_agent('agent://secorg/prod/orphan', 'poll');
SELECT address, registered_by, db_role FROM axme.agents WHERE address LIKE 'agent://secorg/%' ORDER BY address;

-- Only members of axme_sender (and admins) send; sender_role and the actor are the caller.
SET ROLE sec_nobody;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {}}')$$);
RESET ROLE;
SET ROLE sec_w1;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {}}')$$);
RESET ROLE;
SET ROLE sec_alice;
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {"card": "alice-1"}}', 'alice-key-0001') AS a1 \gset
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {"card": "alice-2"}}') AS a2 \gset
RESET ROLE;
SET ROLE sec_bob;
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/two", "payload": {"card": "bob-1"}}', 'bob-key-00001') AS b1 \gset
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {"card": "bob-2"}}') AS b2 \gset
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "payload": {"card": "bob-3"}}') AS b3 \gset
RESET ROLE;
SELECT (axme.get_intent(:'a1'))->>'sender_role' AS a1_sender, (axme.get_intent(:'b1'))->>'sender_role' AS b1_sender;
SELECT DISTINCT actor FROM axme.events WHERE intent_id IN (:'a1', :'a2');

-- A sender reads its own intents, through functions, tables and views, and nothing else.
SET ROLE sec_alice;
SELECT (axme.get_intent(:'a1'))->'payload' AS own_payload;
SELECT count(*) AS own_events FROM axme.intent_events(:'a1');
SELECT pg_temp.err('SELECT axme.get_intent($1)', :'b1') AS get_other;
SELECT pg_temp.err('SELECT * FROM axme.intent_events($1)', :'b1') AS events_other;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''0'')', :'b1') AS wait_other;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''0'')', :'a1') AS wait_own;
SELECT payload->>'card' AS card FROM axme.intents ORDER BY 1;
SELECT count(*) AS events_seen, count(DISTINCT intent_id) AS of_intents FROM axme.events;
SELECT sender FROM axme.idempotency_keys ORDER BY 1;
SELECT count(*) AS timers_seen FROM axme.timers;
SELECT address, delivery_mode, db_role FROM axme.agents WHERE address LIKE 'agent://secorg/%' ORDER BY 1;
SELECT pg_temp.err('SELECT options FROM axme.agents') AS agent_options;
SELECT pg_temp.err('SELECT endpoint_url FROM axme.agents') AS agent_urls;
SELECT pg_temp.err('SELECT * FROM axme.agent_secrets') AS secrets_table;
SELECT pg_temp.err($$SELECT axme.agent_secret('agent://secorg/prod/hook')$$) AS secret_fn;
SELECT pg_temp.err('SELECT * FROM axme.alerts') AS alerts;
-- a sender does not receive, not even its own intents
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://secorg/prod/one')$$) AS poll;
SELECT pg_temp.err('SELECT axme.complete($1)', :'a1') AS complete;
SELECT pg_temp.err('SELECT axme.resolve($1, ''CANCELED'')', :'a1') AS resolve;
-- writes only through the functions
SELECT pg_temp.err('UPDATE axme.intents SET status = ''COMPLETED'' WHERE intent_id = $1', :'a1') AS update_intent;
SELECT pg_temp.err('INSERT INTO axme.events (intent_id, seq, event_type, status) VALUES ($1, 99, ''x'', ''COMPLETED'')', :'a1') AS insert_event;
SELECT pg_temp.err('DELETE FROM axme.idempotency_keys') AS delete_keys;
RESET ROLE;

-- A receiver sees, polls and ends only the intents of its own agent.
SET ROLE sec_w2;
SELECT payload->>'card' AS card FROM axme.intents ORDER BY 1;
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://secorg/prod/one')$$) AS poll_other_agent;
SELECT pg_temp.err('SELECT axme.get_intent($1)', :'a1') AS get_other_agent;
SELECT pg_temp.err('SELECT axme.ack($1)', :'a1') AS ack_other;
SELECT pg_temp.err('SELECT axme.progress($1)', :'a1') AS progress_other;
SELECT pg_temp.err('SELECT axme.extend_lease($1, ''1 minute'')', :'a1') AS extend_other;
SELECT pg_temp.err('SELECT axme.complete($1)', :'a1') AS complete_other;
SELECT pg_temp.err('SELECT axme.fail($1)', :'a1') AS fail_other;
SELECT pg_temp.err('SELECT axme.replay($1)', :'a1') AS replay_other;
SELECT pg_temp.err($$SELECT axme.replay_dead_letters('agent://secorg/prod/one')$$) AS replay_all_other;
SELECT count(*) AS completed_other FROM axme.complete_many(ARRAY[:'a1'::uuid, :'a2'::uuid]);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://secorg/prod/orphan')$$) AS poll_unmapped;
SELECT pg_temp.err($$SELECT axme.channel('agent://secorg/prod/two')$$) AS channel;
SELECT (axme.get_intent(:'b1'))->'payload' AS own_agent_payload;
SELECT intent_id = :'b1' AS polled_b1, attempt FROM axme.poll('agent://secorg/prod/two');
SELECT pg_temp.err('SELECT axme.complete($1, ''{"ok": 1}'', 1)', :'b1') AS complete_own;
RESET ROLE;
SELECT actor FROM axme.events WHERE intent_id = :'b1' ORDER BY seq;
SELECT status FROM axme.intents WHERE intent_id IN (:'a1', :'a2') ORDER BY status;

-- Receiving through a member of the mapped role (INHERIT): the member is the actor.
SET ROLE sec_w1_member;
SELECT count(*) AS polled FROM axme.poll('agent://secorg/prod/one', 10);
SELECT payload->>'card' AS card FROM axme.intents ORDER BY 1;
SELECT count(*) AS completed FROM axme.complete_many(ARRAY[:'a1'::uuid, :'b2'::uuid, :'b1'::uuid], ARRAY[1, 1, 1]);
SELECT axme.fail(:'a2', '{"code": "declined"}', false, 1);
RESET ROLE;
SELECT intent_id = :'a1' AS is_a1, event_type, actor FROM axme.events
WHERE intent_id IN (:'a1', :'a2') AND seq > 2 ORDER BY intent_id = :'a1', seq;

-- The sender waits for and reads the outcome; the other sender still cannot.
SET ROLE sec_alice;
SELECT (axme.wait_for(:'a2', '1 second'))->'error' AS a2_error;
SELECT intent_id = :'a2' AS is_a2, seq, event_type, actor FROM axme.events
WHERE intent_id = :'a2' ORDER BY seq;
RESET ROLE;
SET ROLE sec_bob;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''0'')', :'a2') AS wait_other;
SELECT payload->>'card' AS card FROM axme.intents ORDER BY 1;
SELECT count(*) AS dead_letters_seen FROM axme.dead_letters;
RESET ROLE;

-- An admin member reads everything, secrets included; a superuser too.
SET ROLE sec_admin;
SELECT count(*) AS intents FROM axme.intents WHERE to_agent LIKE 'agent://secorg/%';
SELECT count(*) > 0 AS reads_secrets FROM axme.agent_secrets;
SELECT axme.agent_secret('agent://secorg/prod/hook') AS secret;
SELECT options->'headers' AS headers FROM axme.agents WHERE address = 'agent://secorg/prod/hook';
SELECT (axme.get_intent(:'b3'))->'payload' AS any_payload;
SELECT pg_temp.err('SELECT axme.resolve($1, ''CANCELED'')', :'b3') AS resolve;
RESET ROLE;
SELECT count(*) AS intents FROM axme.intents WHERE to_agent LIKE 'agent://secorg/%';
SELECT actor FROM axme.events WHERE intent_id = :'b3' ORDER BY seq DESC LIMIT 1;

-- A role without any axme role gets nothing.
SET ROLE sec_nobody;
SELECT pg_temp.err('SELECT axme.get_intent($1)', :'a1') AS get_intent;
SELECT pg_temp.err('SELECT count(*) FROM axme.intents') AS intents;
SELECT pg_temp.err($$SELECT axme.channel('agent://secorg/prod/two')$$) AS channel;
RESET ROLE;

-- A role given the 0.1.0 README's blanket grants but none of the three roles: the functions'
-- own checks and row-level security still refuse it everything.
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {"card": "root-1"}}') AS s1 \gset
CREATE TEMP TABLE sec_row AS SELECT * FROM axme.intents WHERE intent_id = :'s1';
CREATE ROLE sec_legacy;
GRANT SELECT ON sec_row TO sec_legacy;
GRANT USAGE ON SCHEMA axme TO sec_legacy;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA axme TO sec_legacy;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA axme TO sec_legacy;
SET ROLE sec_legacy;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/one", "payload": {}}')$$) AS send;
SELECT pg_temp.err('SELECT axme.get_intent($1)', :'a1') AS get_intent;
SELECT pg_temp.err('SELECT * FROM axme.intent_events($1)', :'a1') AS intent_events;
SELECT pg_temp.err('SELECT axme.wait_for($1, ''0'')', :'a1') AS wait_for;
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://secorg/prod/one')$$) AS poll;
SELECT pg_temp.err('SELECT axme.resolve($1, ''CANCELED'')', :'b2') AS resolve;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://secorg/prod/one', 'poll', NULL, '{"db_role": "sec_legacy"}')$$) AS register;
SELECT pg_temp.err($$SELECT axme.agent_secret('agent://secorg/prod/hook')$$) AS agent_secret;
SELECT pg_temp.err($$SELECT axme.channel('agent://secorg/prod/one')$$) AS channel;
SELECT count(*) AS completed FROM axme.complete_many(ARRAY[:'b2'::uuid]);
SELECT (SELECT count(*) FROM axme.intents) AS intents, (SELECT count(*) FROM axme.events) AS events,
       (SELECT count(*) FROM axme.agents) AS agents, (SELECT count(*) FROM axme.agent_secrets) AS secrets,
       (SELECT count(*) FROM axme.idempotency_keys) AS keys, (SELECT count(*) FROM axme.dead_letters) AS dead_letters;
SELECT pg_temp.err('UPDATE axme.intents SET status = ''COMPLETED''') AS update_intents;
SELECT pg_temp.err('INSERT INTO axme.events (intent_id, seq, event_type, status) VALUES ($1, 99, ''x'', ''COMPLETED'')', :'a1') AS insert_event;
SELECT pg_temp.err('SELECT axme.complete($1)', :'s1') AS complete;
-- private functions run with the caller's rights: row-level security lets them change nothing
SELECT pg_temp.err('SELECT axme._transition(ROW(r.*)::axme.intents, ''COMPLETED'', ''intent.completed'', ''{}'') FROM sec_row r') AS transition;
RESET ROLE;
SELECT status, event_seq FROM axme.intents WHERE intent_id = :'s1';
DROP TABLE sec_row;
REVOKE ALL ON ALL TABLES IN SCHEMA axme FROM sec_legacy;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM sec_legacy;
REVOKE ALL ON SCHEMA axme FROM sec_legacy;
DROP ROLE sec_legacy;

-- from_agent naming an agent mapped to a role: only that role (and admins) may send in its name;
-- an unmapped or unregistered address is a label anyone may use.
SET ROLE sec_alice;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/one", "payload": {}}')$$) AS spoof_mapped;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/one", "payload": {}}', 'spoof-key-0001')$$) AS spoof_with_key;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/orphan", "payload": {}}')$$) AS unmapped_label;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://otherorg/prod/anyone", "payload": {}}')$$) AS unregistered_label;
RESET ROLE;
GRANT axme_sender TO sec_w1_member;
SET ROLE sec_w1_member;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/one", "payload": {}}')$$) AS own_agent;
RESET ROLE;
REVOKE axme_sender FROM sec_w1_member;
SET ROLE sec_admin;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/one", "payload": {}}')$$) AS admin;
RESET ROLE;
SELECT sender_role, from_agent FROM axme.intents WHERE to_agent = 'agent://secorg/prod/orphan' AND from_agent IS NOT NULL
ORDER BY sender_role::text, from_agent;

-- Removing db_role leaves the agent to admins.
SELECT axme.register_agent('agent://secorg/prod/two', 'stream', NULL, '{"db_role": null}');
SET ROLE sec_w2;
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://secorg/prod/two')$$) AS poll_after_unmap;
SELECT count(*) AS intents_seen FROM axme.intents;
RESET ROLE;

-- Inbox (human tasks): only the role of the thread's current owner (its inbox's db_role) lists,
-- follows, answers, hands on and decides; the intent's sender and receiver may read the thread.
CREATE ROLE sec_w2_member IN ROLE sec_w2;
SELECT axme.register_agent('agent://secorg/prod/inbox-a', 'inbox', NULL, '{"db_role": "sec_w1"}');
SELECT axme.register_agent('agent://secorg/prod/inbox-b', 'inbox', NULL, '{"db_role": "sec_w2"}');
SET ROLE sec_alice;
SELECT axme.send_intent('{"intent_type": "intent.sec.approve.v1", "to_agent": "agent://secorg/prod/inbox-a", "payload": {"card": "task-1"}, "human_task": {"task_type": "approval", "title": "Approve"}}') AS t1 \gset
RESET ROLE;
SELECT thread_id AS th1 FROM axme.threads WHERE intent_id = :'t1' \gset
SET ROLE sec_w2;
SELECT pg_temp.err($$SELECT count(*) FROM axme.inbox('agent://secorg/prod/inbox-a')$$) AS inbox_other;
SELECT pg_temp.err($$SELECT * FROM axme.inbox_changes('agent://secorg/prod/inbox-a')$$) AS changes_other;
SELECT pg_temp.err('SELECT axme.inbox_thread($1)', :'th1') AS thread_other;
SELECT pg_temp.err('SELECT axme.decide($1, ''approved'')', :'t1') AS decide_other;
SELECT pg_temp.err('SELECT axme.reply($1, ''mine now'')', :'th1') AS reply_other;
SELECT pg_temp.err($$SELECT axme.delegate($1, 'agent://secorg/prod/inbox-b')$$, :'th1') AS delegate_other;
SELECT (SELECT count(*) FROM axme.threads) AS threads_seen, (SELECT count(*) FROM axme.thread_messages) AS messages_seen,
       (SELECT count(*) FROM axme.inbox_feed) AS feed_seen;
RESET ROLE;
SET ROLE sec_bob;
SELECT pg_temp.err('SELECT axme.inbox_thread($1)', :'th1') AS thread_other_sender;
SELECT pg_temp.err('SELECT axme.decide($1, ''approved'')', :'t1') AS decide_sender;
RESET ROLE;
SET ROLE sec_alice;
SELECT (axme.inbox_thread(:'th1'))->'intent'->'payload' AS thread_own_sender;
SELECT count(*) AS threads_seen FROM axme.threads;
RESET ROLE;
SET ROLE sec_w1;
SELECT count(*) AS own_inbox FROM axme.inbox('agent://secorg/prod/inbox-a');
SELECT jsonb_array_length(changes) AS own_changes FROM axme.inbox_changes('agent://secorg/prod/inbox-a');
SELECT axme.reply(:'th1', 'looking', 'Wanda');
SELECT axme.delegate(:'th1', 'agent://secorg/prod/inbox-b', 'yours');
-- handed on: the old owner may no longer decide, answer or list it as its own
SELECT pg_temp.err('SELECT axme.decide($1, ''approved'')', :'t1') AS decide_after_delegate;
SELECT pg_temp.err('SELECT axme.reply($1, ''still me'')', :'th1') AS reply_after_delegate;
SELECT count(*) AS own_inbox_after FROM axme.inbox('agent://secorg/prod/inbox-a');
RESET ROLE;
-- the new owner decides through a member role (SET ROLE): the recorded actor is that role
SET ROLE sec_w2_member;
SELECT count(*) AS new_owner_inbox FROM axme.inbox('agent://secorg/prod/inbox-b');
SELECT axme.decide(:'t1', 'approved', 'fine', '{}', 'Bea');
RESET ROLE;
SELECT result->>'actor' AS result_actor, result->>'actor_name' AS actor_name FROM axme.intents WHERE intent_id = :'t1';
SELECT seq, event_type, actor FROM axme.events WHERE intent_id = :'t1' ORDER BY seq;
SELECT seq, kind, actor, actor_name FROM axme.thread_messages WHERE thread_id = :'th1' ORDER BY seq;

-- Agent administration and retention are for admins: refused to a receiver, a sender, and a role
-- holding EXECUTE on every function but none of the axme roles (the functions' own checks).
CREATE ROLE sec_exec;
GRANT USAGE ON SCHEMA axme TO sec_exec;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA axme TO sec_exec;
GRANT axme_agent TO sec_exec;
SELECT axme.register_agent('agent://secorg/prod/hook', 'http', 'https://user:token@example.com/hook', '{"db_role": "sec_exec"}');
SET ROLE sec_exec;
SELECT f AS admin_only, pg_temp.err(q) FROM (VALUES
    ('enable_agent', $$SELECT axme.enable_agent('agent://secorg/prod/hook')$$),
    ('pause_agent', $$SELECT axme.pause_agent('agent://secorg/prod/hook')$$),
    ('resume_agent', $$SELECT axme.resume_agent('agent://secorg/prod/hook')$$),
    ('unregister_agent', $$SELECT axme.unregister_agent('agent://secorg/prod/hook', true)$$),
    ('purge_dead_letters', $$SELECT axme.purge_dead_letters('agent://secorg/prod/hook')$$),
    ('rotate_secret', $$SELECT axme.rotate_secret('agent://secorg/prod/hook')$$),
    ('cleanup', 'SELECT axme.cleanup()'),
    ('metrics', 'SELECT axme.metrics()')) v(f, q) ORDER BY 1;
SELECT pg_temp.err('SELECT count(*) FROM axme.endpoint_health') AS endpoint_health;
SELECT pg_temp.err('SELECT count(*) FROM axme.worker_status') AS worker_status;
RESET ROLE;
SET ROLE sec_alice;
SELECT pg_temp.err($$SELECT axme.pause_agent('agent://secorg/prod/one')$$) AS pause_sender;
SELECT pg_temp.err('SELECT axme.cleanup()') AS cleanup_sender;
SELECT pg_temp.err('SELECT axme.metrics()') AS metrics_sender;
SELECT pg_temp.err('SELECT count(*) FROM axme.endpoint_health') AS endpoint_health_sender;
RESET ROLE;
SELECT paused_at IS NULL AS not_paused, disabled_at IS NULL AS not_disabled FROM axme.agents WHERE address = 'agent://secorg/prod/hook';
-- an admin member does all of it; pg_monitor reads metrics (not the endpoint view: it shows URLs)
SET ROLE sec_admin;
SELECT axme.pause_agent('agent://secorg/prod/hook');
SELECT axme.resume_agent('agent://secorg/prod/hook');
SELECT axme.enable_agent('agent://secorg/prod/hook') AS was_disabled;
SELECT axme.purge_dead_letters('agent://secorg/prod/hook') AS purged;
SELECT (axme.cleanup()) ? 'intents' AS cleaned;
SELECT axme.metrics() LIKE '# HELP%' AS metrics;
SELECT count(*) AS endpoints FROM axme.endpoint_health WHERE agent = 'agent://secorg/prod/hook';
SELECT axme.unregister_agent('agent://secorg/prod/hook', true) >= 0 AS unregistered;
RESET ROLE;
CREATE ROLE sec_mon IN ROLE pg_monitor;
SET ROLE sec_mon;
SELECT axme.metrics() LIKE '# HELP%' AS metrics_monitor;
SELECT pg_temp.err('SELECT count(*) FROM axme.endpoint_health') AS endpoint_health_monitor;
RESET ROLE;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM sec_exec;
REVOKE ALL ON SCHEMA axme FROM sec_exec;
DROP ROLE sec_exec;
DROP ROLE sec_mon;

-- Internal handlers run as the role that registered them (the caller, not the functions' owner).
CREATE FUNCTION public.sec_handler(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SET ROLE sec_admin;
SELECT axme.register_agent('agent://secorg/prod/internal', 'internal', NULL, '{"handler": "public.sec_handler"}');
RESET ROLE;
SELECT registered_by, db_role FROM axme.agents WHERE address = 'agent://secorg/prod/internal';
SELECT axme.unregister_agent('agent://secorg/prod/internal');
DROP FUNCTION public.sec_handler(jsonb);

-- Idempotency keys are per sending role: two senders using the same unmapped from_agent label
-- and the same key each get their own intent (not the other's intent_id); each retry returns its own.
SET ROLE sec_alice;
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/shared-label", "payload": {"n": 1}}', 'shared-key-0001') AS ka \gset
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/shared-label", "payload": {"n": 1}}', 'shared-key-0001') = :'ka' AS alice_retry_same;
RESET ROLE;
SET ROLE sec_bob;
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/shared-label", "payload": {"n": 1}}', 'shared-key-0001') AS kb \gset
SELECT :'kb' <> :'ka' AS bob_got_his_own;
SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/shared-label", "payload": {"n": 1}}', 'shared-key-0001') = :'kb' AS bob_retry_same;
-- and a different document under bob's key is bob's conflict, not alice's
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "intent.sec.v1", "to_agent": "agent://secorg/prod/orphan", "from_agent": "agent://secorg/prod/shared-label", "payload": {"n": 2}}', 'shared-key-0001')$$) AS bob_conflict;
RESET ROLE;
SELECT sender_role, sender, count(*) FROM axme.idempotency_keys WHERE key = 'shared-key-0001' GROUP BY 1, 2 ORDER BY 1;

-- axme._secure() covers objects added later (by a later upgrade script): a public function
-- becomes SECURITY DEFINER for admins only, a table gets the policy its columns allow, a view
-- that reads an admin-only column is for admins only, and its private function gets EXECUTE for
-- axme_admin.
CREATE FUNCTION axme.sec_later() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION axme._sec_later_private() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TABLE axme.sec_later_by_intent (intent_id uuid, note text);
CREATE TABLE axme.sec_later_by_owner (owner_id bigint, note text);
CREATE TABLE axme.sec_later_plain (note text);
CREATE VIEW axme.sec_later_urls AS SELECT address, endpoint_url FROM axme.agents;
CREATE VIEW axme.sec_later_fn AS SELECT axme._sec_later_private() AS one;
CREATE VIEW axme.sec_later_ok AS SELECT intent_id, status FROM axme.intents;
SELECT axme._secure();
SELECT p.oid::regprocedure, p.prosecdef, p.proconfig, has_function_privilege('axme_admin', p.oid, 'EXECUTE') AS admin,
       has_function_privilege('axme_sender', p.oid, 'EXECUTE') AS sender
FROM pg_proc p WHERE p.pronamespace = 'axme'::regnamespace AND p.proname LIKE '%sec\_later%' ORDER BY 1;
SELECT c.oid::regclass AS rel, c.relrowsecurity AS rls, has_table_privilege('axme_sender', c.oid, 'SELECT') AS sender,
       has_table_privilege('axme_admin', c.oid, 'SELECT') AS admin, obj_description(p.oid, 'pg_policy') AS policy
FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.relnamespace = 'axme'::regnamespace AND c.relname LIKE 'sec\_later%' ORDER BY 1;
INSERT INTO axme.sec_later_by_intent VALUES (:'a1', 'alice''s'), (:'b1', 'bob''s');
INSERT INTO axme.sec_later_by_owner SELECT agent_id, address FROM axme.agents WHERE address LIKE 'agent://secorg/%';
SET ROLE sec_alice;
SELECT note FROM axme.sec_later_by_intent;
SELECT count(*) AS ok_view_rows FROM axme.sec_later_ok;
RESET ROLE;
SET ROLE sec_w1;
SELECT note FROM axme.sec_later_by_owner ORDER BY note;
RESET ROLE;
DROP VIEW axme.sec_later_urls, axme.sec_later_fn, axme.sec_later_ok;
DROP TABLE axme.sec_later_by_intent, axme.sec_later_by_owner, axme.sec_later_plain;
DROP FUNCTION axme.sec_later(), axme._sec_later_private();

REVOKE axme_sender FROM sec_alice, sec_bob;
REVOKE axme_agent FROM sec_w1, sec_w2;
REVOKE axme_admin FROM sec_admin;
DROP ROLE sec_alice;
DROP ROLE sec_bob;
DROP ROLE sec_w1_member;
DROP ROLE sec_w1;
DROP ROLE sec_w2_member;
DROP ROLE sec_w2;
DROP ROLE sec_admin;
DROP ROLE sec_nobody;
