-- agents: register_agent (validation, upsert, option merge), channel(), the GUCs.
-- Output must not depend on shared_preload_libraries (the suite runs with and without it).
\i test/include/setup.psql

-- A valid registration, one of every mode.
SELECT axme.register_agent('agent://myorg/prod/agent-poll');
SELECT axme.register_agent('agent://myorg/prod/agent-stream', 'stream');
SELECT axme.register_agent('agent://myorg/prod/agent-http', 'http', 'https://example.com/hook');
SELECT axme.register_agent('agent://myorg/prod/agent-inbox', 'inbox');
CREATE FUNCTION public.agents_handler(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT axme.register_agent('agent://myorg/prod/agent-internal', 'internal', NULL, '{"handler": "public.agents_handler"}');
SELECT address, delivery_mode, endpoint_url, options, registered_by = current_user::text::regrole AS by_me
FROM axme.agents WHERE address LIKE 'agent://myorg/prod/agent-%' ORDER BY agent_id;

-- Address rules: org and workspace 3..63 of [a-z0-9-] without leading/trailing '-',
-- name 2..63 of [a-z0-9._-] starting and ending alphanumeric.
SELECT replace(left(a, 34), chr(10), '\n') AS address, length(a) AS len,
       split_part(pg_temp.err(format('SELECT axme.register_agent(%L)', a)), ' ', 1) AS sqlstate
FROM unnest(ARRAY[
    'agent://abc/def/gh',                                   -- shortest valid
    'agent://' || repeat('o', 63) || '/' || repeat('w', 63) || '/' || repeat('n', 63),  -- longest valid
    'agent://my-org/work-space/a.b_c-d9',
    '',
    'agent://myorg/prod',
    'agent://myorg/prod/',
    'agent://MyOrg/prod/x1',
    'agent://myorg/prod/X1',
    'agent://ab/prod/x1',
    'agent://myorg/pr/x1',
    'agent://-org/prod/x1',
    'agent://org-/prod/x1',
    'agent://myorg/-prod/x1',
    'agent://my_org/prod/x1',
    'agent://myorg/prod/x',
    'agent://myorg/prod/.x1',
    'agent://myorg/prod/x1.',
    'agent://myorg/prod/-x1',
    'agent://' || repeat('o', 64) || '/prod/x1',
    'agent://myorg/' || repeat('w', 64) || '/x1',
    'agent://myorg/prod/' || repeat('n', 64),
    'http://myorg/prod/x1',
    'agent:/myorg/prod/x1',
    'agent://myorg/prod/x1/extra',
    'agent://myorg/prod/x 1',
    ' agent://myorg/prod/x1',
    'agent://myorg/prod/x1' || chr(10),
    'agent://myorg/prod/xé'
]) a;
SELECT pg_temp.err($$SELECT axme.register_agent(NULL)$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/x', 'poll')$$, NULL, true);

-- Modes and endpoints.
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', NULL)$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', '')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'POLL')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'webhook')$$, NULL, true);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'http')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'http', 'ftp://example.com/x')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'http', '')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m1', 'poll', 'https://example.com/x')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/m2', 'http', 'http://127.0.0.1:8080/x')$$);

-- Options: only "retry" with max_attempts (1..1000), base_delay_ms, max_delay_ms.
SELECT o AS options, pg_temp.err(format('SELECT axme.register_agent(%L, %L, NULL, %L)',
                                        'agent://myorg/prod/opts', 'poll', o)) AS result
FROM unnest(ARRAY[
    '{}',
    '{"retry": {"max_attempts": 3}}',
    '{"retry": {"max_attempts": 1000, "base_delay_ms": 10, "max_delay_ms": 100}}',
    '{"foo": 1}',
    '{"retry": {"max_attempts": 3}, "foo": 1}',
    '{"retry": 5}',
    '{"retry": {"tries": 3}}',
    '{"retry": {"max_attempts": 0}}',
    '{"retry": {"max_attempts": 1001}}',
    '{"retry": {"max_attempts": -1}}',
    '{"retry": {"max_attempts": 2.5}}',
    '{"retry": {"max_attempts": 3.0}}',
    '{"retry": {"max_attempts": "3"}}',
    '{"retry": {"max_attempts": true}}',
    '{"retry": {"base_delay_ms": 0}}',
    '{"retry": {"base_delay_ms": 5000, "max_delay_ms": 10}}',
    '[]',
    '"x"',
    'null'
]::jsonb[]) o;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/opts', 'poll', NULL, NULL)$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/hooks', 'http', 'http://a b/')$$);

-- A refused registration writes nothing.
SELECT count(*) AS agents_before FROM axme.agents \gset
SELECT count(*) AS refused_written FROM axme.agents
WHERE address IN ('agent://myorg/prod/m1', 'agent://myorg/prod/x', 'agent://ab/prod/x1');

