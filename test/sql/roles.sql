-- roles: axme names roles by OID (regrole), so a role dropped and created again under the same
-- name is another role: it receives nothing, reads nothing and reuses no key of the old one.  An
-- agent whose role is gone delivers nothing and is disabled with an alert role_missing when a
-- claim path first sees it.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

-- A receiving role dropped, a new one of the same name.
CREATE ROLE roles_recv LOGIN;
GRANT axme_agent TO roles_recv;
SELECT axme.register_agent('agent://rolesorg/sec/reuse', 'poll', NULL, '{"db_role": "roles_recv"}');
SELECT db_role = 'roles_recv'::regrole AS bound_by_oid, pg_typeof(db_role), pg_typeof(registered_by)
FROM axme.agents WHERE address = 'agent://rolesorg/sec/reuse';
SELECT axme.send_intent('{"intent_type": "intent.sec.r.v1", "to_agent": "agent://rolesorg/sec/reuse",
                          "payload": {"s": "SECRET"}}') IS NOT NULL AS sent;
CREATE TEMP TABLE old_oid AS SELECT 'roles_recv'::regrole::oid AS oid;
DROP ROLE roles_recv;                    -- allowed; the agent keeps the old OID
SELECT db_role::oid = (SELECT oid FROM old_oid) AS same_oid, db_role::text ~ '^[0-9]+$' AS shown_as_oid
FROM axme.agents WHERE address = 'agent://rolesorg/sec/reuse';
CREATE ROLE roles_recv LOGIN;
GRANT axme_agent TO roles_recv;
SET ROLE roles_recv;
-- the new role: not the agent's receiver (42501), reads no intent, sees no payload
SELECT pg_temp.err($$SELECT payload FROM axme.poll('agent://rolesorg/sec/reuse', 1)$$);
SELECT count(*) AS intents_visible FROM axme.intents;
SELECT count(*) AS threads_visible FROM axme.threads;
RESET ROLE;
-- an admin polling finds the role gone: nothing handed out, the agent disabled, one alert
SELECT count(*) AS handed_out FROM axme.poll('agent://rolesorg/sec/reuse', 1);
SELECT disabled_at IS NOT NULL AS disabled, disabled_reason FROM axme.agents WHERE address = 'agent://rolesorg/sec/reuse';
SELECT agent, kind, details->>'mode' AS mode FROM axme.alerts WHERE kind = 'role_missing' ORDER BY id;
SELECT count(*) AS handed_out_again FROM axme.poll('agent://rolesorg/sec/reuse', 1);
SELECT count(*) AS alerts FROM axme.alerts WHERE kind = 'role_missing';
SELECT status, attempt FROM axme.intents WHERE to_agent = 'agent://rolesorg/sec/reuse';
-- re-registering without db_role is refused while the bound role is gone (42704, with a hint)
SELECT regexp_replace(pg_temp.err($$SELECT axme.register_agent('agent://rolesorg/sec/reuse', 'poll')$$, NULL, true),
                      'OID \d+', 'OID <oid>') AS err;
-- naming the role again binds the agent to the new role, by its new OID; enable_agent turns it on
SELECT axme.register_agent('agent://rolesorg/sec/reuse', 'poll', NULL, '{"db_role": "roles_recv"}');
SELECT db_role = 'roles_recv'::regrole AS bound_to_new FROM axme.agents WHERE address = 'agent://rolesorg/sec/reuse';
SELECT axme.enable_agent('agent://rolesorg/sec/reuse');
SET ROLE roles_recv;
SELECT payload, attempt FROM axme.poll('agent://rolesorg/sec/reuse', 1);
RESET ROLE;
-- removing db_role (JSON null) leaves the agent to admins
SELECT axme.register_agent('agent://rolesorg/sec/reuse', 'poll', NULL, '{"db_role": null}');
SELECT db_role IS NULL AS admins_only FROM axme.agents WHERE address = 'agent://rolesorg/sec/reuse';
SELECT pg_temp.err($$SELECT axme.register_agent('agent://rolesorg/sec/reuse', 'poll', NULL, '{"db_role": "roles_nobody"}')$$);

-- A sending role dropped and created again: the new one reads none of the old intents and gets
-- a new intent for the old one's idempotency key.
CREATE ROLE roles_send;
GRANT axme_sender TO roles_send;
SELECT axme.register_agent('agent://rolesorg/sec/keys', 'poll');
SET ROLE roles_send;
CREATE TEMP TABLE first_send AS
SELECT axme.send_intent('{"intent_type": "intent.sec.k.v1", "to_agent": "agent://rolesorg/sec/keys",
                          "payload": {"n": 1}}', 'roles-key-0001') AS id;
SELECT count(*) AS own_intents FROM axme.intents;
RESET ROLE;
SELECT count(*) AS keys FROM axme.idempotency_keys WHERE sender_role = 'roles_send'::regrole;
DROP TABLE first_send;
DROP ROLE roles_send;
CREATE ROLE roles_send;
GRANT axme_sender TO roles_send;
SET ROLE roles_send;
SELECT count(*) AS old_intents_visible FROM axme.intents;
SELECT axme.send_intent('{"intent_type": "intent.sec.k.v1", "to_agent": "agent://rolesorg/sec/keys",
                          "payload": {"n": 1}}', 'roles-key-0001') IS NOT NULL AS new_intent;