-- Re-registering is an upsert: same row (same agent_id), new mode, options merged
-- (nested objects merge, a JSON null removes a key).
SELECT agent_id AS opts_id FROM axme.agents WHERE address = 'agent://myorg/prod/opts' \gset
SELECT axme.register_agent('agent://myorg/prod/opts', 'poll', NULL, '{"retry": {"max_attempts": 4}}');
SELECT options FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
SELECT axme.register_agent('agent://myorg/prod/opts', 'stream', NULL, '{"retry": {"base_delay_ms": 50}}');
SELECT delivery_mode, options, agent_id = :opts_id AS same_id
FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
SELECT axme.register_agent('agent://myorg/prod/opts', 'stream');
SELECT options FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
SELECT axme.register_agent('agent://myorg/prod/opts', 'stream', NULL, '{"retry": {"base_delay_ms": null}}');
SELECT options FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
SELECT axme.register_agent('agent://myorg/prod/opts', 'stream', NULL, '{"retry": null}');
SELECT options FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
-- a merge that would end invalid is refused and keeps the stored options
SELECT axme.register_agent('agent://myorg/prod/opts', 'poll', NULL, '{"retry": {"max_attempts": 2}}');
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/opts', 'poll', NULL, '{"retry": {"max_attempts": 0}}')$$);
SELECT delivery_mode, options FROM axme.agents WHERE address = 'agent://myorg/prod/opts';
-- http -> poll drops the endpoint; poll -> http needs one
SELECT axme.register_agent('agent://myorg/prod/agent-http', 'poll');
SELECT delivery_mode, endpoint_url FROM axme.agents WHERE address = 'agent://myorg/prod/agent-http';
SELECT axme.register_agent('agent://myorg/prod/agent-http', 'http', 'https://example.com/hook2');
SELECT delivery_mode, endpoint_url FROM axme.agents WHERE address = 'agent://myorg/prod/agent-http';
SELECT count(*) - :agents_before AS new_agents FROM axme.agents;

-- channel(): axme_agent_<id>, a valid lower-case identifier of at most 63 bytes, stable across
-- re-registration, distinct for addresses that differ only past 63 bytes.
SELECT axme.channel('agent://myorg/prod/opts') = 'axme_agent_' || :opts_id AS channel_is_id;
SELECT axme.register_agent('agent://' || repeat('o', 63) || '/' || repeat('w', 63) || '/' || repeat('n', 62) || 'a');
SELECT axme.register_agent('agent://' || repeat('o', 63) || '/' || repeat('w', 63) || '/' || repeat('n', 62) || 'b');
SELECT count(DISTINCT c) = count(*) AS all_distinct, bool_and(c ~ '^[a-z0-9_]+$') AS identifiers,
       max(octet_length(c)) <= 63 AS short, bool_and(quote_ident(c) = c) AS no_quoting_needed
FROM (SELECT axme.channel(address) AS c FROM axme.agents) s;
SELECT axme.channel('agent://' || repeat('o', 63) || '/' || repeat('w', 63) || '/' || repeat('n', 62) || 'a')
    <> axme.channel('agent://' || repeat('o', 63) || '/' || repeat('w', 63) || '/' || repeat('n', 62) || 'b') AS long_addresses_differ;
SELECT pg_temp.err($$SELECT axme.channel(NULL)$$);
SELECT pg_temp.err($$SELECT axme.channel('not an address')$$);
SELECT pg_temp.err($$SELECT axme.channel('agent://myorg/prod/nobody')$$, NULL, true);

-- Internal agents: "handler" is required and checked against the catalogs at registration.
CREATE SCHEMA agents_h;
CREATE FUNCTION agents_h.ok(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT intent $$;
CREATE FUNCTION agents_h.two_args(intent jsonb, x int) RETURNS jsonb LANGUAGE sql AS $$ SELECT intent $$;
CREATE FUNCTION agents_h.text_arg(intent text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION agents_h.returns_text(intent jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION agents_h.returns_set(intent jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT intent $$;
CREATE PROCEDURE agents_h.proc(intent jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION agents_h.definer(intent jsonb) RETURNS jsonb LANGUAGE sql SECURITY DEFINER AS $$ SELECT intent $$;
CREATE FUNCTION agents_h.private(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT intent $$;
REVOKE EXECUTE ON FUNCTION agents_h.private(jsonb) FROM PUBLIC;
SET client_min_messages = warning;
DROP ROLE IF EXISTS agents_h_user;
DROP ROLE IF EXISTS agents_h_other;
DROP ROLE IF EXISTS agents_h_super;
RESET client_min_messages;
CREATE ROLE agents_h_user;
CREATE ROLE agents_h_other;
CREATE ROLE agents_h_super SUPERUSER;
GRANT USAGE ON SCHEMA axme, agents_h TO agents_h_user, agents_h_other;
GRANT ALL ON ALL TABLES IN SCHEMA axme TO agents_h_user;
GRANT ALL ON ALL SEQUENCES IN SCHEMA axme TO agents_h_user;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA axme TO agents_h_user;
SELECT o AS options, pg_temp.err(format('SELECT axme.register_agent(%L, %L, NULL, %L)',
                                        'agent://myorg/prod/int-h', 'internal', o)) AS result
FROM unnest(ARRAY[
    '{}',
    '{"handler": "agents_h.ok"}',
    '{"handler": "agents_h.ok", "timeout_ms": 250}',
    '{"handler": "agents_h.ok", "timeout_ms": 99}',
    '{"handler": "ok"}',
    '{"handler": "agents_h.ok(jsonb)"}',
    '{"handler": 5}',
    '{"handler": "agents_h.missing"}',
    '{"handler": "nosuchschema.ok"}',
    '{"handler": "agents_h.two_args"}',
    '{"handler": "agents_h.text_arg"}',
    '{"handler": "agents_h.returns_text"}',
    '{"handler": "agents_h.returns_set"}',
    '{"handler": "agents_h.proc"}',
    '{"handler": "agents_h.ok", "db_role": "agents_h_user"}',
    '{"handler": "agents_h.ok", "db_role": "no_such_role_x"}',
    '{"handler": "agents_h.ok", "db_role": "agents_h_super"}',
    '{"handler": "agents_h.private", "db_role": "agents_h_user"}',
    '{"handler": "agents_h.ok", "secret": "x"}'
]) o;
-- a superuser may register a handler that runs as itself (superuser) without db_role
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-h', 'internal', NULL, '{"handler": "agents_h.definer", "db_role": null}')$$);
SELECT options, registered_by = current_user::text::regrole AS by_me FROM axme.agents WHERE address = 'agent://myorg/prod/int-h';
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/poll-h', 'poll', NULL, '{"handler": "agents_h.ok"}')$$);
-- a role that is not an admin may not register agents at all (roles and security)
SET ROLE agents_h_user;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-u', 'internal', NULL, '{"handler": "agents_h.ok"}')$$);
RESET ROLE;
-- a non-superuser admin: the handler runs as the caller (not the functions' owner); may not name a
-- superuser db_role, nor a superuser's SECURITY DEFINER handler; the run-as role needs EXECUTE
GRANT axme_admin TO agents_h_user;
SET ROLE agents_h_user;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-u', 'internal', NULL, '{"handler": "agents_h.ok"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-o', 'internal', NULL, '{"handler": "agents_h.ok", "db_role": "agents_h_other"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-s', 'internal', NULL, '{"handler": "agents_h.ok", "db_role": "agents_h_super"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-u', 'internal', NULL, '{"handler": "agents_h.definer"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-u', 'internal', NULL, '{"handler": "agents_h.private"}')$$);
-- re-registering the superuser's agent makes it run as this role from now on
SELECT pg_temp.err($$SELECT axme.register_agent('agent://myorg/prod/int-h', 'internal', NULL, '{"handler": "agents_h.ok"}')$$);
RESET ROLE;
REVOKE axme_admin FROM agents_h_user;
SELECT address, options, registered_by FROM axme.agents WHERE address IN ('agent://myorg/prod/int-u', 'agent://myorg/prod/int-o', 'agent://myorg/prod/int-s', 'agent://myorg/prod/int-h') ORDER BY address;
DELETE FROM axme.agents WHERE address IN ('agent://myorg/prod/int-u', 'agent://myorg/prod/int-o', 'agent://myorg/prod/int-h');
REVOKE ALL ON ALL TABLES IN SCHEMA axme FROM agents_h_user;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA axme FROM agents_h_user;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM agents_h_user;
REVOKE ALL ON SCHEMA axme, agents_h FROM agents_h_user, agents_h_other;
DROP ROLE agents_h_user;
DROP ROLE agents_h_other;
DROP ROLE agents_h_super;

-- GUCs: defined once the library is loaded (with or without preload).
LOAD 'axme';
SHOW axme.max_delivery_attempts;
SHOW axme.max_payload_bytes;
SELECT pg_temp.err($$SET axme.max_delivery_attempts = 0$$);
SELECT pg_temp.err($$SET axme.max_delivery_attempts = 1001$$);
SELECT pg_temp.err($$SET axme.max_payload_bytes = 0$$);
SELECT pg_temp.err($$SET axme.no_such_setting = 1$$);
SET axme.max_delivery_attempts = 7;
SHOW axme.max_delivery_attempts;
RESET axme.max_delivery_attempts;