SELECT count(*) AS own_intents FROM axme.intents;
RESET ROLE;
SELECT count(DISTINCT intent_id) AS intents_for_the_key, count(DISTINCT sender_role) AS roles
FROM axme.idempotency_keys WHERE key = 'roles-key-0001';
SELECT count(*) AS old_reader_gone FROM axme.intents i
WHERE i.to_agent = 'agent://rolesorg/sec/keys' AND NOT axme._role_exists(i.sender_role);

-- DROP OWNED and REASSIGN OWNED then DROP ROLE: the same, the agent keeps the old OID.
CREATE ROLE roles_owner;
GRANT axme_agent TO roles_owner;
CREATE SCHEMA roles_owned AUTHORIZATION roles_owner;
SELECT axme.register_agent('agent://rolesorg/sec/owned', 'stream', NULL, '{"db_role": "roles_owner"}');
SELECT axme.send_intent('{"intent_type": "intent.sec.o.v1", "to_agent": "agent://rolesorg/sec/owned",
                          "payload": {}}') IS NOT NULL AS sent;
REASSIGN OWNED BY roles_owner TO CURRENT_USER;
DROP OWNED BY roles_owner;
DROP ROLE roles_owner;
DROP SCHEMA roles_owned;
CREATE ROLE roles_owner;
GRANT axme_agent TO roles_owner;
SET ROLE roles_owner;
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://rolesorg/sec/owned')$$);
SELECT count(*) AS intents_visible FROM axme.intents;
RESET ROLE;
SELECT count(*) AS handed_out FROM axme.poll('agent://rolesorg/sec/owned');
SELECT disabled_reason IS NOT NULL AS disabled FROM axme.agents WHERE address = 'agent://rolesorg/sec/owned';

-- The worker claim paths disable such agents too: http (db_role gone), internal (the role the
-- handler runs as gone), inbox (the owner's role gone).  Paused first, so that a preloaded worker
-- hands nothing out before the role goes; a paused agent is disabled all the same.
CREATE ROLE roles_hook;
CREATE ROLE roles_handler;
CREATE ROLE roles_inbox;
CREATE FUNCTION public.roles_handler(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
GRANT EXECUTE ON FUNCTION public.roles_handler(jsonb) TO roles_handler;
SELECT axme.register_agent('agent://rolesorg/sec/hook', 'http', 'https://example.com/hook', '{"db_role": "roles_hook"}');
SELECT axme.register_agent('agent://rolesorg/sec/handler', 'internal', NULL,
                           '{"handler": "public.roles_handler", "db_role": "roles_handler"}');
SELECT axme.register_agent('agent://rolesorg/sec/inbox', 'inbox', NULL, '{"db_role": "roles_inbox"}');
SELECT axme.pause_agent(a) FROM unnest(ARRAY['agent://rolesorg/sec/hook', 'agent://rolesorg/sec/handler',
                                             'agent://rolesorg/sec/inbox']) a;
DROP ROLE roles_hook;
REVOKE EXECUTE ON FUNCTION public.roles_handler(jsonb) FROM roles_handler;
DROP ROLE roles_handler;
DROP ROLE roles_inbox;
CREATE ROLE roles_handler;   -- a new role of the same name is not the handler's identity
SELECT count(*) AS claimed FROM axme._http_claim(10, '{}', '{}') WHERE intent_id IS NOT NULL;
SELECT count(*) AS claimed FROM axme._internal_claim() WHERE intent_id IS NOT NULL;
SELECT axme._inbox_assign_due() AS assigned;
SELECT address, delivery_mode, disabled_reason FROM axme.agents
WHERE address IN ('agent://rolesorg/sec/hook', 'agent://rolesorg/sec/handler', 'agent://rolesorg/sec/inbox')
ORDER BY address;
SELECT agent, details->>'mode' AS mode FROM axme.alerts WHERE kind = 'role_missing' ORDER BY agent;

-- An internal agent without db_role runs as the role that registered it: registered_by, by OID.
CREATE ROLE roles_reg;
GRANT axme_admin TO roles_reg;
GRANT EXECUTE ON FUNCTION public.roles_handler(jsonb) TO roles_reg;
SET ROLE roles_reg;
SELECT axme.register_agent('agent://rolesorg/sec/byreg', 'internal', NULL, '{"handler": "public.roles_handler"}');
RESET ROLE;
SELECT registered_by = 'roles_reg'::regrole AS by_oid FROM axme.agents WHERE address = 'agent://rolesorg/sec/byreg';
SELECT axme.pause_agent('agent://rolesorg/sec/byreg');
REVOKE EXECUTE ON FUNCTION public.roles_handler(jsonb) FROM roles_reg;
DROP ROLE roles_reg;
SELECT count(*) AS claimed FROM axme._internal_claim() WHERE intent_id IS NOT NULL;
SELECT disabled_reason FROM axme.agents WHERE address = 'agent://rolesorg/sec/byreg';

-- Clean up the cluster-wide roles.
SELECT axme.unregister_agent(address, true) >= 0 AS unregistered FROM axme.agents
WHERE address LIKE 'agent://rolesorg/%' ORDER BY address;
DROP FUNCTION public.roles_handler(jsonb);
DROP ROLE roles_recv, roles_send, roles_owner, roles_handler;
