/* axme 0.3.0 -> 0.4.0.
 *
 * From 0.4.0 on, the current definition of every object is in the concern files under sql/src/ and the fresh install
 * script sql/axme--0.4.0.sql is built from those files.  This script holds only what changed
 * since 0.3.0; test_upgrade compares the result with a fresh install, object by object.
 */
\echo Use "ALTER EXTENSION axme UPDATE" to load this file. \quit

-- Comments that cited a document users do not have.
COMMENT ON FUNCTION axme._valid_address(text) IS
    'Private: true when address is a valid agent address, agent://org/workspace/name.';
COMMENT ON DOMAIN axme.intent_status IS 'An intent status: CREATED, SUBMITTED, DELIVERED, ACKNOWLEDGED, IN_PROGRESS, WAITING, COMPLETED, FAILED, CANCELED or TIMED_OUT.';

-- Roles by OID.  agents.db_role (no longer a generated column), agents.registered_by,
-- intents.sender_role and idempotency_keys.sender_role become regrole: a role created later under
-- a dropped role's name is another role and matches nothing of the old one.
CREATE FUNCTION axme._caller_has(role regrole) RETURNS boolean
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_caller_has_oid_fn';
COMMENT ON FUNCTION axme._caller_has(regrole) IS
    'Private: whether the calling role has the privileges of the role with this OID (superusers: '
    'always; NULL, 0 or a dropped role''s OID: superusers only).';

CREATE FUNCTION axme._user_has(role regrole) RETURNS boolean
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_user_has_oid_fn';
COMMENT ON FUNCTION axme._user_has(regrole) IS
    'Private: whether current_user has the privileges of the role with this OID (superusers: '
    'always; NULL, 0 or a dropped role''s OID: superusers only). For row-level security policies.';

CREATE FUNCTION axme._caller_id() RETURNS regrole
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_caller_id_fn';
COMMENT ON FUNCTION axme._caller_id() IS
    'Private: the calling role (axme._caller()) by OID, as stored in sender_role and registered_by.';

CREATE FUNCTION axme._role_exists(role regrole) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'axme_role_exists_fn';
COMMENT ON FUNCTION axme._role_exists(regrole) IS
    'Private: whether a role with this OID exists (NULL or 0: false).';

CREATE OR REPLACE FUNCTION axme._role_named(name text) RETURNS regrole
LANGUAGE sql STABLE AS $$
    SELECT r.oid::regrole FROM pg_catalog.pg_roles r WHERE r.rolname = _role_named.name
$$;
COMMENT ON FUNCTION axme._role_named(text) IS
    'Private: the role of that exact name (no identifier quoting) as a regrole, NULL when none.';

-- Row-level security policies name the columns whose type changes: dropped here, re-created by
-- axme._secure() at the end.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT pol.polname, pol.polrelid::regclass AS rel FROM pg_catalog.pg_policy pol
        JOIN pg_catalog.pg_class c ON c.oid = pol.polrelid
        WHERE c.relnamespace = 'axme'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %s', p.polname, p.rel);
    END LOOP;
END $$;

-- Agents whose role no longer resolves (dropped since it was named) are disabled, with an alert:
-- their db_role (for internal agents without db_role: registered_by) becomes 0, which no role has.
WITH gone AS (
    UPDATE axme.agents ag SET disabled_at = coalesce(ag.disabled_at, now()), updated_at = now(),
           disabled_reason = coalesce(ag.disabled_reason,
               'role_missing: the role the agent ' ||
               CASE WHEN ag.db_role IS NOT NULL THEN 'receives as (db_role)' ELSE 'runs its handler as' END ||
               ' no longer exists; register it again with option db_role, then axme.enable_agent()')
    WHERE (ag.db_role IS NOT NULL AND axme._role_named(ag.db_role) IS NULL)
       OR (ag.delivery_mode = 'internal' AND ag.db_role IS NULL AND axme._role_named(ag.registered_by) IS NULL)
    RETURNING ag.address, ag.delivery_mode, ag.db_role, ag.registered_by
)
SELECT count(axme._alert(g.address, 'role_missing',
           jsonb_build_object('mode', g.delivery_mode, 'db_role', g.db_role, 'registered_by', g.registered_by,
                              'message', 'the role of the agent no longer exists (found by the upgrade to 0.4.0): it delivers nothing')))
FROM gone g;
ALTER TABLE axme.agents ALTER COLUMN db_role DROP EXPRESSION;
ALTER TABLE axme.agents
    ALTER COLUMN db_role TYPE regrole
        USING CASE WHEN db_role IS NOT NULL THEN coalesce(axme._role_named(db_role), '-'::regrole) END,
    ALTER COLUMN registered_by TYPE regrole USING coalesce(axme._role_named(registered_by), '-'::regrole);
-- Intents of a dropped sender role: 0, readable by their receiver and admins only.
ALTER TABLE axme.intents
    ALTER COLUMN sender_role TYPE regrole USING coalesce(axme._role_named(sender_role), '-'::regrole);
-- The keys of a dropped role can never be used again (a new role has a new OID): they go.
DELETE FROM axme.idempotency_keys k WHERE axme._role_named(k.sender_role) IS NULL;
ALTER TABLE axme.idempotency_keys
    ALTER COLUMN sender_role TYPE regrole USING axme._role_named(sender_role);
COMMENT ON COLUMN axme.agents.db_role IS
    'The database role (by OID) that receives for the agent, resolved from option db_role by '
    'register_agent; NULL: admins only. When that role has been dropped the agent delivers '
    'nothing and is disabled (alert role_missing).';
COMMENT ON COLUMN axme.agents.registered_by IS
    'The role (by OID) that registered the agent last; an internal agent without db_role runs its '
    'handler as this role.';
COMMENT ON COLUMN axme.intents.sender_role IS
    'The role (by OID) that sent the intent; it may read the intent. A role created later under '
    'the same name is another role and may not.';
COMMENT ON COLUMN axme.idempotency_keys.sender_role IS
    'The role (by OID) that sent with the key (axme.intents.sender_role); keys of different roles, '
    'or of a dropped role and a later one of the same name, never meet.';

-- The role checks take the OID.
DROP FUNCTION axme._check_read(text, bigint, uuid);
DROP FUNCTION axme._can_read_intent(text, bigint);
CREATE FUNCTION axme._can_read_intent(sender_role regrole, agent_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT axme._caller_has(sender_role) OR axme._can_receive(agent_id)
$$;
COMMENT ON FUNCTION axme._can_read_intent(regrole, bigint) IS
    'Private: whether the caller may read an intent with this sender_role and agent_id (the sending '
    'role, the receiver''s role, admins).';

CREATE FUNCTION axme._check_read(sender_role regrole, agent_id bigint, intent_id uuid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT axme._can_read_intent(sender_role, agent_id) THEN
        RAISE EXCEPTION 'permission denied for intent %', intent_id
            USING ERRCODE = '42501',
                  DETAIL = 'Only its sending role, its receiver''s role (agent option db_role) and '
                           'members of axme_admin may read an intent.';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_read(regrole, bigint, uuid) IS
    'Private: 42501 unless the caller may read the intent (see axme._can_read_intent).';

CREATE OR REPLACE FUNCTION axme._check_intent_reader(intent_id uuid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_role regrole;
    v_agent bigint;
BEGIN
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT i.sender_role, i.agent_id INTO v_role, v_agent
    FROM axme.intents i WHERE i.intent_id = _check_intent_reader.intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM axme._check_read(v_role, v_agent, intent_id);
END $$;
COMMENT ON FUNCTION axme._check_intent_reader(uuid) IS
    'Private: 22023 NULL, P0002 unknown intent, 42501 unless the caller may read the intent.';

-- Agents whose role is gone deliver nothing: the claim paths disable them.
CREATE OR REPLACE FUNCTION axme._disable_roleless(mode text DEFAULT NULL, agent_id bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    a record;
    n integer := 0;
BEGIN
    FOR a IN
        UPDATE axme.agents ag SET disabled_at = now(), updated_at = now(),
               disabled_reason = 'role_missing: the role the agent ' ||
                   CASE WHEN ag.db_role IS NOT NULL THEN 'receives as (db_role)' ELSE 'runs its handler as' END ||
                   ' no longer exists; register it again with option db_role, then axme.enable_agent()'
        WHERE ag.disabled_at IS NULL
          AND (_disable_roleless.mode IS NULL OR ag.delivery_mode = _disable_roleless.mode)
          AND (_disable_roleless.agent_id IS NULL OR ag.agent_id = _disable_roleless.agent_id)
          AND (ag.db_role IS NOT NULL OR ag.delivery_mode = 'internal')
          AND NOT axme._role_exists(coalesce(ag.db_role, ag.registered_by))
        RETURNING ag.address, ag.delivery_mode, ag.db_role, ag.registered_by
    LOOP
        PERFORM axme._alert(a.address, 'role_missing',
            jsonb_build_object('mode', a.delivery_mode,
                               'db_role', a.db_role::oid,
                               'registered_by', a.registered_by::oid,
                               'message', 'the role of the agent no longer exists (dropped): it delivers nothing'));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme._disable_roleless(text, bigint) IS
    'Private: disable (role_missing) the agents whose db_role (internal without db_role: '
    'registered_by) no longer exists, with one alert role_missing each. Returns how many.';

CREATE OR REPLACE FUNCTION axme.register_agent(address text, delivery_mode text DEFAULT 'poll',
                                               endpoint_url text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    merged jsonb;
    old_mode text;
    new_secret text;
    v_agent_id bigint;
    v_db_role regrole;
BEGIN
    PERFORM axme._check_admin('register_agent');   -- sec: agents are configured by admins only
    PERFORM axme._check_address(address, 'address');
    IF delivery_mode IS NULL OR delivery_mode NOT IN ('stream', 'poll', 'http', 'inbox', 'internal') THEN
        RAISE EXCEPTION 'invalid delivery mode "%"', coalesce(delivery_mode, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use one of stream, poll, http, inbox, internal.';
    END IF;
    IF options IS NULL THEN
        RAISE EXCEPTION 'argument "options" must not be null' USING ERRCODE = '22023',
            HINT = 'Pass ''{}'' for no options.';
    END IF;
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'argument "options" must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    IF delivery_mode = 'http' THEN
        IF endpoint_url IS NULL OR length(endpoint_url) > 2048
           OR endpoint_url !~* '^https?://[^/?#[:space:]]+([/?#][^[:space:]]*)?$' THEN
            RAISE EXCEPTION 'invalid endpoint_url "%" for an http agent', coalesce(endpoint_url, 'NULL')
                USING ERRCODE = '22023', HINT = 'Use an http:// or https:// URL.';
        END IF;
        IF axme._url_problem(endpoint_url) IS NOT NULL THEN
            RAISE EXCEPTION 'invalid endpoint_url "%" for an http agent', endpoint_url
                USING ERRCODE = '22023', DETAIL = axme._url_problem(endpoint_url) || '.',
                      HINT = 'Use an http:// or https:// URL with a host name or address.';
        END IF;
    ELSIF endpoint_url IS NOT NULL THEN
        RAISE EXCEPTION 'endpoint_url is only for http agents' USING ERRCODE = '22023';
    END IF;
    -- The mode before, for the wake-ups below (no lock needed: a race only costs a wake-up).
    SELECT a.delivery_mode INTO old_mode FROM axme.agents a WHERE a.address = register_agent.address;
    -- The secret is kept apart from the options, which anyone reading axme.agents can see.
    IF jsonb_typeof(options->'secret') IS DISTINCT FROM 'null' THEN
        new_secret := options->>'secret';
    END IF;
    -- Merge inside the upsert, against the row as locked by it, so two concurrent registrations
    -- of one agent (the first ones included) merge one after the other; then check the result
    -- (an error undoes the upsert with the statement).
    -- db_role is resolved to an OID here, once (NULL when the name is unknown: 42704 below).
    INSERT INTO axme.agents AS a (address, delivery_mode, endpoint_url, options, registered_by, db_role)
    VALUES (address, delivery_mode, endpoint_url, axme._jsonb_merge('{}', options - 'secret'), axme._caller_id(),
            axme._role_named(options->>'db_role'))
    ON CONFLICT ON CONSTRAINT agents_address_key DO UPDATE
        SET delivery_mode = excluded.delivery_mode, endpoint_url = excluded.endpoint_url,
            options = axme._jsonb_merge(a.options, register_agent.options - 'secret'), updated_at = now(),
            db_role = CASE WHEN register_agent.options ? 'db_role' THEN excluded.db_role ELSE a.db_role END
    RETURNING a.options, a.agent_id, a.db_role INTO merged, v_agent_id, v_db_role;
    PERFORM axme._check_agent_options(delivery_mode,
        CASE WHEN new_secret IS NULL THEN merged ELSE merged || jsonb_build_object('secret', options->'secret') END);
    PERFORM axme._check_agent_refs(delivery_mode, merged, options);
    IF v_db_role IS NOT NULL AND NOT options ? 'db_role'
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = v_db_role) THEN
        RAISE EXCEPTION 'the role of agent "%" (option db_role, OID %) no longer exists', address, v_db_role::oid
            USING ERRCODE = '42704',
                  HINT = 'Pass {"db_role": "name"} again to bind the agent to a role that exists.';
    END IF;
    IF delivery_mode = 'internal' THEN
        -- the handler runs as db_role, else as the role that registered it last (checked above)
        UPDATE axme.agents a SET registered_by = axme._caller_id()   -- sec: the caller, not the definer
        WHERE a.agent_id = v_agent_id AND a.registered_by IS DISTINCT FROM axme._caller_id();   -- sec
        PERFORM axme._wake_internal();
    END IF;
    IF new_secret IS NOT NULL THEN
        DELETE FROM axme.agent_secrets s WHERE s.agent_id = v_agent_id;
        INSERT INTO axme.agent_secrets (agent_id, secret) VALUES (v_agent_id, new_secret);
    ELSIF delivery_mode = 'http' AND NOT EXISTS (SELECT FROM axme.agent_secrets s WHERE s.agent_id = v_agent_id) THEN
        INSERT INTO axme.agent_secrets (agent_id, secret) VALUES (v_agent_id, axme._random_secret());
    END IF;
    IF old_mode IS DISTINCT FROM delivery_mode THEN
        PERFORM axme._agents_changed();
    END IF;
    -- Pending intents follow the new mode; an http agent's are picked up by the worker now.
    IF delivery_mode = 'http' THEN
        PERFORM axme._wake_http();
    ELSIF delivery_mode = 'stream' AND old_mode IS DISTINCT FROM 'stream' THEN
        PERFORM axme._notify_agent(v_agent_id, i.intent_id)
        FROM axme.intents i WHERE i.agent_id = v_agent_id AND i.status = 'SUBMITTED' LIMIT 1;
    END IF;
END $$;
COMMENT ON FUNCTION axme.register_agent(text, text, text, jsonb) IS
    'Register or update an agent (upsert). address: agent://org/workspace/name; delivery_mode: '
    'stream | poll | http | inbox | internal; endpoint_url: http(s) URL, http agents only; options: '
    'merged into the stored ones (nested objects merge, null removes a key): retry {max_attempts, '
    'base_delay_ms, max_delay_ms}, and for http: secret (whsec_..., generated when absent, kept when '
    're-registering), timeout_ms (100..600000, default 15000), max_in_flight (1..10000, default 16), '
    'completion (on_2xx | explicit), headers {name: value} (at most 64, 16384 bytes in all), ca_file, '
    'client_cert_file, client_key_file (PEM contents, or a file in axme.tls_files_directory); for internal: '
    'handler ("schema.function", required: a function (intent jsonb) RETURNS jsonb), timeout_ms '
    '(100..600000, default 5000), db_role (http, poll, stream, inbox: the database role that receives '
    'for the agent, resolved and stored by OID; internal: the role the handler runs as, default the '
    'registering role), require_receipts (poll, stream: false lets ack/complete/fail... without '
    'attempt act on a handed-out intent; default true, see axme.require_receipts). Changing the '
    'mode moves pending intents to the new mode. Superusers and axme_admin members only. '
    'Errors: 42501 not an admin, 22023 invalid address, mode, URL or option, '
    '42704 unknown db_role, 42883 handler missing or with other arguments, 42804 handler not '
    'returning jsonb, 42501 handler would run as a superuser or as a role not the caller''s.';

CREATE OR REPLACE FUNCTION axme._check_agent_refs(mode text, merged jsonb, given jsonb) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    opt text;
    problem text;
BEGIN
    IF given ? 'db_role' AND jsonb_typeof(given->'db_role') = 'string'
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = merged->>'db_role') THEN
        RAISE EXCEPTION 'option "db_role": role "%" does not exist', merged->>'db_role'
            USING ERRCODE = '42704';
    END IF;
    IF mode = 'internal' THEN
        PERFORM axme._check_handler(merged->>'handler', merged->>'db_role');
    END IF;
    -- the worker reads these files as the server's OS user: only inside the directory the
    -- administrator chose (axme.tls_files_directory), or PEM contents
    FOR opt IN SELECT unnest(ARRAY['ca_file', 'client_cert_file', 'client_key_file']) LOOP
        IF given ? opt AND jsonb_typeof(given->opt) = 'string' THEN
            problem := axme._tls_file_problem(given->>opt);
            IF problem IS NOT NULL THEN
                RAISE EXCEPTION 'option "%": %', opt, problem
                    USING ERRCODE = '22023',
                          HINT = 'Pass the PEM contents, or a file inside the directory set by '
                                 'axme.tls_files_directory in postgresql.conf.';
            END IF;
        END IF;
    END LOOP;
    IF given ?| ARRAY['client_cert_file', 'client_key_file'] AND NOT axme._is_admin() THEN
        RAISE EXCEPTION 'only superusers and members of axme_admin may set options client_cert_file and client_key_file'
            USING ERRCODE = '42501';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_agent_refs(text, jsonb, jsonb) IS
    'Private: checks of agent options against the catalogs and settings (roles, handlers, TLS files, '
    'admin-only options). Errors: 42704 unknown role, 22023 a TLS file outside '
    'axme.tls_files_directory, 42501 an admin-only option set by someone else.';
COMMENT ON FUNCTION axme._inbox_assign_due(integer) IS
    'Private: assign human tasks whose not_before has passed (SUBMITTED -> WAITING with a task '
    'thread), at most max_count, oldest due first. Returns the number assigned.';


-- Receipts are required by default for poll and stream hand-outs (axme.require_receipts).
CREATE OR REPLACE FUNCTION axme._receipts_required() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'axme_receipts_required';
COMMENT ON FUNCTION axme._receipts_required() IS
    'Private: setting axme.require_receipts (default on), always false in axme''s own workers.';

CREATE OR REPLACE FUNCTION axme._needs_receipt(i axme.intents) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT i.attempt > 0 AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
       AND axme._receipts_required()
       AND coalesce((SELECT a.delivery_mode IN ('poll', 'stream')
                            AND a.options->'require_receipts' IS DISTINCT FROM 'false'::jsonb
                     FROM axme.agents a WHERE a.agent_id = i.agent_id), false)
$$;
COMMENT ON FUNCTION axme._needs_receipt(axme.intents) IS
    'Private: whether a receiver''s call on this intent must carry its receipt (see axme.require_receipts).';

CREATE OR REPLACE FUNCTION axme._lock_receipt(intent_id uuid, receipt integer, what text) RETURNS axme.intents
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, receipt);
BEGIN
    IF receipt IS NULL AND axme._needs_receipt(i) THEN
        RAISE EXCEPTION '% of intent % needs its receipt', what, i.intent_id
            USING ERRCODE = '55000',
                  DETAIL = 'The intent was handed out by poll (attempt ' || i.attempt || '); a call '
                           'without the receipt could overwrite the work of a receiver that holds it now.',
                  HINT = 'Pass the attempt that poll returned (attempt => n), or use axme.resolve(); '
                         'SET axme.require_receipts = off or the agent option "require_receipts": false '
                         'turn the check off.';
    END IF;
    RETURN i;
END $$;
COMMENT ON FUNCTION axme._lock_receipt(uuid, integer, text) IS
    'Private: axme._lock_intent, plus 55000 when the receipt is missing and required.';

CREATE OR REPLACE FUNCTION axme.ack(intent_id uuid, attempt integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_receipt(intent_id, attempt, 'ack');
BEGIN
    IF i.status <> 'DELIVERED' THEN
        RAISE EXCEPTION 'intent % cannot be acknowledged in status %', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'ack applies to a DELIVERED intent.';
    END IF;
    PERFORM axme._transition(i, 'ACKNOWLEDGED', 'intent.acknowledged', jsonb_build_object('attempt', i.attempt));
END $$;
COMMENT ON FUNCTION axme.ack(uuid, integer) IS
    'Acknowledge a DELIVERED intent (-> ACKNOWLEDGED); its lease keeps running. attempt: the '
    'receipt from poll, required for a poll or stream hand-out (see axme.require_receipts). '
    'Errors: 22023 NULL, P0002 unknown intent, 55000 not DELIVERED, stale or missing receipt.';

CREATE OR REPLACE FUNCTION axme.progress(intent_id uuid, details jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_receipt(intent_id, attempt, 'progress');
BEGIN
    IF details IS NULL THEN
        RAISE EXCEPTION 'argument "details" must not be null' USING ERRCODE = '22023';
    END IF;
    IF i.status = 'IN_PROGRESS' THEN
        RAISE EXCEPTION 'intent % is already IN_PROGRESS', i.intent_id USING ERRCODE = '55000';
    END IF;
    PERFORM axme._transition(i, 'IN_PROGRESS', 'intent.in_progress',
        jsonb_build_object('attempt', i.attempt, 'progress', details));
END $$;
COMMENT ON FUNCTION axme.progress(uuid, jsonb, integer) IS
    'Report that work on a handed-out intent has started (-> IN_PROGRESS); details are kept in the '
    'event. attempt: the receipt from poll, required for a poll or stream hand-out (see '
    'axme.require_receipts). Errors: 22023 NULL, P0002 unknown intent, 55000 transition not allowed, '
    'stale or missing receipt.';

CREATE OR REPLACE FUNCTION axme.extend_lease(intent_id uuid, lease interval, attempt integer DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    i := axme._lock_receipt(intent_id, attempt, 'extend_lease');
    IF i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
        RAISE EXCEPTION 'intent % holds no lease in status %', i.intent_id, i.status
            USING ERRCODE = '55000';
    END IF;
    -- from the clock, not the transaction start: a lease extended late in a long transaction
    -- must still lie in the future
    i.lease_until := clock_timestamp() + lease;
    UPDATE axme.intents SET lease_until = i.lease_until, due_at = i.lease_until, updated_at = now()
    WHERE intents.intent_id = i.intent_id;
    RETURN i.lease_until;
END $$;
COMMENT ON FUNCTION axme.extend_lease(uuid, interval, integer) IS
    'Set the lease of a handed-out intent to clock_timestamp() + lease (1 second .. 12 hours) and return the '
    'new lease end. attempt: the receipt from poll, required (see axme.require_receipts). '
    'Errors: 22023 invalid argument, P0002 unknown intent, 55000 not handed out, stale or missing receipt.';
COMMENT ON FUNCTION axme.complete(uuid, jsonb, integer) IS
    'Finish an intent successfully (-> COMPLETED) with a result. attempt: the receipt from poll, '
    'required for a poll or stream hand-out unless axme.require_receipts is off or the agent option '
    'require_receipts is false. Errors: 22023 NULL intent_id, P0002 unknown intent, 55000 already '
    'terminal, stale or missing receipt.';

CREATE OR REPLACE FUNCTION axme.complete_many(intent_ids uuid[], attempts integer[] DEFAULT NULL,
                                   results jsonb[] DEFAULT NULL)
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(intent_ids);
    -- sec: intents of agents the caller does not receive for are skipped, like unknown ones
    v_admin boolean := axme._is_admin();
    v_agents bigint[] := CASE WHEN NOT axme._is_admin() THEN ARRAY(
        SELECT a.agent_id FROM axme.agents a WHERE axme._caller_has(a.db_role)) END;
    v_missing uuid;
    v_attempt integer;
BEGIN
    IF intent_ids IS NULL THEN
        RAISE EXCEPTION 'argument "intent_ids" must not be null' USING ERRCODE = '22023';
    END IF;
    IF n > 10000 THEN
        RAISE EXCEPTION 'argument "intent_ids" must have at most 10000 elements, got %', n
            USING ERRCODE = '22023';
    END IF;
    IF attempts IS NOT NULL AND cardinality(attempts) <> n THEN
        RAISE EXCEPTION 'argument "attempts" must have as many elements as "intent_ids" (%), got %', n, cardinality(attempts)
            USING ERRCODE = '22023';
    END IF;
    IF results IS NOT NULL AND cardinality(results) <> n THEN
        RAISE EXCEPTION 'argument "results" must have as many elements as "intent_ids" (%), got %', n, cardinality(results)
            USING ERRCODE = '22023';
    END IF;
    -- A missing receipt where one is required refuses the call, as complete() does (only for
    -- the intents the caller receives for: the others are skipped below, like unknown ones).
    IF (attempts IS NULL OR array_position(attempts, NULL) IS NOT NULL) AND axme._receipts_required() THEN
        SELECT i.intent_id, i.attempt INTO v_missing, v_attempt
        FROM unnest(intent_ids, coalesce(attempts, array_fill(NULL::integer, ARRAY[n]))) AS r(id, att)
        JOIN axme.intents i ON i.intent_id = r.id
        WHERE r.att IS NULL AND i.attempt > 0 AND (v_admin OR i.agent_id = ANY (v_agents))
          AND axme._needs_receipt(i)
        LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'complete_many of intent % needs its receipt', v_missing
                USING ERRCODE = '55000',
                      DETAIL = 'The intent was handed out by poll (attempt ' || v_attempt || '); a call '
                               'without the receipt could overwrite the work of a receiver that holds it now.',
                      HINT = 'Pass the attempts that poll returned (attempts => ARRAY[...]), in the order '
                             'of intent_ids; SET axme.require_receipts = off or the agent option '
                             '"require_receipts": false turn the check off.';
        END IF;
    END IF;
    -- The set-based form of complete(): the same rule (any non-terminal -> COMPLETED, receipt
    -- checked when given) in one UPDATE and one INSERT of events.
    RETURN QUERY
        WITH req AS (
            SELECT r.id, r.att, r.res
            FROM unnest(intent_ids,
                        coalesce(attempts, array_fill(NULL::integer, ARRAY[n])),
                        coalesce(results, array_fill('{}'::jsonb, ARRAY[n]))) AS r(id, att, res)
            WHERE r.id IS NOT NULL
        ), u AS (
            UPDATE axme.intents i SET
                status = 'COMPLETED', result = req.res, due_at = NULL, lease_until = NULL,
                updated_at = now(), event_seq = i.event_seq + 1
            FROM req
            WHERE i.intent_id = req.id
              AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
              AND (req.att IS NULL OR req.att = i.attempt)
              AND (v_admin OR i.agent_id = ANY (v_agents))
            RETURNING i.intent_id, i.event_seq, i.attempt
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', axme._caller(),
                   jsonb_build_object('attempt', u.attempt)
            FROM u
        )
        SELECT u.intent_id FROM u CROSS JOIN LATERAL axme._wake_waiters(u.intent_id) w;
END $$;
ALTER FUNCTION axme.complete_many(uuid[], integer[], jsonb[]) SET plan_cache_mode = force_generic_plan;
COMMENT ON FUNCTION axme.complete_many(uuid[], integer[], jsonb[]) IS
    'Complete many intents at once (at most 10000): intent_ids with, optionally, the receipts '
    '(attempts) and results at the same positions. Returns the ids it completed; an id that is '
    'unknown, already terminal, whose receipt is stale, or whose agent the caller does not receive '
    'for is skipped, not an error; a missing receipt where one is required (see '
    'axme.require_receipts) is an error, 55000. '
    'Errors: 22023 NULL intent_ids, arrays of different lengths, more than 10000 ids.';

CREATE OR REPLACE FUNCTION axme.fail(intent_id uuid, error jsonb DEFAULT '{}', retry boolean DEFAULT false,
                          attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    IF retry IS NULL OR error IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', CASE WHEN retry IS NULL THEN 'retry' ELSE 'error' END
            USING ERRCODE = '22023';
    END IF;
    i := axme._lock_receipt(intent_id, attempt, 'fail');
    IF retry THEN
        IF i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
            RAISE EXCEPTION 'intent % cannot be retried in status %', i.intent_id, i.status
                USING ERRCODE = '55000', HINT = 'fail(..., retry => true) applies to a handed-out intent.';
        END IF;
        PERFORM axme._retry_or_dead_letter(i, error);
    ELSE
        i.error := error;
        PERFORM axme._transition(i, 'FAILED', 'intent.failed', jsonb_build_object('attempt', i.attempt, 'error', i.error));
    END IF;
END $$;
COMMENT ON FUNCTION axme.fail(uuid, jsonb, boolean, integer) IS
    'Report a failure. retry => false: the intent ends FAILED (a business outcome, not a dead '
    'letter). retry => true: a failed attempt; the intent goes back to SUBMITTED after an exponential '
    'backoff with jitter, or is dead-lettered (reason exhausted) when its budget is spent. '
    'attempt: the receipt from poll, required for a poll or stream hand-out (see '
    'axme.require_receipts). Errors: 22023 NULL, P0002 unknown intent, 55000 not allowed in this '
    'status, stale or missing receipt.';

CREATE OR REPLACE FUNCTION axme._check_agent_options(mode text, options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    extra jsonb;
    h record;
    s text;
BEGIN
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'argument "options" must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    extra := options - ARRAY['retry', 'secret', 'timeout_ms', 'max_in_flight', 'completion',
                             'headers', 'ca_file', 'breaker', 'rate_limit_per_second',
                             'client_cert_file', 'client_key_file', 'handler', 'db_role',
                             'require_receipts'];
    IF extra <> '{}' THEN
        RAISE EXCEPTION 'unknown agent option(s): %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
            USING ERRCODE = '22023',
                  HINT = 'Known options: retry, secret, timeout_ms, max_in_flight, completion, headers, ca_file, '
                         'breaker, rate_limit_per_second, client_cert_file, client_key_file, handler, db_role, '
                         'require_receipts.';
    END IF;
    IF options ? 'require_receipts' AND jsonb_typeof(options->'require_receipts') <> 'boolean' THEN
        RAISE EXCEPTION 'option "require_receipts" must be true or false, got %', options->'require_receipts'
            USING ERRCODE = '22023';
    END IF;
    IF options ? 'retry' THEN
        IF jsonb_typeof(options->'retry') <> 'object' THEN
            RAISE EXCEPTION 'option "retry" must be a JSON object' USING ERRCODE = '22023';
        END IF;
        extra := (options->'retry') - ARRAY['max_attempts', 'base_delay_ms', 'max_delay_ms'];
        IF extra <> '{}' THEN
            RAISE EXCEPTION 'unknown key(s) in option "retry": %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
                USING ERRCODE = '22023', HINT = 'Known keys: max_attempts, base_delay_ms, max_delay_ms.';
        END IF;
        PERFORM axme._jsonb_int(options->'retry'->'max_attempts', 'retry.max_attempts', 1, 1000);
        PERFORM axme._jsonb_int(options->'retry'->'base_delay_ms', 'retry.base_delay_ms', 1, 86400000);
        PERFORM axme._jsonb_int(options->'retry'->'max_delay_ms', 'retry.max_delay_ms', 1, 604800000);
        IF (options->'retry'->>'base_delay_ms')::bigint >
           coalesce((options->'retry'->>'max_delay_ms')::bigint, CASE WHEN mode = 'http' THEN 36000000 ELSE 3600000 END) THEN
            RAISE EXCEPTION 'option "retry.base_delay_ms" (%) is larger than "retry.max_delay_ms" (%)',
                            options->'retry'->>'base_delay_ms',
                            coalesce(options->'retry'->>'max_delay_ms', CASE WHEN mode = 'http' THEN '36000000' ELSE '3600000' END)
                USING ERRCODE = '22023';
        END IF;
    END IF;
    PERFORM axme._jsonb_int(options->'timeout_ms', 'timeout_ms', 100, 600000);
    PERFORM axme._jsonb_int(options->'max_in_flight', 'max_in_flight', 1, 10000);
    IF options ? 'completion' AND (jsonb_typeof(options->'completion') <> 'string'
                                   OR options->>'completion' NOT IN ('on_2xx', 'explicit')) THEN
        RAISE EXCEPTION 'option "completion" must be "on_2xx" or "explicit", got %', options->'completion'
            USING ERRCODE = '22023';
    END IF;
    IF options ? 'secret' THEN
        s := options->>'secret';
        IF jsonb_typeof(options->'secret') <> 'string'
           OR s !~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
           OR (length(s) - 6) % 4 <> 0
           OR length(decode(substr(s, 7), 'base64')) NOT BETWEEN 24 AND 64 THEN
            RAISE EXCEPTION 'option "secret" must be whsec_ followed by the base64 of 24 to 64 bytes'
                USING ERRCODE = '22023', HINT = 'Leave it out and axme generates one.';
        END IF;
    END IF;
    IF options ? 'ca_file' AND (jsonb_typeof(options->'ca_file') <> 'string'
                                OR (left(options->>'ca_file', 1) <> '/'
                                    AND left(options->>'ca_file', 11) <> '-----BEGIN ')) THEN
        RAISE EXCEPTION 'option "ca_file" must be PEM contents or an absolute file path' USING ERRCODE = '22023';
    END IF;
    IF options ? 'headers' THEN
        IF jsonb_typeof(options->'headers') <> 'object' THEN
            RAISE EXCEPTION 'option "headers" must be a JSON object of strings' USING ERRCODE = '22023';
        END IF;
        -- bounded: every request carries them (libcurl and receivers cap a request's headers too)
        IF (SELECT count(*) FROM jsonb_object_keys(options->'headers')) > 64 THEN
            RAISE EXCEPTION 'option "headers" has % headers, at most 64 are allowed',
                            (SELECT count(*) FROM jsonb_object_keys(options->'headers'))
                USING ERRCODE = '22023';
        END IF;
        IF (SELECT sum(octet_length(key) + octet_length(value #>> '{}') + 4)
            FROM jsonb_each(options->'headers')) > 16384 THEN
            RAISE EXCEPTION 'option "headers" is % bytes long, at most 16384 are allowed',
                            (SELECT sum(octet_length(key) + octet_length(value #>> '{}') + 4)
                             FROM jsonb_each(options->'headers'))
                USING ERRCODE = '22023', DETAIL = 'Each header counts its name, its value and 4 bytes.';
        END IF;
        FOR h IN SELECT key, value FROM jsonb_each(options->'headers') LOOP
            IF h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' OR length(h.key) > 256 THEN
                RAISE EXCEPTION 'invalid header name "%" in option "headers"', left(h.key, 300)
                    USING ERRCODE = '22023';
            END IF;
            IF lower(h.key) IN ('webhook-id', 'webhook-timestamp', 'webhook-signature', 'content-type',
                                'content-length', 'user-agent', 'host', 'transfer-encoding',
                                'connection', 'expect', 'te', 'upgrade', 'trailer',
                                'proxy-authorization', 'keep-alive') THEN
                RAISE EXCEPTION 'header "%" in option "headers" is reserved', h.key
                    USING ERRCODE = '22023', HINT = 'axme sets it itself.';
            END IF;
            IF jsonb_typeof(h.value) <> 'string' OR h.value #>> '{}' ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f]'
               OR length(h.value #>> '{}') > 8192 THEN
                RAISE EXCEPTION 'header "%" in option "headers" must be a string of at most 8192 '
                                'characters without control characters', h.key
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END IF;
    IF options ? 'breaker' THEN
        IF jsonb_typeof(options->'breaker') <> 'object' THEN
            RAISE EXCEPTION 'option "breaker" must be a JSON object' USING ERRCODE = '22023';
        END IF;
        extra := (options->'breaker') - ARRAY['failure_threshold', 'cooldown_ms'];
        IF extra <> '{}' THEN
            RAISE EXCEPTION 'unknown key(s) in option "breaker": %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
                USING ERRCODE = '22023', HINT = 'Known keys: failure_threshold, cooldown_ms.';
        END IF;
        PERFORM axme._jsonb_int(options->'breaker'->'failure_threshold', 'breaker.failure_threshold', 10, 100000);
        PERFORM axme._jsonb_int(options->'breaker'->'cooldown_ms', 'breaker.cooldown_ms', 100, 86400000);
    END IF;
    IF options ? 'rate_limit_per_second' AND jsonb_typeof(options->'rate_limit_per_second') <> 'null' AND
       (jsonb_typeof(options->'rate_limit_per_second') <> 'number'
        OR (options->>'rate_limit_per_second')::numeric NOT BETWEEN 0.001 AND 1000000) THEN
        RAISE EXCEPTION 'option "rate_limit_per_second" must be a number from 0.001 to 1000000, got %',
                        options->'rate_limit_per_second'
            USING ERRCODE = '22023';
    END IF;
    FOREACH s IN ARRAY ARRAY['client_cert_file', 'client_key_file'] LOOP
        IF options ? s AND (jsonb_typeof(options->s) <> 'string'
                            OR (left(options->>s, 1) <> '/' AND left(options->>s, 11) <> '-----BEGIN ')) THEN
            RAISE EXCEPTION 'option "%" must be PEM contents or an absolute file path', s USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF (options ? 'client_cert_file') <> (options ? 'client_key_file') THEN
        RAISE EXCEPTION 'options "client_cert_file" and "client_key_file" go together'
            USING ERRCODE = '22023';
    END IF;
    IF options ? 'handler' AND (jsonb_typeof(options->'handler') <> 'string'
                                OR options->>'handler' !~ '^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$') THEN
        RAISE EXCEPTION 'option "handler" must name a function as "schema.function", got %', options->'handler'
            USING ERRCODE = '22023';
    END IF;
    IF mode <> 'internal' AND options ? 'handler' THEN
        RAISE EXCEPTION 'option "handler" is only for internal agents' USING ERRCODE = '22023';
    END IF;
    IF mode = 'internal' AND NOT options ? 'handler' THEN
        RAISE EXCEPTION 'an internal agent needs option "handler"' USING ERRCODE = '22023',
            HINT = 'Pass {"handler": "schema.function"}, a function (intent jsonb) RETURNS jsonb.';
    END IF;
    IF mode <> 'http' AND (options ?| ARRAY['breaker', 'rate_limit_per_second', 'client_cert_file',
                                            'client_key_file', 'completion', 'headers', 'ca_file', 'secret']) THEN
        RAISE EXCEPTION 'options breaker, rate_limit_per_second, client_cert_file, client_key_file, '
                        'completion, headers, ca_file and secret are only for http agents'
            USING ERRCODE = '22023';
    END IF;
    IF options ? 'db_role' AND (jsonb_typeof(options->'db_role') <> 'string' OR options->>'db_role' = '') THEN
        RAISE EXCEPTION 'option "db_role" must be a role name' USING ERRCODE = '22023';
    END IF;
END $$;

-- Limits: endpoint URLs parsed by libcurl, header limits, TLS files only from
-- axme.tls_files_directory or as PEM contents, every interval argument bounded, databases left
-- without a worker visible (worker_status kind none, metrics axme_database_unserved, an alert).
CREATE OR REPLACE FUNCTION axme._url_problem(url text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'axme_url_problem';
COMMENT ON FUNCTION axme._url_problem(text) IS
    'Private: NULL when libcurl parses url with a host, else why not (an unclosed IPv6 bracket, a '
    'bad port, ...).';

CREATE OR REPLACE FUNCTION axme._tls_file_problem(value text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'axme_tls_file_problem_fn';
COMMENT ON FUNCTION axme._tls_file_problem(text) IS
    'Private: NULL when value is PEM contents or a file path inside axme.tls_files_directory '
    '(symbolic links resolved), else why not.';

CREATE OR REPLACE FUNCTION axme.rotate_secret(agent text, grace interval DEFAULT '24 hours') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    new_secret text;
    t timestamptz := clock_timestamp();
BEGIN
    IF NOT axme._is_admin() THEN
        RAISE EXCEPTION 'only superusers and members of axme_admin may rotate secrets'
            USING ERRCODE = '42501';
    END IF;
    new_secret := axme._random_secret();
    -- bounded like every interval argument: a huge one would overflow t + grace (22008)
    PERFORM axme._check_interval(grace, 'grace', interval '0', interval '365 days');
    a := axme._agent(agent, 'agent');
    IF a.delivery_mode <> 'http' THEN
        RAISE EXCEPTION 'agent "%" is not an http agent (delivery mode %)', agent, a.delivery_mode
            USING ERRCODE = '22023', HINT = 'Only http agents have signing secrets.';
    END IF;
    PERFORM FROM axme.agents ag WHERE ag.agent_id = a.agent_id FOR UPDATE;  -- one rotation at a time
    DELETE FROM axme.agent_secrets s
    WHERE s.agent_id = a.agent_id AND (s.expires_at <= t OR grace = interval '0');
    -- the secrets valid now keep signing until the end of the grace period (or their own, if earlier)
    UPDATE axme.agent_secrets s SET expires_at = least(coalesce(s.expires_at, 'infinity'), t + grace)
    WHERE s.agent_id = a.agent_id;
    INSERT INTO axme.agent_secrets (agent_id, secret, created_at) VALUES (a.agent_id, new_secret, t);
    -- at most 5 valid secrets: the oldest go
    DELETE FROM axme.agent_secrets s
    WHERE s.agent_id = a.agent_id AND s.secret IN (
        SELECT s2.secret FROM axme.agent_secrets s2 WHERE s2.agent_id = a.agent_id
        ORDER BY s2.created_at DESC OFFSET 5);
    RETURN new_secret;
END $$;
COMMENT ON FUNCTION axme.rotate_secret(text, interval) IS
    'Give an http agent a new signing secret (whsec_ + base64 of 32 random bytes) and return it. '
    'The new secret signs from the next request on; the secrets valid before keep signing beside '
    'it (one v1 entry each in webhook-signature) until grace has passed (or until their own earlier '
    'expiry); at most 5 secrets are valid at once (the oldest are dropped). grace = 0 drops the old '
    'ones now (0 .. 365 days). Admins only. Errors: 42501 not a superuser or axme_admin member, '
    '22023 invalid address, grace NULL or outside 0 .. 365 days, not an http agent, P0002 agent not '
    'registered.';

COMMENT ON VIEW axme.worker_status IS
    'The running axme workers of the cluster (shared memory): kind (delivery worker, handler worker), database, pid, state '
    '(idle, delivering, cleanup, waiting for ALTER EXTENSION axme UPDATE, ...), in_flight requests, '
    'deliveries_per_second (outcomes recorded over the last 10 s), deliveries_total, last_error and '
    'when, started_at. A database left without a worker (axme.max_database_workers or '
    'max_worker_processes reached) has a row of kind none, no pid, its state saying why and '
    'started_at when it began (and an alert database_unserved in its axme.alerts). Needs '
    'shared_preload_libraries = axme (empty otherwise).';
COMMENT ON FUNCTION axme._worker_status() IS
    'Private: one row per running axme worker of the cluster, read from shared memory, and one of '
    'kind none per database left without a worker.';

-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'send_intents', 'publish', 'get_intent', 'intent_events', 'wait_for', 'channel', 'cancel',
                               'render_request',
                               'inbox_thread'];   -- the thread of a human task it sent
    agent_fns text[] := ARRAY['poll', 'ack', 'progress', 'extend_lease', 'complete', 'complete_many',
                              'fail', 'resolve', 'replay', 'replay_dead_letters', 'channel',
                              'get_intent', 'intent_events', 'wait_for', 'render_request', 'ping_agent',
                              'subscribe', 'unsubscribe',
                              -- inbox and human tasks
                              'decide', 'reply', 'delegate', 'inbox', 'inbox_thread', 'inbox_changes'];
    -- monitoring: also for pg_monitor (the role exporters run as), checked by _check_monitor
    monitor_fns text[] := ARRAY['metrics'];
    -- public functions that stay SECURITY INVOKER so that the planner can inline them (it never
    -- inlines a SECURITY DEFINER function or one with SET): their caller check is a private
    -- SECURITY DEFINER helper below, and row-level security binds what they read
    invoker_fns text[] := ARRAY['inbox'];
    -- private helpers those call: SECURITY DEFINER with the pinned search_path, EXECUTE for the
    -- roles that may call the public function
    definer_private_fns text[] := ARRAY['_inbox_reader'];
    roles text := 'axme_admin, axme_sender, axme_agent';
    f record;
    t record;
    pol text;   -- (SELECT f()) of a constant: an InitPlan, evaluated once per query, not per row
    what text;
    cols text;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA axme TO ' || roles || ', pg_monitor';
    -- axme-gateway's role (80_gateway.sql): its key check and listener functions live here
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'axme_gateway') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA axme TO axme_gateway';
    END IF;

    -- Functions
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname, p.prosecdef, p.proconfig
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind IN ('f', 'p')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, pg_monitor, %s', f.sig, roles);
        IF f.proname = ANY (definer_private_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin, axme_agent', f.sig);
        END IF;
        CONTINUE WHEN left(f.proname, 1) = '_';
        CONTINUE WHEN (SELECT p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
                       FROM pg_catalog.pg_proc p WHERE p.oid = f.sig);
        IF f.proname = ANY (invoker_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER RESET ALL', f.sig);
        ELSE
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
        END IF;
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        IF f.proname = ANY (sender_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_sender', f.sig);
        END IF;
        IF f.proname = ANY (agent_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_agent', f.sig);
        END IF;
        IF f.proname = ANY (monitor_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f.sig);
        END IF;
    END LOOP;
    -- row-level security policies call this one as the reader
    EXECUTE 'GRANT EXECUTE ON FUNCTION axme._user_has(text) TO ' || roles;
    EXECUTE 'GRANT EXECUTE ON FUNCTION axme._user_has(regrole) TO ' || roles;

    -- Tables.  The policy of a table other than agents and intents is the OR of the rules its
    -- columns allow: intent_id uuid (rows of the intents the reader may read), thread_id uuid
    -- (rows of the threads it may read, when axme.threads exists), agent_id or owner_id integer
    -- (rows of the agents it receives for); none of them, or a name containing "secret": admins.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'intent_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped) AS has_intent,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'thread_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped)
                   AND c.relname <> 'threads' AND pg_catalog.to_regclass('axme.threads') IS NOT NULL AS has_thread,
               (SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname IN ('agent_id', 'owner_id') AND NOT a.attisdropped
                  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                ORDER BY a.attname LIMIT 1) AS agent_col
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'p')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        IF EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.rel AND p.polname = 'axme_read') THEN
            EXECUTE pg_catalog.format('DROP POLICY axme_read ON %s', t.rel);
        END IF;
        IF t.relname LIKE '%secret%' THEN
            pol := NULL;
        ELSIF t.relname = 'agents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'') OR axme._user_has(''axme_sender'') OR axme._user_has(''axme_agent''))';
            what := 'Every agent, for axme_admin, axme_sender and axme_agent members.';
        ELSIF t.relname = 'intents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'')) OR axme._user_has(sender_role) OR agent_id IN '
                   '(SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))';
            what := 'Intents whose sending role or whose agent''s db_role the reader has; all for axme_admin members.';
        ELSE
            pol := '';
            what := 'Rows';
            IF t.has_intent THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.intents i WHERE i.intent_id = %s.intent_id)', t.rel);
                what := what || ' of the intents the reader may read,';
            END IF;
            IF t.has_thread THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.threads th WHERE th.thread_id = %s.thread_id)', t.rel);
                what := what || ' of the threads the reader may read,';
            END IF;
            IF t.agent_col IS NOT NULL THEN
                -- first after the admin test: OR stops at the first true part, and this one is a
                -- small hashed list of agents (a receiver listing its inbox never probes intents)
                pol := pg_catalog.format(' OR %s.%I IN (SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))',
                                         t.rel, t.agent_col) || pol;
                what := what || pg_catalog.format(' of the agents (%s) whose db_role the reader has,', t.agent_col);
            END IF;
            IF pol = '' THEN
                pol := NULL;
            ELSE
                pol := '(SELECT axme._user_has(''axme_admin''))' || pol;
                what := rtrim(what, ',') || '; all for axme_admin members.';
            END IF;
        END IF;
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        IF pol IS NULL THEN
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING ((SELECT axme._user_has(''axme_admin'')))', t.rel);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel,
                'Rows readable by members of axme_admin only (superusers bypass row-level security).');
        ELSE
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING (%s)', t.rel, pol);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel, what);
            IF t.relname = 'agents' THEN
                SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
                FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = t.rel AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.attname NOT IN ('options', 'endpoint_url');
                EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO axme_sender, axme_agent', cols, t.rel);
            ELSE
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Views: evaluated with the reader's rights (security_invoker), so the policies above apply.
    -- A view is for admins only when it reads something a sender may not (a column such as
    -- agents.options, an admin-only table or view, a private function: those get EXECUTE for
    -- axme_admin) or when its name contains "secret".  Materialized views have no row-level
    -- security: admins only.  In creation order, so a view over a view sees its grants.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname, c.relkind FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('v', 'm')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        FOR f IN
            SELECT DISTINCT d.refobjid::regprocedure AS sig, NULL::text AS proname, NULL::boolean AS prosecdef,
                   NULL::text[] AS proconfig
            FROM pg_catalog.pg_rewrite rw
            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
            JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
            WHERE rw.ev_class = t.rel AND p.pronamespace = 'axme'::regnamespace AND left(p.proname, 1) = '_'
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        END LOOP;
        IF t.relkind = 'v' THEN
            EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true)', t.rel);
            IF t.relname NOT LIKE '%secret%' AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_rewrite rw
                JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                WHERE rw.ev_class = t.rel
                  AND CASE WHEN d.refclassid = 'pg_class'::regclass AND d.refobjid <> t.rel THEN
                           CASE WHEN d.refobjsubid > 0
                                THEN NOT pg_catalog.has_column_privilege('axme_sender', d.refobjid, d.refobjsubid::smallint, 'SELECT')
                                ELSE NOT pg_catalog.has_table_privilege('axme_sender', d.refobjid, 'SELECT') END
                           WHEN d.refclassid = 'pg_proc'::regclass THEN
                                NOT pg_catalog.has_function_privilege('axme_sender', d.refobjid, 'EXECUTE')
                           ELSE false END) THEN
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Sequences: only the functions use them.
    FOR t IN
        SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'S'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, %s', t.rel, roles);
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._secure() IS
    'Private: apply the security model (SECURITY DEFINER with a pinned search_path, EXECUTE grants, '
    'row-level security, security_invoker views) to everything in schema axme. Idempotent; the last '
    'step of every upgrade script.';

-- Comments that named the processes by their old names: the delivery worker (formerly "the http
-- worker", backend_type 'axme worker') and the handler worker (formerly "the internal worker").
-- send_intent's errors: 40001 when the conflicting idempotency key is gone when read back.
COMMENT ON FUNCTION axme.send_intent(jsonb, text) IS
    'Store an intent and queue it for its receiver, in the caller''s transaction. intent: '
    '{"intent_type", "to_agent", "payload": {...}} plus optional from_agent, correlation_id, reply_to, '
    'deadline_at, not_before, max_delivery_attempts, remind_after_seconds, remind_interval_seconds, '
    'max_reminders, escalate_to, human_task, traceparent and tracestate (W3C Trace Context: '
    'validated, stored, sent as headers on every webhook attempt, returned by poll and get_intent; '
    'none is generated when absent). idempotency_key: 8..128 characters; the same key and '
    'intent return the first intent_id. Returns the intent_id. Errors: 22023 invalid field, 22P02 '
    'correlation_id not a UUID, 54000 payload over axme.max_payload_bytes, P0002 to_agent not '
    'registered, 23505 idempotency key reused with a different intent, 40001 the key it conflicted '
    'with was removed meanwhile (retry).';
COMMENT ON FUNCTION axme.pause_agent(text) IS
    'Pause an agent: from the commit on, nothing more is handed out to it (poll returns no rows, '
    'the delivery and handler workers skip it); its intents wait and are not charged attempts. '
    'Intents already handed out keep their leases. Idempotent. Admins only. Errors: 42501 not an '
    'admin, 22023 invalid address, P0002 agent not registered.';
COMMENT ON FUNCTION axme._wake_http() IS
    'Private: wake this database''s delivery worker when the current transaction commits (or have the '
    'launcher start one).';
COMMENT ON FUNCTION axme._http_wake_trigger() IS
    'Private: row trigger on axme.intents; an intent became due, wake the delivery worker at commit.';
COMMENT ON FUNCTION axme._http_record_batch(uuid[], integer[], bigint[], timestamptz[], double precision[],
                                            integer[], text[], text[], text[], text[], bigint[]) IS
    'Private (delivery worker): record finished attempts and move their intents on, then update the '
    'endpoints'' breaker, slow start and health (axme._endpoint_observe).';

-- Counters (src/counters.c): monotonic totals per agent for axme.metrics()'s axme_*_total.
-- Counted in the backend while a transaction runs and added to shared memory at its commit
-- (never a row update per event, which would serialise senders); copied into axme.counters by
-- the delivery worker every 10 seconds; read as the table plus what shared memory holds since.
CREATE FUNCTION axme._count_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'axme_count_trigger';
COMMENT ON FUNCTION axme._count_trigger() IS
    'Private: row trigger that counts a send (argument sent), an intent that became terminal '
    '(ended) or an http attempt (attempt) in this transaction; added to the shared counters at commit.';

CREATE TRIGGER intents_count_sent AFTER INSERT ON axme.intents
    FOR EACH ROW EXECUTE FUNCTION axme._count_trigger('sent');
COMMENT ON TRIGGER intents_count_sent ON axme.intents IS
    'Counts the send for axme_intents_sent_total (axme._count_trigger).';
CREATE TRIGGER intents_count_ended AFTER UPDATE OF status ON axme.intents
    FOR EACH ROW
    WHEN (NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'))
    EXECUTE FUNCTION axme._count_trigger('ended');
COMMENT ON TRIGGER intents_count_ended ON axme.intents IS
    'Counts an intent that became terminal for axme_intents_{completed,failed,dead_lettered,'
    'timed_out,canceled}_total (axme._count_trigger).';
CREATE TRIGGER delivery_attempts_count AFTER INSERT ON axme.delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION axme._count_trigger('attempt');
COMMENT ON TRIGGER delivery_attempts_count ON axme.delivery_attempts IS
    'Counts an http attempt by outcome for axme_delivery_attempts_total (axme._count_trigger).';

CREATE FUNCTION axme._counters(OUT agent_id bigint, OUT counter text, OUT outcome text,
                               OUT total bigint, OUT epoch bigint)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_counters';
COMMENT ON FUNCTION axme._counters() IS
    'Private: this database''s counters in shared memory, one row per agent and counter that '
    'moved, totals since the epoch (of the server start that began them and of this database); plus one row with '
    'agent_id NULL, counter lost: counts not kept because every shared slot was taken.';

-- Dumped like every axme table (pg_extension_config_dump): a database moved by pg_dump and
-- pg_restore (a migration, a major upgrade) keeps counting from its last copied values instead
-- of restarting at zero.  A restored row's epoch is never the running one (the epoch is that of
-- a server start and a database), so its value is read as a base, never mistaken for totals
-- that this server's shared memory holds.
CREATE TABLE axme.counters (
    agent_id bigint NOT NULL,
    counter  text NOT NULL,
    outcome  text NOT NULL DEFAULT '',
    value    bigint NOT NULL,
    base     bigint NOT NULL DEFAULT 0,
    epoch    bigint NOT NULL,
    PRIMARY KEY (agent_id, counter, outcome)
);
COMMENT ON TABLE axme.counters IS
    'The counters of axme.metrics() as last copied from shared memory by the delivery worker '
    '(every 10 seconds), one row per agent, counter (sent, completed, failed, dead_lettered, '
    'timed_out, canceled, attempts) and outcome (of attempts; '''' otherwise). value: the total at '
    'that copy; base: the total before epoch, the server start whose shared counters it adds. '
    'Read them with axme.metrics(), which adds what shared memory counted since.';
SELECT pg_catalog.pg_extension_config_dump('axme.counters', '');

-- Copy the shared counters of this database into axme.counters (the delivery worker, every
-- 10 seconds).  A row's value is base + the shared total of its epoch; a new epoch (after a
-- crash) starts from the last value copied.  Rows of unregistered agents go.  Returns the rows
-- written.
CREATE FUNCTION axme._counters_flush() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    INSERT INTO axme.counters AS c (agent_id, counter, outcome, value, base, epoch)
    SELECT s.agent_id, s.counter, s.outcome, s.total, 0, s.epoch
    FROM axme._counters() s JOIN axme.agents a ON a.agent_id = s.agent_id
    ON CONFLICT (agent_id, counter, outcome) DO UPDATE SET
        base = CASE WHEN c.epoch = excluded.epoch THEN c.base ELSE c.value END,
        value = CASE WHEN c.epoch = excluded.epoch THEN c.base ELSE c.value END + excluded.value,
        epoch = excluded.epoch
    WHERE c.epoch <> excluded.epoch OR c.value <> c.base + excluded.value;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM axme.counters c WHERE NOT EXISTS (SELECT FROM axme.agents a WHERE a.agent_id = c.agent_id);
    RETURN n;
END $$;
COMMENT ON FUNCTION axme._counters_flush() IS
    'Private: copy this database''s shared counters into axme.counters; returns the rows written.';

-- The current value of every counter: the copied value, or its base when the copy is of the
-- running epoch, plus the shared total.  The same sum whether or not a copy committed since
-- the reader's snapshot, so a scrape never sees a counter go back.
CREATE FUNCTION axme._counter_values(OUT agent_id bigint, OUT counter text, OUT outcome text,
                                     OUT value bigint)
RETURNS SETOF record LANGUAGE sql AS $$
    SELECT coalesce(t.agent_id, s.agent_id), coalesce(t.counter, s.counter),
           coalesce(t.outcome, s.outcome),
           CASE WHEN t.epoch = s.epoch THEN t.base ELSE coalesce(t.value, 0) END + coalesce(s.total, 0)
    FROM axme.counters t
    FULL JOIN (SELECT * FROM axme._counters() x WHERE x.agent_id IS NOT NULL) s
        ON s.agent_id = t.agent_id AND s.counter = t.counter AND s.outcome = t.outcome
$$;
COMMENT ON FUNCTION axme._counter_values() IS
    'Private: every counter of this database (axme.counters plus shared memory).';

-- metrics() with the counters (axme_*_total).
CREATE OR REPLACE FUNCTION axme.metrics() RETURNS text
LANGUAGE sql AS $$
    SELECT axme._check_monitor('metrics');   -- sec: pg_monitor members and admins
    WITH qd AS MATERIALIZED (
        SELECT format('{agent="%s",mode="%s"}', axme._prom_escape(agent), mode) AS l, *,
               extract(epoch FROM oldest_ready_age) AS oldest
        FROM axme.queue_depth
    ), ds AS MATERIALIZED (
        SELECT format('agent="%s",mode="%s",window="%s"', axme._prom_escape(agent), mode, "window") AS l, *
        FROM axme.delivery_stats
    ), ws AS MATERIALIZED (
        SELECT format('{kind="%s",pid="%s"}', kind, pid) AS l, *
        FROM axme.worker_status WHERE database = current_database() AND pid IS NOT NULL
    ), cv AS MATERIALIZED (
        SELECT * FROM axme._counter_values()
    ), ctr AS MATERIALIZED (
        -- every agent's series from zero (increase() misses the first step of a new series);
        -- attempt outcomes for http agents, or when counted
        SELECT format('agent="%s",mode="%s"', axme._prom_escape(a.address), a.delivery_mode) AS l,
               k.counter, k.outcome, coalesce(cv.value, 0) AS value
        FROM axme.agents a
        CROSS JOIN (VALUES ('sent', ''), ('completed', ''), ('failed', ''), ('dead_lettered', ''),
                           ('timed_out', ''), ('canceled', ''), ('attempts', 'success'),
                           ('attempts', 'http_4xx'), ('attempts', 'http_5xx'), ('attempts', 'http_other'),
                           ('attempts', 'timeout'), ('attempts', 'connect'), ('attempts', 'dns'),
                           ('attempts', 'tls'), ('attempts', 'network'), ('attempts', 'redirect'),
                           ('attempts', 'ssrf_blocked'), ('attempts', 'invalid_url'), ('attempts', 'other'))
            AS k(counter, outcome)
        LEFT JOIN cv ON cv.agent_id = a.agent_id AND cv.counter = k.counter AND cv.outcome = k.outcome
        WHERE k.counter <> 'attempts' OR a.delivery_mode = 'http' OR cv.value > 0
    ), m(ord, name, type, help) AS (VALUES
        (1, 'axme_queue_ready', 'gauge', 'Intents due now, not yet handed out.'),
        (2, 'axme_queue_leased', 'gauge', 'Intents handed out whose lease is running.'),
        (3, 'axme_queue_waiting', 'gauge', 'Intents in status WAITING.'),
        (4, 'axme_queue_scheduled', 'gauge', 'Intents due later (retries, not_before).'),
        (5, 'axme_dead_letters', 'gauge', 'Dead-lettered intents kept.'),
        (6, 'axme_queue_oldest_ready_seconds', 'gauge', 'Seconds the oldest ready intent has been due.'),
        (7, 'axme_agent_paused', 'gauge', '1 when the agent is paused.'),
        (8, 'axme_agent_disabled', 'gauge', '1 when the agent is disabled.'),
        (10, 'axme_intents_sent', 'gauge', 'Intents sent in the window.'),
        (11, 'axme_intents_delivered', 'gauge', 'Intents of the window handed out at least once.'),
        (12, 'axme_intents_completed', 'gauge', 'Intents of the window COMPLETED.'),
        (13, 'axme_intents_failed', 'gauge', 'Intents of the window FAILED or TIMED_OUT (not dead letters).'),
        (14, 'axme_intents_dead_lettered', 'gauge', 'Intents of the window dead-lettered.'),
        (15, 'axme_intents_retrying', 'gauge', 'Intents of the window waiting for a retry.'),
        (16, 'axme_success_ratio', 'gauge', 'Completed / ended intents of the window.'),
        (17, 'axme_latency_seconds', 'gauge', 'Seconds from send to COMPLETED of the window''s intents (quantiles).'),
        (20, 'axme_worker_in_flight', 'gauge', 'Requests in flight of a worker of this database.'),
        (21, 'axme_worker_deliveries_per_second', 'gauge', 'Outcomes recorded per second over the last 10 s.'),
        (22, 'axme_worker_deliveries_total', 'counter', 'Outcomes recorded since the worker started.'),
        (23, 'axme_database_unserved', 'gauge', '1 when no axme worker serves this database (axme.max_database_workers or max_worker_processes reached).'),
        (30, 'axme_alerts_last_hour', 'gauge', 'Alerts raised in the last hour.'),
        (31, 'axme_notification_queue_usage', 'gauge', 'Fraction of the NOTIFY queue in use (pg_notification_queue_usage()).'),
        (40, 'axme_intents_sent_total', 'counter', 'Intents sent (committed sends).'),
        (41, 'axme_intents_completed_total', 'counter', 'Intents that became COMPLETED.'),
        (42, 'axme_intents_failed_total', 'counter', 'Intents that became FAILED, dead letters not included.'),
        (43, 'axme_intents_dead_lettered_total', 'counter', 'Intents dead-lettered (each time, replays included).'),
        (44, 'axme_intents_timed_out_total', 'counter', 'Intents that became TIMED_OUT (deadline passed).'),
        (45, 'axme_intents_canceled_total', 'counter', 'Intents that became CANCELED.'),
        (46, 'axme_delivery_attempts_total', 'counter', 'http delivery attempts recorded, by outcome (success, http_4xx, http_5xx, http_other, timeout, connect, dns, tls, network, redirect, ssrf_blocked, invalid_url, other).'),
        (47, 'axme_counts_lost_total', 'counter', 'Counts not kept because every shared counter slot of the server was taken.')
    ), samples(ord, line) AS (
        SELECT 1, 'axme_queue_ready' || l || ' ' || ready FROM qd
        UNION ALL SELECT 2, 'axme_queue_leased' || l || ' ' || leased FROM qd
        UNION ALL SELECT 3, 'axme_queue_waiting' || l || ' ' || waiting FROM qd
        UNION ALL SELECT 4, 'axme_queue_scheduled' || l || ' ' || scheduled FROM qd
        UNION ALL SELECT 5, 'axme_dead_letters' || l || ' ' || dead_lettered FROM qd
        UNION ALL SELECT 6, 'axme_queue_oldest_ready_seconds' || l || ' ' || round(oldest, 3) FROM qd
        UNION ALL SELECT 7, 'axme_agent_paused' || l || ' ' || paused::int FROM qd
        UNION ALL SELECT 8, 'axme_agent_disabled' || l || ' ' || disabled::int FROM qd
        UNION ALL SELECT 10, 'axme_intents_sent{' || l || '} ' || sent FROM ds
        UNION ALL SELECT 11, 'axme_intents_delivered{' || l || '} ' || delivered FROM ds
        UNION ALL SELECT 12, 'axme_intents_completed{' || l || '} ' || completed FROM ds
        UNION ALL SELECT 13, 'axme_intents_failed{' || l || '} ' || failed FROM ds
        UNION ALL SELECT 14, 'axme_intents_dead_lettered{' || l || '} ' || dead_lettered FROM ds
        UNION ALL SELECT 15, 'axme_intents_retrying{' || l || '} ' || retrying FROM ds
        UNION ALL SELECT 16, 'axme_success_ratio{' || l || '} ' || success_rate FROM ds WHERE success_rate IS NOT NULL
        UNION ALL SELECT 17, format('axme_latency_seconds{%s,quantile="%s"} %s', l, q.quantile, round((q.ms / 1000)::numeric, 6))
                  FROM ds CROSS JOIN LATERAL (VALUES ('0.5', p50_ms), ('0.95', p95_ms), ('0.99', p99_ms)) q(quantile, ms)
                  WHERE p50_ms IS NOT NULL
        UNION ALL SELECT 20, 'axme_worker_in_flight' || l || ' ' || in_flight FROM ws
        UNION ALL SELECT 21, 'axme_worker_deliveries_per_second' || l || ' ' || round(deliveries_per_second::numeric, 3) FROM ws
        UNION ALL SELECT 22, 'axme_worker_deliveries_total' || l || ' ' || deliveries_total FROM ws
        UNION ALL SELECT 23, 'axme_database_unserved ' || (EXISTS (
                      SELECT FROM axme.worker_status w WHERE w.database = current_database() AND w.kind = 'none'))::int
        UNION ALL SELECT 30, 'axme_alerts_last_hour ' || (SELECT count(*) FROM axme.alerts WHERE at > now() - interval '1 hour')
        UNION ALL SELECT 31, 'axme_notification_queue_usage ' || pg_catalog.pg_notification_queue_usage()
        UNION ALL SELECT 40 + CASE counter WHEN 'sent' THEN 0 WHEN 'completed' THEN 1 WHEN 'failed' THEN 2
                                           WHEN 'dead_lettered' THEN 3 WHEN 'timed_out' THEN 4 ELSE 5 END,
                         format('axme_intents_%s_total{%s} %s', counter, l, value)
                  FROM ctr WHERE counter <> 'attempts'
        UNION ALL SELECT 46, format('axme_delivery_attempts_total{%s,outcome="%s"} %s', l, outcome, value)
                  FROM ctr WHERE counter = 'attempts'
        UNION ALL SELECT 47, 'axme_counts_lost_total ' ||
                  coalesce((SELECT x.total FROM axme._counters() x WHERE x.agent_id IS NULL), 0)
    )
    SELECT string_agg(t.line, E'\n' ORDER BY t.ord, t.sub, t.line) || E'\n'
    FROM (SELECT m.ord, 0 AS sub, format('# HELP %s %s', m.name, m.help) AS line FROM m
          UNION ALL SELECT m.ord, 1, format('# TYPE %s %s', m.name, m.type) FROM m
          UNION ALL SELECT s.ord, 2, s.line FROM samples s) t
$$;
COMMENT ON FUNCTION axme.metrics() IS
    'The figures of axme.queue_depth, axme.delivery_stats and axme.worker_status (this database; '
    'axme_database_unserved 1 when no worker serves it) in the Prometheus text exposition format '
    '(metric names axme_*, labels agent, mode, window), '
    'plus axme_notification_queue_usage (pg_notification_queue_usage()), and monotonic counters '
    'per agent (labels agent, mode): axme_intents_{sent,completed,failed,dead_lettered,timed_out,'
    'canceled}_total and axme_delivery_attempts_total (label outcome), kept across restarts (a '
    'crash loses up to the last 10 seconds: a counter reset). For members of pg_monitor and '
    'axme_admin (42501 otherwise).';
-- ---- new in 0.4.0: axme-gateway (the same text as sql/src/80_gateway.sql)

-------------------------------------------------------------------------------------------------
-- Gateway: API keys for axme-gateway (the HTTP API and SSE streams) and the change channel that
-- wakes its streams.
--
-- A key maps an HTTP client to a PostgreSQL role: the gateway checks it with
-- axme._gateway_authenticate() (SECURITY DEFINER, executable by axme_gateway only) and runs each
-- request as `BEGIN; SET LOCAL ROLE <key's role>; ...; COMMIT`, so every role check and row-level
-- security policy of axme applies unchanged.  Keys are stored as SHA-256 hashes only.
--
-- The change channel axme_changes is NOTIFY'd at commit only while a gateway listener is
-- registered in axme.gateway_listeners (a heartbeat row, 90 s time-to-live), and then only for
-- the intents, agents and inbox owners that a gateway stream watches (axme.gateway_watches): a
-- table read per writing statement instead of a shared-memory flag, so the extension's shared
-- memory is untouched, and writers that nobody streams never take NOTIFY's cluster-wide lock.
-- The cost: a gateway that crashed keeps its watches for up to 90 s.
-------------------------------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'axme_gateway') THEN
        CREATE ROLE axme_gateway NOLOGIN;
    END IF;
END $$;
COMMENT ON ROLE axme_gateway IS
    'axme: the role of axme-gateway''s login role (NOINHERIT): may check API keys and register its '
    'listener, nothing else. USAGE on schema axme is granted by axme._secure().';

CREATE TABLE axme.api_key_hashes (
    key_id     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    role_name  text NOT NULL,
    label      text NOT NULL,
    key_prefix text NOT NULL,
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);
COMMENT ON TABLE axme.api_key_hashes IS
    'API keys of axme-gateway: the role each runs as, a label, the first characters of the key '
    '(for display) and its SHA-256 hash; the key itself is never stored. Admins only; read '
    'axme.api_keys. Written by axme.create_api_key and axme.revoke_api_key.';
SELECT pg_catalog.pg_extension_config_dump('axme.api_key_hashes', '');
SELECT pg_catalog.pg_extension_config_dump('axme.api_key_hashes_key_id_seq', '');

CREATE VIEW axme.api_keys AS
    SELECT k.key_id, k.role_name, k.label, k.key_prefix, k.created_at, k.created_by, k.expires_at,
           k.revoked_at,
           k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now()) AS active
    FROM axme.api_key_hashes k;
COMMENT ON VIEW axme.api_keys IS
    'API keys of axme-gateway without their secrets: key_id, role_name (the role a request with '
    'the key runs as), label, key_prefix (the first 12 characters of the key), created_at, '
    'created_by, expires_at, revoked_at, active. Admins only.';

CREATE FUNCTION axme.create_api_key(role regrole, label text, expires_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_key text;
BEGIN
    PERFORM axme._check_admin('create_api_key');
    IF create_api_key.role IS NULL THEN
        RAISE EXCEPTION 'argument "role" must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF create_api_key.label IS NULL OR btrim(create_api_key.label) = '' OR length(create_api_key.label) > 255 THEN
        RAISE EXCEPTION 'argument "label" must be 1..255 characters' USING ERRCODE = '22023';
    END IF;
    IF create_api_key.expires_at IS NOT NULL AND (NOT isfinite(create_api_key.expires_at)
                                                  OR create_api_key.expires_at <= now()) THEN
        RAISE EXCEPTION 'argument "expires_at" must be a finite time in the future' USING ERRCODE = '22023';
    END IF;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = create_api_key.role) THEN
        RAISE EXCEPTION 'permission denied for create_api_key: role "%" is a superuser', create_api_key.role
            USING ERRCODE = '42501', HINT = 'Give keys to roles with only the axme roles they need.';
    END IF;
    IF create_api_key.role::text IN ('axme_gateway', 'axme_admin', 'axme_sender', 'axme_agent') THEN
        RAISE EXCEPTION 'permission denied for create_api_key: role "%" is one of axme''s own roles', create_api_key.role
            USING ERRCODE = '42501', HINT = 'Create a role for the client and grant it the axme role it needs.';
    END IF;
    -- 2 x 122 random bits (gen_random_uuid is built in since PostgreSQL 13; no pgcrypto)
    v_key := 'axk_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
    INSERT INTO axme.api_key_hashes (role_name, label, key_prefix, key_hash, created_by, expires_at)
    VALUES (create_api_key.role::text, create_api_key.label, left(v_key, 12),
            sha256(convert_to(v_key, 'UTF8')), axme._caller(), create_api_key.expires_at);
    RETURN v_key;
END $$;
COMMENT ON FUNCTION axme.create_api_key(regrole, text, timestamptz) IS
    'Create an API key for axme-gateway: requests with it run as role. Returns the key (axk_ and 64 '
    'hex digits), shown this once: only its SHA-256 hash is kept. label: 1..255 characters; '
    'expires_at: NULL (never) or a future time. The gateway''s login role must be a member of role. '
    'Admins only. Errors: 42501 not an admin, role a superuser or one of axme''s roles; 22023 NULL '
    'role, bad label or expires_at.';

CREATE FUNCTION axme.revoke_api_key(key_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_revoked timestamptz;
BEGIN
    PERFORM axme._check_admin('revoke_api_key');
    IF revoke_api_key.key_id IS NULL THEN
        RAISE EXCEPTION 'argument "key_id" must not be NULL' USING ERRCODE = '22023';
    END IF;
    SELECT k.revoked_at INTO v_revoked FROM axme.api_key_hashes k WHERE k.key_id = revoke_api_key.key_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key % does not exist', revoke_api_key.key_id USING ERRCODE = 'P0002';
    END IF;
    IF v_revoked IS NOT NULL THEN
        RETURN false;
    END IF;
    UPDATE axme.api_key_hashes k SET revoked_at = now() WHERE k.key_id = revoke_api_key.key_id;
    RETURN true;
END $$;
COMMENT ON FUNCTION axme.revoke_api_key(bigint) IS
    'Revoke an API key (key_id from axme.api_keys): true when revoked now, false when it already '
    'was. Gateways stop accepting it within their key cache time (5 s). Admins only. Errors: 42501 '
    'not an admin, 22023 NULL, P0002 unknown key.';

-- SECURITY DEFINER, EXECUTE for axme_gateway only (set below; axme._secure() leaves private
-- functions' security and axme_gateway's grants alone).
CREATE FUNCTION axme._gateway_authenticate(key text, OUT key_id bigint, OUT role_name text)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT k.key_id, k.role_name FROM axme.api_key_hashes k
    WHERE k.key_hash = sha256(convert_to(key, 'UTF8')) AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now())
$$;
COMMENT ON FUNCTION axme._gateway_authenticate(text) IS
    'Private: the key_id and role of a valid (not revoked, not expired) API key, no row otherwise. '
    'For axme-gateway: SECURITY DEFINER, executable only by axme_gateway.';

CREATE TABLE axme.gateway_listeners (
    pid           integer PRIMARY KEY,
    name          text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE axme.gateway_listeners IS
    'The listener connections of running gateways (backend pid, a name, heartbeat). While a row is '
    'younger than 90 s, writes NOTIFY axme_changes at commit. Admins only; written by the gateway.';
-- in pg_dump's output as a table, without rows: a restored database has no gateway listening yet
SELECT pg_catalog.pg_extension_config_dump('axme.gateway_listeners', 'WHERE false');

CREATE TABLE axme.gateway_watches (
    listener_pid integer NOT NULL,
    kind         "char" NOT NULL CHECK (kind IN ('i', 'a', 'o')),
    id           text NOT NULL,
    PRIMARY KEY (kind, id, listener_pid)
);
COMMENT ON TABLE axme.gateway_watches IS
    'What the streams of running gateways watch: kind i (an intent id), a (an agent id, agent '
    'streams), o (an inbox owner''s agent id), per listener (axme.gateway_listeners.pid). Only '
    'watched changes NOTIFY axme_changes. Admins only; written by the gateway.';
SELECT pg_catalog.pg_extension_config_dump('axme.gateway_watches', 'WHERE false');

CREATE FUNCTION axme._gateway_listen(name text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    DELETE FROM axme.gateway_listeners g
    WHERE g.seen_at < now() - interval '90 seconds'
       OR g.pid NOT IN (SELECT a.pid FROM pg_catalog.pg_stat_activity a WHERE a.pid IS NOT NULL);
    INSERT INTO axme.gateway_listeners AS g (pid, name) VALUES (pg_catalog.pg_backend_pid(), left(name, 255))
    ON CONFLICT (pid) DO UPDATE SET seen_at = now(), name = excluded.name;
    DELETE FROM axme.gateway_watches w
    WHERE w.listener_pid NOT IN (SELECT g.pid FROM axme.gateway_listeners g);
$$;
COMMENT ON FUNCTION axme._gateway_listen(text) IS
    'Private: register (or refresh, every 30 s) the calling session as a gateway listener, and drop '
    'the rows (and watches) of listeners that are gone. For axme-gateway only.';

CREATE FUNCTION axme._gateway_unlisten() RETURNS void
LANGUAGE sql VOLATILE AS $$
    DELETE FROM axme.gateway_watches w WHERE w.listener_pid = pg_catalog.pg_backend_pid();
    DELETE FROM axme.gateway_listeners g WHERE g.pid = pg_catalog.pg_backend_pid();
$$;
COMMENT ON FUNCTION axme._gateway_unlisten() IS
    'Private: unregister the calling gateway listener and its watches (clean shutdown). For '
    'axme-gateway only.';

-- Watch (or stop watching) kinds[k] ids[k] for the listener listener_pid; a stream's watch is
-- committed before its first read, so that no commit after that read goes unannounced.
CREATE FUNCTION axme._gateway_watch(listener_pid integer, kinds text[], ids text[], watch boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF watch THEN
        INSERT INTO axme.gateway_watches (listener_pid, kind, id)
        SELECT _gateway_watch.listener_pid, w.kind::"char", w.id FROM unnest(kinds, ids) AS w(kind, id)
        WHERE w.kind IN ('i', 'a', 'o')
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM axme.gateway_watches g
        USING unnest(kinds, ids) AS w(kind, id)
        WHERE g.listener_pid = _gateway_watch.listener_pid AND g.kind = w.kind::"char" AND g.id = w.id;
    END IF;
END $$;
COMMENT ON FUNCTION axme._gateway_watch(integer, text[], text[], boolean) IS
    'Private: add (watch true) or remove watches of a gateway listener: kinds i, a, o with their ids. '
    'For axme-gateway only.';

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['axme._gateway_authenticate(text)', 'axme._gateway_listen(text)',
                             'axme._gateway_unlisten()', 'axme._gateway_watch(integer, text[], text[], boolean)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO axme_gateway', f);
    END LOOP;
END $$;

CREATE FUNCTION axme._gateway_active() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM axme.gateway_listeners g WHERE g.seen_at > now() - interval '90 seconds')
$$;
COMMENT ON FUNCTION axme._gateway_active() IS
    'Private: whether a gateway listener is registered (heartbeat younger than 90 s).';

-- Change channel payloads (text, small, identifiers only): "i <intent_id> <agent_id>" when a
-- watched intent (or an intent of a watched agent) got events, "o <owner_id>" when a watched
-- inbox owner's thread changed, "*" when one statement changed more than 100 watched intents
-- (every stream re-reads).  Identical notifications of a transaction merge.
CREATE FUNCTION axme._gateway_events_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    IF NOT axme._gateway_active() THEN
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT DISTINCT e.intent_id, i.agent_id FROM ins e JOIN axme.intents i USING (intent_id)
        WHERE EXISTS (SELECT FROM axme.gateway_watches w WHERE w.kind = 'i' AND w.id = e.intent_id::text)
           OR EXISTS (SELECT FROM axme.gateway_watches w WHERE w.kind = 'a' AND w.id = i.agent_id::text)
        LIMIT 101
    LOOP
        n := n + 1;
        IF n > 100 THEN
            PERFORM pg_notify('axme_changes', '*');
            EXIT;
        END IF;
        PERFORM pg_notify('axme_changes', 'i ' || r.intent_id || ' ' || r.agent_id);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._gateway_events_trigger() IS
    'Private trigger: while a gateway listens, NOTIFY axme_changes "i <intent_id> <agent_id>" for '
    'each watched intent with new events (at commit; "*" above 100 in one statement).';
CREATE TRIGGER events_gateway AFTER INSERT ON axme.events
    REFERENCING NEW TABLE AS ins
    FOR EACH STATEMENT EXECUTE FUNCTION axme._gateway_events_trigger();
COMMENT ON TRIGGER events_gateway ON axme.events IS
    'Wakes axme-gateway streams at commit while a gateway listens (axme._gateway_events_trigger).';

CREATE FUNCTION axme._gateway_inbox_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    o bigint;
BEGIN
    IF NOT axme._gateway_active() THEN
        RETURN NULL;
    END IF;
    FOR o IN SELECT DISTINCT f.owner_id FROM changed f
             WHERE EXISTS (SELECT FROM axme.gateway_watches w WHERE w.kind = 'o' AND w.id = f.owner_id::text) LOOP
        PERFORM pg_notify('axme_changes', 'o ' || o);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._gateway_inbox_trigger() IS
    'Private trigger: while a gateway listens, NOTIFY axme_changes "o <owner_id>" for each watched '
    'inbox owner whose change feed moved (at commit).';
CREATE TRIGGER inbox_feed_gateway_insert AFTER INSERT ON axme.inbox_feed
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION axme._gateway_inbox_trigger();
CREATE TRIGGER inbox_feed_gateway_update AFTER UPDATE ON axme.inbox_feed
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION axme._gateway_inbox_trigger();
COMMENT ON TRIGGER inbox_feed_gateway_insert ON axme.inbox_feed IS
    'Wakes axme-gateway inbox streams at commit while a gateway listens (axme._gateway_inbox_trigger).';
COMMENT ON TRIGGER inbox_feed_gateway_update ON axme.inbox_feed IS
    'Wakes axme-gateway inbox streams at commit while a gateway listens (axme._gateway_inbox_trigger).';

-- axme.cancel: the sender ends its own intent (sql/src/40_lifecycle.sql).
-- The sender's twin of resolve(intent_id, 'CANCELED'): the same transition and intent.canceled
-- event, allowed to the role that sent the intent (and admins) rather than to its receiver.
CREATE FUNCTION axme.cancel(intent_id uuid, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    IF length(reason) > 2000 THEN
        RAISE EXCEPTION 'argument "reason" must be at most 2000 characters, got %', length(reason)
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = cancel.intent_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    -- sec: the sending role (sender_role) or an admin; a receiver ends an intent with resolve
    IF NOT (axme._is_admin() OR axme._caller_has(i.sender_role)) THEN
        RAISE EXCEPTION 'permission denied for cancel: role "%" did not send intent %', axme._caller(), i.intent_id
            USING ERRCODE = '42501',
                  HINT = 'Only the role that sent an intent and members of axme_admin may cancel it; its receiver uses resolve(intent_id, ''CANCELED'').';
    END IF;
    IF reason IS NOT NULL THEN
        i.result := jsonb_build_object('reason', reason);
    END IF;
    -- _transition raises 55000 when the intent is already terminal; the trigger on axme.intents
    -- closes an open task thread and removes its timers; an http attempt in flight is recorded
    -- when it ends but no longer moves the intent (axme._http_record), and a handler's run rolls
    -- back (internal.c)
    PERFORM axme._transition(i, 'CANCELED', 'intent.canceled',
        jsonb_build_object('canceled', true) || CASE WHEN reason IS NULL THEN '{}'::jsonb
                                                     ELSE jsonb_build_object('reason', reason) END);
END $$;
COMMENT ON FUNCTION axme.cancel(uuid, text) IS
    'End a non-terminal intent as CANCELED, by the role that sent it (sender_role) or an admin; '
    'event intent.canceled with {"canceled": true, "reason"}; reason (at most 2000 characters) is '
    'also kept as the result {"reason": ...}. A receiver''s later ack/complete/fail gets 55000; an '
    'http attempt already in flight is still recorded in delivery_attempts but no longer moves the '
    'intent. Errors: 22023 NULL intent_id or reason too long, P0002 unknown intent, 42501 not its '
    'sender, 55000 already terminal.';

-- replay_dead_letters by filter (sql/src/45_retries.sql): the two-argument form goes, an overload
-- would make replay_dead_letters('a') ambiguous (42725).
DROP FUNCTION axme.replay_dead_letters(text, timestamptz);
-- Replay the dead letters of an agent that match a filter, oldest dead letter first, in batches
-- of at most 1000 (bounded memory however many there are); an http agent's re-drives go through
-- the slow-start ramp with their due times spread (axme._ramp_start).  Rows are locked FOR UPDATE:
-- a concurrent replay waits, then skips what it no longer finds dead-lettered, so no dead letter
-- is replayed twice.
CREATE FUNCTION axme.replay_dead_letters(agent text, since timestamptz DEFAULT NULL,
                                         until timestamptz DEFAULT NULL, error_class text DEFAULT NULL,
                                         max_count integer DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents := axme._agent(agent, 'agent');
    n bigint := 0;
    batch integer;
    ids uuid[];
    id uuid;
BEGIN
    PERFORM axme._check_receiver(a.agent_id, 'replay_dead_letters');   -- sec
    IF max_count < 1 THEN
        RAISE EXCEPTION 'argument "max_count" must be at least 1 (NULL: all), got %', max_count
            USING ERRCODE = '22023';
    END IF;
    IF since > until THEN
        RAISE EXCEPTION 'argument "since" (%) must not be after "until" (%)', since, until
            USING ERRCODE = '22023';
    END IF;
    IF length(error_class) > 100 THEN
        RAISE EXCEPTION 'argument "error_class" must be at most 100 characters, got %', length(error_class)
            USING ERRCODE = '22023';
    END IF;
    LOOP
        batch := least(1000, coalesce(max_count - n, 1000));
        EXIT WHEN batch <= 0;
        ids := ARRAY(
            SELECT i.intent_id FROM axme.intents i
            WHERE i.agent_id = a.agent_id AND i.dead_letter_reason IS NOT NULL AND i.status = 'FAILED'
              AND (since IS NULL OR i.dead_lettered_at >= since)
              AND (until IS NULL OR i.dead_lettered_at < until)
              AND (error_class IS NULL OR i.error->>'class' = error_class OR i.dead_letter_reason = error_class)
            ORDER BY i.dead_lettered_at
            LIMIT batch
            FOR UPDATE OF i);
        FOREACH id IN ARRAY ids LOOP
            PERFORM axme.replay(id);
        END LOOP;
        n := n + cardinality(ids);
        EXIT WHEN cardinality(ids) < batch;
    END LOOP;
    IF n > 0 AND a.delivery_mode = 'http' THEN
        PERFORM axme._ramp_start(a.agent_id, true);
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme.replay_dead_letters(text, timestamptz, timestamptz, text, integer) IS
    'Replay the dead letters of an agent with a fresh attempt budget, oldest first: those '
    'dead-lettered at or after since and before until (each when given), whose last error has '
    'class error_class or whose dead-letter reason is error_class (when given: dns, connect, tls, '
    'timeout, network, http, redirect, ssrf_blocked, invalid_url; exhausted, non_retryable, '
    'handler_error ...), at most max_count of them (NULL: all, in batches of 1000). For an http '
    'agent they go out through the slow-start ramp (1, 2, 4 ... max_in_flight in flight) with '
    'their due times spread by jitter. Returns how many were replayed. The agent''s receiver role '
    'and admins only. Errors: 22023 invalid address, max_count < 1, since after until or '
    'error_class over 100 characters, P0002 agent not registered, 42501 not its receiver.';

-- delivery_attempts by agent address (sql/src/50_http.sql).
-- delivery_attempts read by agent address: the same rows with the agent's address beside its id.
CREATE VIEW axme.attempts AS
    SELECT d.intent_id, d.attempt, a.address AS agent, d.started_at, d.duration_ms, d.http_status,
           d.error_class, d.error, d.response_excerpt, d.next_attempt_at, d.agent_id
    FROM axme.delivery_attempts d
    LEFT JOIN axme.agents a ON a.agent_id = d.agent_id;
COMMENT ON VIEW axme.attempts IS
    'axme.delivery_attempts with the agent''s address (agent; NULL once the agent is unregistered): '
    'one row per http delivery attempt, e.g. SELECT * FROM axme.attempts WHERE agent = '
    '''agent://acme/prod/billing'' ORDER BY started_at DESC. Rows as readable as in delivery_attempts.';

-- The 14 task types of the AXME protocol, each stored and enforced as itself; assignees bind
-- decide and reply (sql/src/60_inbox.sql).
CREATE OR REPLACE FUNCTION axme._task_outcomes(task_type text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE task_type
        WHEN 'approval'            THEN '{"approved": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'review'              THEN '{"approved": "COMPLETED", "changes_requested": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'clarification'       THEN '{"provided": "COMPLETED"}'
        WHEN 'provide_data'        THEN '{"completed": "COMPLETED"}'
        WHEN 'attach_file'         THEN '{"completed": "COMPLETED"}'
        WHEN 'manual_action'       THEN '{"completed": "COMPLETED", "failed": "FAILED"}'
        WHEN 'confirmation'        THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'validate_real_world' THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'validate_output'     THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'assignment'          THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'delegation'          THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'reroute'             THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'override'            THEN '{"override_approved": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'escalate'            THEN '{"approved": "COMPLETED", "rejected": "CANCELED"}'
    END::jsonb
$$;
COMMENT ON FUNCTION axme._task_outcomes(text) IS
    'Private: the outcomes of a task type (one of the 14 of the AXME protocol) as {outcome: intent status}, NULL for an unknown type.';


CREATE OR REPLACE FUNCTION axme._task_type(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE name
        -- not an AXME type: the structured input of axme before 0.4.0, now provide_data
        WHEN 'form' THEN 'provide_data'
        ELSE CASE WHEN axme._task_outcomes(name) IS NOT NULL THEN name END
    END
$$;
COMMENT ON FUNCTION axme._task_type(text) IS
    'Private: the task type of a type name (form, accepted from before 0.4.0, is provide_data), NULL when unknown.';


CREATE OR REPLACE FUNCTION axme._check_human_task(task jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    extra jsonb;
    canonical text;
    outcomes jsonb;
    allowed jsonb;
    o jsonb;
    p record;
    t jsonb;
    f text;
    n integer;
BEGIN
    IF task IS NULL OR jsonb_typeof(task) <> 'object' THEN
        RAISE EXCEPTION 'intent field "human_task" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    extra := task - ARRAY['task_type', 'title', 'description', 'allowed_outcomes', 'required_comment',
                          'evidence_required', 'form_schema', 'assignees'];
    IF extra <> '{}' THEN
        RAISE EXCEPTION 'unknown field(s) in intent field "human_task": %',
                        (SELECT string_agg(left(k, 100), ', ') FROM jsonb_object_keys(extra) k)
            USING ERRCODE = '22023',
                  HINT = 'Known fields: task_type, title, description, allowed_outcomes, required_comment, '
                         'evidence_required, form_schema, assignees.';
    END IF;
    IF jsonb_typeof(task->'task_type') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION '"human_task.task_type" is required and must be a string' USING ERRCODE = '22023';
    END IF;
    canonical := axme._task_type(task->>'task_type');
    IF canonical IS NULL THEN
        RAISE EXCEPTION '"human_task.task_type" names no known task type: "%"', left(task->>'task_type', 100)
            USING ERRCODE = '22023',
                  HINT = 'Use approval, review, clarification, provide_data, attach_file, manual_action, '
                         'confirmation, validate_real_world, validate_output, assignment, delegation, '
                         'reroute, override or escalate.';
    END IF;
    outcomes := axme._task_outcomes(canonical);
    IF jsonb_typeof(task->'title') IS DISTINCT FROM 'string' OR btrim(task->>'title') = '' THEN
        RAISE EXCEPTION '"human_task.title" is required and must be a non-empty string' USING ERRCODE = '22023';
    END IF;
    IF length(task->>'title') > 255 THEN
        RAISE EXCEPTION '"human_task.title" must be at most 255 characters, got %', length(task->>'title')
            USING ERRCODE = '22023';
    END IF;
    IF task ? 'description' AND jsonb_typeof(task->'description') <> 'null' THEN
        IF jsonb_typeof(task->'description') <> 'string' THEN
            RAISE EXCEPTION '"human_task.description" must be a string' USING ERRCODE = '22023';
        END IF;
        IF length(task->>'description') > 2000 THEN
            RAISE EXCEPTION '"human_task.description" must be at most 2000 characters, got %',
                            length(task->>'description')
                USING ERRCODE = '22023';
        END IF;
    END IF;
    IF task ? 'allowed_outcomes' AND jsonb_typeof(task->'allowed_outcomes') <> 'null' THEN
        allowed := task->'allowed_outcomes';
        IF jsonb_typeof(allowed) <> 'array' THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" must be an array of outcome names' USING ERRCODE = '22023';
        END IF;
        n := jsonb_array_length(allowed);
        IF n NOT BETWEEN 1 AND 20 THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" must have 1 to 20 outcomes, got %', n
                USING ERRCODE = '22023';
        END IF;
        FOR o IN SELECT value FROM jsonb_array_elements(allowed) LOOP
            IF jsonb_typeof(o) <> 'string' OR NOT outcomes ? (o #>> '{}') THEN
                RAISE EXCEPTION '"human_task.allowed_outcomes": % is not an outcome of task type %', left(o::text, 100), canonical
                    USING ERRCODE = '22023',
                          HINT = 'Outcomes of ' || canonical || ': '
                                 || (SELECT string_agg(k, ', ') FROM jsonb_object_keys(outcomes) k) || '.';
            END IF;
        END LOOP;
        IF (SELECT count(DISTINCT value) FROM jsonb_array_elements(allowed)) <> n THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" names an outcome twice' USING ERRCODE = '22023';
        END IF;
    ELSE
        allowed := (SELECT jsonb_agg(k) FROM jsonb_object_keys(outcomes) k);
    END IF;
    FOREACH f IN ARRAY ARRAY['required_comment', 'evidence_required'] LOOP
        IF task ? f AND jsonb_typeof(task->f) NOT IN ('boolean', 'null') THEN
            RAISE EXCEPTION '"human_task.%" must be true or false', f USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF task ? 'form_schema' AND jsonb_typeof(task->'form_schema') <> 'null' THEN
        t := task->'form_schema';
        IF jsonb_typeof(t) <> 'object' THEN
            RAISE EXCEPTION '"human_task.form_schema" must be a JSON Schema object' USING ERRCODE = '22023';
        END IF;
        IF t ? 'required' AND (jsonb_typeof(t->'required') <> 'array'
                               OR EXISTS (SELECT FROM jsonb_array_elements(t->'required') r WHERE jsonb_typeof(r) <> 'string')) THEN
            RAISE EXCEPTION '"human_task.form_schema.required" must be an array of property names' USING ERRCODE = '22023';
        END IF;
        IF t ? 'properties' THEN
            IF jsonb_typeof(t->'properties') <> 'object' THEN
                RAISE EXCEPTION '"human_task.form_schema.properties" must be an object' USING ERRCODE = '22023';
            END IF;
            FOR p IN SELECT key, value FROM jsonb_each(t->'properties') LOOP
                IF jsonb_typeof(p.value) <> 'object' THEN
                    RAISE EXCEPTION '"human_task.form_schema.properties.%" must be an object', left(p.key, 100)
                        USING ERRCODE = '22023';
                END IF;
                IF p.value ? 'type' AND NOT (
                    (jsonb_typeof(p.value->'type') = 'string'
                     AND p.value->>'type' IN ('string', 'number', 'integer', 'boolean', 'object', 'array', 'null'))
                    OR (jsonb_typeof(p.value->'type') = 'array' AND jsonb_array_length(p.value->'type') > 0
                        AND NOT EXISTS (SELECT FROM jsonb_array_elements(p.value->'type') x
                                        WHERE jsonb_typeof(x) <> 'string'
                                           OR x #>> '{}' NOT IN ('string', 'number', 'integer', 'boolean', 'object', 'array', 'null')))) THEN
                    RAISE EXCEPTION '"human_task.form_schema.properties.%.type" must be a JSON Schema type '
                                    '(string, number, integer, boolean, object, array, null) or an array of them',
                                    left(p.key, 100)
                        USING ERRCODE = '22023';
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF task ? 'assignees' AND jsonb_typeof(task->'assignees') <> 'null' THEN
        IF jsonb_typeof(task->'assignees') <> 'array' OR jsonb_array_length(task->'assignees') > 100
           OR EXISTS (SELECT FROM jsonb_array_elements(task->'assignees') x
                      WHERE jsonb_typeof(x) <> 'string' OR length(x #>> '{}') NOT BETWEEN 1 AND 255) THEN
            RAISE EXCEPTION '"human_task.assignees" must be an array of at most 100 names of 1 to 255 characters'
                USING ERRCODE = '22023';
        END IF;
    END IF;
    RETURN task || jsonb_build_object(
        'task_type', canonical,
        'type_name', task->>'task_type',
        'allowed_outcomes', allowed,
        'required_comment', coalesce((task->>'required_comment')::boolean, false)
                            OR canonical IN ('clarification', 'override'),
        'evidence_required', coalesce((task->>'evidence_required')::boolean, canonical IN ('manual_action', 'attach_file')));
END $$;
COMMENT ON FUNCTION axme._check_human_task(jsonb) IS
    'Private: validate a human_task (22023 naming the field) and return it normalised (task_type '
    'one of the 14, type_name as sent, allowed_outcomes filled, required_comment, evidence_required).';


CREATE OR REPLACE FUNCTION axme._check_assignee(t axme.threads, sent_to bigint, actor text, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF t.kind = 'task' AND t.owner_id = sent_to AND jsonb_typeof(t.task->'assignees') = 'array'
       AND jsonb_array_length(t.task->'assignees') > 0
       AND NOT (t.task->'assignees' ? coalesce(actor, '') OR t.task->'assignees' ? axme._caller()) THEN
        RAISE EXCEPTION 'permission denied for %: "%" is not an assignee of this task', what,
                        left(coalesce(actor, axme._caller()), 255)
            USING ERRCODE = '42501',
                  DETAIL = 'Assignees: ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(t.task->'assignees') x) || '.',
                  HINT = 'Pass actor => one of the assignees, or delegate the thread to another inbox.';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_assignee(axme.threads, bigint, text, text) IS
    'Private: 42501 when the task thread has assignees, is still in the inbox it was sent to '
    '(sent_to), and neither actor nor the calling role''s name is one of them.';


CREATE OR REPLACE FUNCTION axme.decide(intent_id uuid, outcome text, comment text DEFAULT NULL, data jsonb DEFAULT '{}',
                            actor text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    t axme.threads;
    task jsonb;
    new_status text;
    schema jsonb;
    p record;
    req text;
    types jsonb;
    decision jsonb;
BEGIN
    -- sec: locked here rather than by _lock_intent, whose check is the intent's agent: a task is
    -- decided by its thread's current owner (after delegation or escalation, another inbox)
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = decide.intent_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    IF i.human_task IS NULL THEN
        PERFORM axme._check_receiver(i.agent_id, 'decide');   -- sec

        RAISE EXCEPTION 'intent % is not a human task', i.intent_id USING ERRCODE = '55000';
    END IF;
    IF i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
        RAISE EXCEPTION 'the task of intent % is finished (status %)', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'A task is decided once.';
    END IF;
    t := axme._task_thread(i.intent_id);
    IF t.thread_id IS NULL THEN
        PERFORM axme._check_receiver(i.agent_id, 'decide');   -- sec
        RAISE EXCEPTION 'the task of intent % is not assigned yet (status %)', i.intent_id, i.status
            USING ERRCODE = '55000';
    END IF;
    PERFORM axme._check_receiver(t.owner_id, 'decide');   -- sec: the thread's current owner
    PERFORM axme._check_assignee(t, i.agent_id, actor, 'decide');
    task := t.task;
    IF outcome IS NULL THEN
        RAISE EXCEPTION 'argument "outcome" must not be null' USING ERRCODE = '22023';
    END IF;
    IF NOT (task->'allowed_outcomes') ? outcome THEN
        RAISE EXCEPTION 'argument "outcome": "%" is not an allowed outcome of this % task', left(outcome, 100), task->>'task_type'
            USING ERRCODE = '22023',
                  HINT = 'Allowed: ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(task->'allowed_outcomes') x) || '.';
    END IF;
    IF data IS NULL OR jsonb_typeof(data) <> 'object' THEN
        RAISE EXCEPTION 'argument "data" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF (task->>'required_comment')::boolean AND btrim(coalesce(comment, '')) = '' THEN
        RAISE EXCEPTION 'argument "comment" is required for this % task', task->>'task_type'
            USING ERRCODE = '22023';
    END IF;
    IF length(comment) > 10000 THEN
        RAISE EXCEPTION 'argument "comment" must be at most 10000 characters, got %', length(comment)
            USING ERRCODE = '22023';
    END IF;
    IF length(actor) > 255 THEN
        RAISE EXCEPTION 'argument "actor" must be at most 255 characters, got %', length(actor)
            USING ERRCODE = '22023';
    END IF;
    IF (task->>'evidence_required')::boolean
       AND (NOT data ? 'evidence' OR jsonb_typeof(data->'evidence') = 'null'
            OR data->'evidence' IN ('""', '[]', '{}')) THEN
        RAISE EXCEPTION 'argument "data": "evidence" is required for this % task', task->>'task_type'
            USING ERRCODE = '22023', HINT = 'Pass data => ''{"evidence": ...}'' (a photo URL, a reference, a note).';
    END IF;
    schema := task->'form_schema';
    IF jsonb_typeof(schema) = 'object' THEN
        FOR req IN SELECT jsonb_array_elements_text(coalesce(schema->'required', '[]')) LOOP
            IF NOT data ? req THEN
                RAISE EXCEPTION 'argument "data": required field "%" is missing', left(req, 100)
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
        FOR p IN SELECT key, value FROM jsonb_each(coalesce(schema->'properties', '{}')) LOOP
            CONTINUE WHEN NOT data ? p.key OR NOT p.value ? 'type';
            types := CASE WHEN jsonb_typeof(p.value->'type') = 'array' THEN p.value->'type'
                          ELSE jsonb_build_array(p.value->'type') END;
            IF NOT EXISTS (SELECT FROM jsonb_array_elements_text(types) x WHERE axme._json_has_type(data->p.key, x)) THEN
                RAISE EXCEPTION 'argument "data": field "%" must be of type %, got %', left(p.key, 100),
                                CASE WHEN jsonb_array_length(types) = 1 THEN types->>0 ELSE types::text END,
                                jsonb_typeof(data->p.key)
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END IF;
    new_status := axme._task_outcomes(task->>'task_type')->>outcome;
    decision := jsonb_build_object('outcome', outcome, 'comment', comment, 'data', data,
                                   'actor', axme._caller(), 'actor_name', actor,   -- sec
                                   'decided_at', clock_timestamp());
    PERFORM axme._thread_message(t.thread_id, 'decided', actor, comment,
        jsonb_build_object('outcome', outcome, 'data', data, 'status', new_status));
    i.result := decision;
    IF new_status = 'FAILED' THEN
        i.error := decision;
    END IF;
    i.waiting_reason := NULL;
    -- the trigger on axme.intents closes the thread (and sends the reply_to completion)
    PERFORM axme._transition(i, new_status, 'intent.' || lower(new_status),
        jsonb_build_object('outcome', outcome, 'actor', axme._caller(), 'actor_name', actor,   -- sec
                           'thread_id', t.thread_id));
END $$;
COMMENT ON FUNCTION axme.decide(uuid, text, text, jsonb, text) IS
    'Decide a human task. outcome: one of the task''s allowed_outcomes; comment: required when the '
    'task says required_comment and always for clarification and override (at most 10000 '
    'characters); data: a JSON object, must hold "evidence" when evidence is required (default for '
    'manual_action and attach_file) and satisfy the form_schema''s required fields and basic types; '
    'actor: a display name (at most 255 characters) kept beside the recorded actor, which is always '
    'the current role (SET ROLE honoured); when the task has assignees and is still in the inbox it '
    'was sent to, actor (or the role''s name) must be one of them. The intent takes the status of '
    'the outcome (approved/confirmed/assigned/completed/provided/changes_requested/'
    'override_approved -> COMPLETED, rejected/declined -> CANCELED, failed -> FAILED) with result '
    '{outcome, comment, data, actor, actor_name, decided_at}. '
    'Only the role of the task thread''s current owner (option db_role of that inbox) and admins may '
    'decide. Errors: 22023 NULL or invalid argument, P0002 unknown intent, 42501 not the owner''s '
    'role or not an assignee, 55000 not a human task, not assigned yet, or already finished '
    '(deciding twice).';


CREATE OR REPLACE FUNCTION axme.reply(thread_id uuid, message text, actor text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
BEGIN
    IF message IS NULL OR btrim(message) = '' OR length(message) > 10000 THEN
        RAISE EXCEPTION 'argument "message" must be a non-empty text of at most 10000 characters'
            USING ERRCODE = '22023';
    END IF;
    IF length(actor) > 255 THEN
        RAISE EXCEPTION 'argument "actor" must be at most 255 characters, got %', length(actor)
            USING ERRCODE = '22023';
    END IF;
    t := axme._lock_thread(thread_id);
    PERFORM axme._check_receiver(t.owner_id, 'reply');   -- sec: the thread's owner
    IF t.status = 'done' THEN
        RAISE EXCEPTION 'thread % is done', t.thread_id USING ERRCODE = '55000';
    END IF;
    PERFORM axme._check_assignee(t, (SELECT x.agent_id FROM axme.intents x WHERE x.intent_id = t.intent_id),
                                 actor, 'reply');
    PERFORM axme._thread_message(t.thread_id, 'reply', actor, message);
    UPDATE axme.threads SET status = 'active', updated_at = now() WHERE threads.thread_id = t.thread_id;
    PERFORM axme._thread_changed(t.thread_id, t.intent_id, ARRAY[t.owner_id]);
END $$;
COMMENT ON FUNCTION axme.reply(uuid, text, text) IS
    'Add a message (1..10000 characters) to an open thread; the thread becomes active. actor: a '
    'display name kept beside the recorded role (the caller, SET ROLE honoured); on a task with '
    'assignees still in the inbox it was sent to, actor (or the role''s name) must be one of them. '
    'The owner''s role and admins only. Errors: 22023 NULL or invalid argument, P0002 unknown '
    'thread, 42501 not the owner''s role or not an assignee, 55000 thread done.';



-- Tasks sent before 0.4.0 under a type that was folded into another (provide_data, attach_file
-- and form into form, validate_* into confirmation, delegation and reroute into assignment,
-- escalate into approval) get the type they were sent as (form: provide_data); their stored
-- outcomes, comment and evidence rules stay as they were.
UPDATE axme.threads SET
    task = task || jsonb_build_object('task_type', axme._task_type(task->>'type_name')),
    task_type = axme._task_type(task->>'type_name')
WHERE kind = 'task' AND axme._task_type(task->>'type_name') IS NOT NULL
  AND axme._task_type(task->>'type_name') IS DISTINCT FROM task->>'task_type';
-- A task not assigned yet (not_before in the future) is normalised when it is assigned: an
-- attach_file sent before 0.4.0 keeps evidence optional, as it was when sent.
UPDATE axme.intents SET human_task = human_task || '{"evidence_required": false}'
WHERE human_task->>'task_type' = 'attach_file' AND status = 'SUBMITTED'
  AND jsonb_typeof(human_task->'evidence_required') IS DISTINCT FROM 'boolean';

-- render_request and ping_agent (sql/src/50_http.sql).
CREATE FUNCTION axme._webhook_signature(msg_id text, ts bigint, body text, secrets text[]) RETURNS text
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_webhook_signature';
COMMENT ON FUNCTION axme._webhook_signature(text, bigint, text, text[]) IS
    'Private: the webhook-signature header value for msg_id, Unix time ts and body with the given '
    'secrets (the worker''s own signing, src/sign.c); NULL without a secret.';

CREATE FUNCTION axme._user_agent() RETURNS text
    LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'axme_user_agent';
COMMENT ON FUNCTION axme._user_agent() IS
    'Private: the user-agent header the http worker sends (axme/<library version>).';

CREATE FUNCTION axme._send_reserved(intent jsonb) RETURNS uuid
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_send_reserved';
COMMENT ON FUNCTION axme._send_reserved(jsonb) IS
    'Private: send_intent for one of axme''s own intent types (axme.ping.v1), which send_intent '
    'refuses from users; the caller checks who may.';

-- The webhook body of an intent's attempt, byte for byte as axme._http_claim builds it: its
-- created_at is formatted in the server's TimeZone (the worker's), whatever the session's is.
CREATE FUNCTION axme._webhook_body(i axme.intents, attempt integer) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    session_tz text := current_setting('TimeZone');
    body text;
BEGIN
    PERFORM set_config('TimeZone', 'UTC', true);
    body := jsonb_build_object(
        'intent_id', i.intent_id, 'intent_type', i.intent_type, 'from_agent', i.from_agent,
        'to_agent', i.to_agent, 'correlation_id', i.correlation_id, 'payload', i.payload,
        'created_at', i.created_at, 'attempt', attempt)::text;
    PERFORM set_config('TimeZone', session_tz, true);
    RETURN body;
END $$;
COMMENT ON FUNCTION axme._webhook_body(axme.intents, integer) IS
    'Private: the body the http worker posts for attempt of the intent (as axme._http_claim builds it).';

CREATE FUNCTION axme.render_request(intent_id uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    a axme.agents;
    v_attempt integer;
    v_body text;
    v_ts bigint := floor(extract(epoch FROM now()))::bigint;
    v_admin boolean := axme._is_admin();
    v_secrets text[];
    v_sig text;
    hdrs jsonb;
BEGIN
    PERFORM axme._check_intent_reader(intent_id);   -- sec: 22023 NULL, P0002 unknown, 42501 not a reader
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = render_request.intent_id;
    SELECT * INTO a FROM axme.agents g WHERE g.agent_id = i.agent_id;
    IF a.delivery_mode IS DISTINCT FROM 'http' THEN
        RAISE EXCEPTION 'intent % goes to agent "%" of delivery mode %, which receives no http requests',
                        i.intent_id, i.to_agent, coalesce(a.delivery_mode, 'unknown')
            USING ERRCODE = '55000', HINT = 'render_request renders the requests of http agents.';
    END IF;
    -- the next attempt of an intent waiting to be sent, else the last one (in flight or done)
    v_attempt := CASE WHEN i.status = 'SUBMITTED' THEN i.attempt + 1 ELSE greatest(i.attempt, 1) END;
    v_body := axme._webhook_body(i, v_attempt);
    hdrs := jsonb_build_object(
        'host', regexp_replace(substring(a.endpoint_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'), '^.*@', ''),
        'accept', '*/*',
        'content-type', 'application/json',
        'content-length', octet_length(v_body)::text,
        'user-agent', axme._user_agent(),
        'webhook-id', i.intent_id::text,
        'webhook-timestamp', v_ts::text)
        || CASE WHEN i.traceparent IS NULL THEN '{}'::jsonb
                ELSE jsonb_strip_nulls(jsonb_build_object('traceparent', i.traceparent, 'tracestate', i.tracestate)) END;
    v_secrets := ARRAY(SELECT s.secret FROM axme.agent_secrets s
                       WHERE s.agent_id = a.agent_id AND (s.expires_at IS NULL OR s.expires_at > now())
                       ORDER BY s.created_at DESC);
    -- sec: a signature is a replayable credential (valid for minutes): admins only
    IF v_admin AND cardinality(v_secrets) > 0 THEN
        v_sig := axme._webhook_signature(i.intent_id::text, v_ts, v_body, v_secrets);
        IF v_sig IS NOT NULL THEN
            hdrs := hdrs || jsonb_build_object('webhook-signature', v_sig);
        END IF;
    END IF;
    -- the agent's own headers (option headers); their values only for admins, who may read the
    -- options (an Authorization header is a credential)
    hdrs := hdrs || coalesce((SELECT jsonb_object_agg(h.key, CASE WHEN v_admin THEN h.value ELSE '(hidden)' END)
                              FROM jsonb_each_text(a.options->'headers') h), '{}');
    RETURN jsonb_build_object(
        'method', 'POST', 'url', a.endpoint_url, 'headers', hdrs, 'body', v_body, 'attempt', v_attempt,
        'signature', CASE WHEN cardinality(v_secrets) = 0 THEN 'none'
                          WHEN v_sig IS NOT NULL THEN 'included'
                          ELSE 'hidden' END);
END $$;
COMMENT ON FUNCTION axme.render_request(uuid) IS
    'The http request the worker sends for an intent: {method, url, headers, body, attempt, '
    'signature}. attempt: the next attempt of a SUBMITTED intent, else the last one; body: the exact '
    'bytes posted (created_at in UTC); headers: every header sent (host, accept, '
    'content-type, content-length, user-agent, webhook-id, webhook-timestamp = now(), '
    'webhook-signature, traceparent and tracestate when the intent has them, the agent''s option '
    'headers). The signature (a credential replayable for '
    'minutes) and option header values are shown to admins only: signature is included, hidden '
    '(not an admin) or none (the agent has no secret); secrets never. The intent''s readers only '
    '(sender, receiver, admins). Errors: 22023 NULL, P0002 unknown intent, 42501 not a reader, '
    '55000 not an http agent''s intent.';


CREATE FUNCTION axme.ping_agent(agent text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents := axme._agent(agent, 'agent');
BEGIN
    PERFORM axme._check_receiver(a.agent_id, 'ping_agent');   -- sec: the endpoint's owner, admins
    IF a.delivery_mode <> 'http' THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which receives no http requests', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'ping_agent sends a test event to an http agent.';
    END IF;
    RETURN axme._send_reserved(jsonb_build_object(
        'intent_type', 'axme.ping.v1', 'to_agent', a.address, 'max_delivery_attempts', 1,
        'payload', jsonb_build_object('ping', true, 'sent_at', clock_timestamp())));
END $$;
COMMENT ON FUNCTION axme.ping_agent(text) IS
    'Queue a test event to an http agent: an ordinary intent of the reserved type axme.ping.v1 '
    '(types beginning with axme. are refused from send_intent) with payload {"ping": true, '
    '"sent_at"}, signed and posted like any other, one attempt (max_delivery_attempts 1, no '
    'retries). Returns its intent_id: wait_for it, read its attempts in axme.attempts. A paused '
    'or disabled agent gets it when resumed; with completion explicit it stays DELIVERED after its '
    '2xx. The agent''s receiver role and admins only. Errors: 22023 invalid address, P0002 agent '
    'not registered, 42501 not its receiver, 55000 not an http agent.';

-- W3C Trace Context (sql/src/30_send.sql, 40_lifecycle.sql, 50_http.sql): traceparent and tracestate
-- are stored, shown by get_intent, returned by poll and sent as webhook headers.
ALTER TABLE axme.intents ADD COLUMN traceparent text, ADD COLUMN tracestate text;
COMMENT ON COLUMN axme.intents.traceparent IS
    'W3C traceparent the sender gave (validated at send; none is generated when absent): sent as a header on every webhook attempt, returned by poll.';
COMMENT ON COLUMN axme.intents.tracestate IS
    'W3C tracestate the sender gave with its traceparent: sent as a header on every webhook attempt.';

CREATE OR REPLACE FUNCTION axme._document(i axme.intents) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'intent_id', i.intent_id, 'intent_type', i.intent_type, 'from_agent', i.from_agent,
        'to_agent', i.to_agent, 'sender_role', i.sender_role, 'correlation_id', i.correlation_id,
        'reply_to', i.reply_to, 'payload', i.payload, 'status', i.status,
        'waiting_reason', i.waiting_reason, 'attempt', i.attempt,
        'max_delivery_attempts', i.max_delivery_attempts, 'result', i.result, 'error', i.error,
        'dead_letter_reason', i.dead_letter_reason, 'created_at', i.created_at,
        'updated_at', i.updated_at, 'deadline_at', i.deadline_at, 'not_before', i.not_before,
        'next_attempt_at', CASE WHEN i.status = 'SUBMITTED' THEN i.due_at END,
        'lease_until', i.lease_until, 'human_task', i.human_task,
        'traceparent', i.traceparent, 'tracestate', i.tracestate)
$$;

-- poll returns traceparent as its last column: its RETURNS TABLE changes, so DROP and CREATE (a
-- user view over poll blocks this update; positional unpacking of poll's rows sees one more column).
DROP FUNCTION axme.poll(text, integer, interval);
CREATE FUNCTION axme.poll(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (intent_id uuid, intent_type text, payload jsonb, from_agent text,
               correlation_id uuid, attempt integer, lease_until timestamptz, traceparent text)
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    claimed integer := 0;
    seen integer;
    r record;
    t timestamptz;
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_receiver(a.agent_id, 'poll');   -- sec
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'argument "max_count" must be between 1 and 10000, got %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    IF a.delivery_mode NOT IN ('poll', 'stream') THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which poll does not serve', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'poll serves agents registered as poll or stream.';
    END IF;
    IF a.paused_at IS NOT NULL OR a.disabled_at IS NOT NULL THEN
        RETURN;                     -- nothing handed out, no attempt charged
    END IF;
    -- its receiving role was dropped: nothing is handed out (only an admin gets this far)
    IF a.db_role IS NOT NULL AND NOT axme._role_exists(a.db_role) THEN
        PERFORM axme._disable_roleless(NULL, a.agent_id);
        RETURN;
    END IF;
    LOOP
        seen := 0;
        -- Leases run from the claim, not from the start of the caller's transaction.
        t := clock_timestamp();
        -- Claim up to the remaining count, highest priority first, oldest due first within one.  A candidate whose deadline passed
        -- times out and one whose last allowed lease ran out is dead-lettered, instead of being
        -- handed out; then the loop claims again to fill the batch.
        FOR r IN
            WITH c AS (
                SELECT i.intent_id, i.due_at AS was_due,
                       coalesce(i.deadline_at <= t, false) AS timed_out,
                       i.status <> 'SUBMITTED' AND i.attempt - i.attempt_base >= i.max_delivery_attempts AS exhausted
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= t
                ORDER BY i.priority DESC, i.due_at
                LIMIT max_count - claimed
                FOR UPDATE SKIP LOCKED
            ), u AS (
                UPDATE axme.intents i SET
                    status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED'
                                  ELSE 'DELIVERED' END,
                    attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                    dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                    dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN t END,
                    error = CASE WHEN c.exhausted AND NOT c.timed_out
                                 THEN jsonb_build_object('reason', 'lease_expired',
                                          'message', 'the lease of the last allowed attempt ran out')
                                 ELSE i.error END,
                    lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    updated_at = now(),
                    event_seq = i.event_seq + 1
                FROM c
                WHERE i.intent_id = c.intent_id
                RETURNING i.*, c.was_due
            ), e AS (
                INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
                SELECT u.intent_id, u.event_seq,
                       CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                     WHEN 'FAILED' THEN 'intent.dead_lettered'
                                     ELSE 'intent.timed_out' END,
                       u.status, axme._caller(),   -- sec: the caller, not the definer
                       CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                                     WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                           'error', u.error)
                                     ELSE jsonb_build_object('deadline_at', u.deadline_at) END
                FROM u
            )
            SELECT u.* FROM u ORDER BY u.priority DESC, u.was_due
        LOOP
            seen := seen + 1;
            IF r.status = 'DELIVERED' THEN
                claimed := claimed + 1;
                intent_id := r.intent_id;
                intent_type := r.intent_type;
                payload := r.payload;
                from_agent := r.from_agent;
                correlation_id := r.correlation_id;
                attempt := r.attempt;
                lease_until := r.lease_until;
                traceparent := r.traceparent;
                RETURN NEXT;
            ELSE
                PERFORM axme._wake_waiters(r.intent_id);
            END IF;
        END LOOP;
        EXIT WHEN seen = 0 OR claimed >= max_count;
    END LOOP;
    RETURN;
END $$;




-- The set-based send (src/send_batch.c).
CREATE FUNCTION axme.send_intents(intents jsonb[], idempotency_keys text[] DEFAULT NULL)
RETURNS SETOF uuid LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_send_intents';
COMMENT ON FUNCTION axme.send_intents(jsonb[], text[]) IS
    'Send many intents in one call (at most 10000), in the caller''s transaction: each element is '
    'an intent document as for send_intent; idempotency_keys, when given, holds one key (or NULL) '
    'per element. Returns the intent ids in input order; a key used before or earlier in the same '
    'call with the same document returns the first intent''s id. Written set-based (one statement '
    'for all intents and their events). Errors: those of send_intent, the message prefixed with '
    'the element''s 1-based position, "intents[N]: ", and nothing of the call written; 22023 NULL '
    'intents, a NULL element, arrays of different lengths, more than 10000 elements.';

-- Background work bounded by what is due.
-- Assign the delayed tasks (not_before) whose time has come: for the timer loop, or anyone.
-- Returns how many were assigned.  Driven from the inbox agents, each read through the claim
-- index (agent_id, due_at) up to now: the cost follows what is due, never the size of history
-- (a join on delivery_mode let the planner scan all of axme.intents once it grew).
CREATE OR REPLACE FUNCTION axme._inbox_assign_due(max_count integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    n integer := 0;
BEGIN
    PERFORM axme._disable_roleless('inbox');   -- an inbox whose owner role is gone: disabled
    FOR i IN
        SELECT x.* FROM axme.agents a
        CROSS JOIN LATERAL (
            SELECT y.* FROM axme.intents y
            WHERE y.agent_id = a.agent_id AND y.due_at <= now() AND y.status = 'SUBMITTED'
              AND y.human_task IS NOT NULL
            ORDER BY y.priority DESC, y.due_at LIMIT max_count
            FOR UPDATE OF y SKIP LOCKED) x
        WHERE a.delivery_mode = 'inbox' AND a.disabled_at IS NULL
        ORDER BY x.due_at LIMIT max_count
    LOOP
        PERFORM axme._assign_task(i, axme._check_human_task(i.human_task));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- complete in one statement on its fast path.
-- complete: the fast path is one statement (complete_many's rule for one id): the UPDATE to
-- COMPLETED with the receiver's role check and the receipt check in its WHERE, the event INSERT
-- and the wait_for wake-up in the same CTE.  When it matches no row, the slow path takes the
-- same checks one at a time (_lock_intent, _transition) and raises the one that failed (22023,
-- P0002, 42501, 55000), so the errors are those of every other receipt call.
CREATE OR REPLACE FUNCTION axme.complete(intent_id uuid, result jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    n integer;
BEGIN
    IF result IS NULL THEN
        RAISE EXCEPTION 'argument "result" must not be null' USING ERRCODE = '22023',
            HINT = 'Pass ''{}'' for no result.';
    END IF;
    WITH u AS (
        UPDATE axme.intents x SET
            status = 'COMPLETED', result = complete.result, due_at = NULL, lease_until = NULL,
            updated_at = now(), event_seq = x.event_seq + 1
        FROM axme.agents a
        WHERE x.intent_id = complete.intent_id AND a.agent_id = x.agent_id
          AND x.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          -- the receipt: given and current, or not required here (the slow path checks the agent's
          -- option and raises 55000 when a required receipt is missing)
          AND (x.attempt = complete.attempt OR (complete.attempt IS NULL AND NOT axme._receipts_required()))
          -- sec: the receiver's role (agent option db_role) or an admin, as _check_receiver
          AND (axme._caller_has(a.db_role) OR axme._is_admin())
        RETURNING x.intent_id, x.event_seq, x.attempt
    ), e AS (
        INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
        SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', axme._caller(),
               jsonb_build_object('attempt', u.attempt)
        FROM u
    )
    SELECT count(*) INTO n FROM u CROSS JOIN LATERAL axme._wake_waiters(u.intent_id) w;
    IF n > 0 THEN
        RETURN;
    END IF;
    i := axme._lock_receipt(intent_id, attempt, 'complete');
    i.result := result;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed', jsonb_build_object('attempt', i.attempt));
END $$;


-- Priorities: intents.priority (-100..100, default 0; existing intents get 0),
-- the claim index with priority as its second column, every claim site ordered by it, and the
-- workers' next-due look-ups through axme._agent_next_due (one index range per priority).
ALTER TABLE axme.intents ADD COLUMN priority integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN axme.intents.priority IS
    'The sender''s priority, -100..100 (default 0): among due intents of one agent, higher priority '
    'is handed out first, FIFO by due time within a priority (a retry goes behind).';
DROP INDEX axme.intents_agent_due_idx;
CREATE INDEX intents_agent_due_idx ON axme.intents (agent_id, priority DESC, due_at)
    WHERE due_at IS NOT NULL;

CREATE FUNCTION axme._agent_priorities(agent_id bigint) RETURNS SETOF integer
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE p(pr) AS (
        (SELECT i.priority FROM axme.intents i
         WHERE i.agent_id = $1 AND i.due_at IS NOT NULL
         ORDER BY i.priority DESC LIMIT 1)
        UNION ALL
        SELECT (SELECT i.priority FROM axme.intents i
                WHERE i.agent_id = $1 AND i.due_at IS NOT NULL AND i.priority < p.pr
                ORDER BY i.priority DESC LIMIT 1)
        FROM p WHERE p.pr IS NOT NULL
    )
    SELECT p.pr FROM p WHERE p.pr IS NOT NULL
$$;
COMMENT ON FUNCTION axme._agent_priorities(bigint) IS
    'Private: the distinct priorities of an agent''s intents that have a due time, highest first.';

CREATE FUNCTION axme._agent_next_due(agent_id bigint, after timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min((SELECT i.due_at FROM axme.intents i
                WHERE i.agent_id = $1 AND i.priority = p.pr AND i.due_at IS NOT NULL
                  AND i.due_at > coalesce($2, '-infinity'::timestamptz)
                ORDER BY i.due_at LIMIT 1))
    FROM axme._agent_priorities($1) AS p(pr)
$$;
COMMENT ON FUNCTION axme._agent_next_due(bigint, timestamptz) IS
    'Private: an agent''s earliest due time later than after (NULL: the earliest), any priority.';

CREATE OR REPLACE FUNCTION axme.poll(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (intent_id uuid, intent_type text, payload jsonb, from_agent text,
               correlation_id uuid, attempt integer, lease_until timestamptz, traceparent text)
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    claimed integer := 0;
    seen integer;
    r record;
    t timestamptz;
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_receiver(a.agent_id, 'poll');   -- sec
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'argument "max_count" must be between 1 and 10000, got %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    IF a.delivery_mode NOT IN ('poll', 'stream') THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which poll does not serve', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'poll serves agents registered as poll or stream.';
    END IF;
    IF a.paused_at IS NOT NULL OR a.disabled_at IS NOT NULL THEN
        RETURN;                     -- nothing handed out, no attempt charged
    END IF;
    -- its receiving role was dropped: nothing is handed out (only an admin gets this far)
    IF a.db_role IS NOT NULL AND NOT axme._role_exists(a.db_role) THEN
        PERFORM axme._disable_roleless(NULL, a.agent_id);
        RETURN;
    END IF;
    LOOP
        seen := 0;
        -- Leases run from the claim, not from the start of the caller's transaction.
        t := clock_timestamp();
        -- Claim up to the remaining count, highest priority first, oldest due first within one.  A candidate whose deadline passed
        -- times out and one whose last allowed lease ran out is dead-lettered, instead of being
        -- handed out; then the loop claims again to fill the batch.
        FOR r IN
            WITH c AS (
                SELECT i.intent_id, i.due_at AS was_due,
                       coalesce(i.deadline_at <= t, false) AS timed_out,
                       i.status <> 'SUBMITTED' AND i.attempt - i.attempt_base >= i.max_delivery_attempts AS exhausted
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= t
                ORDER BY i.priority DESC, i.due_at
                LIMIT max_count - claimed
                FOR UPDATE SKIP LOCKED
            ), u AS (
                UPDATE axme.intents i SET
                    status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED'
                                  ELSE 'DELIVERED' END,
                    attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                    dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                    dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN t END,
                    error = CASE WHEN c.exhausted AND NOT c.timed_out
                                 THEN jsonb_build_object('reason', 'lease_expired',
                                          'message', 'the lease of the last allowed attempt ran out')
                                 ELSE i.error END,
                    lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    updated_at = now(),
                    event_seq = i.event_seq + 1
                FROM c
                WHERE i.intent_id = c.intent_id
                RETURNING i.*, c.was_due
            ), e AS (
                INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
                SELECT u.intent_id, u.event_seq,
                       CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                     WHEN 'FAILED' THEN 'intent.dead_lettered'
                                     ELSE 'intent.timed_out' END,
                       u.status, axme._caller(),   -- sec: the caller, not the definer
                       CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                                     WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                           'error', u.error)
                                     ELSE jsonb_build_object('deadline_at', u.deadline_at) END
                FROM u
            )
            SELECT u.* FROM u ORDER BY u.priority DESC, u.was_due
        LOOP
            seen := seen + 1;
            IF r.status = 'DELIVERED' THEN
                claimed := claimed + 1;
                intent_id := r.intent_id;
                intent_type := r.intent_type;
                payload := r.payload;
                from_agent := r.from_agent;
                correlation_id := r.correlation_id;
                attempt := r.attempt;
                lease_until := r.lease_until;
                traceparent := r.traceparent;
                RETURN NEXT;
            ELSE
                PERFORM axme._wake_waiters(r.intent_id);
            END IF;
        END LOOP;
        EXIT WHEN seen = 0 OR claimed >= max_count;
    END LOOP;
    RETURN;
END $$;
COMMENT ON FUNCTION axme.poll(text, integer, interval) IS
    'Claim up to max_count (1..10000) due intents of a poll or stream agent, oldest due first, '
    'with a lease (1 second .. 12 hours) during which nobody else gets them (FOR UPDATE SKIP '
    'LOCKED). Each returned row carries attempt: the receipt to pass to ack/extend_lease/complete/'
    'fail. A lease that runs out makes the intent due again; the last allowed one dead-letters it. '
    'Only the agent''s receiver role (option db_role) and admins may poll. traceparent: the '
    'sender''s W3C trace context, NULL when it gave none. '
    'Returns no rows while the agent is paused (axme.pause_agent) or disabled. '
    'Errors: 22023 invalid argument, P0002 agent not registered, 42501 not its receiver, 55000 agent of another mode.';

CREATE OR REPLACE FUNCTION axme._http_claim(max_total integer, busy_agents bigint[], busy_counts integer[])
RETURNS TABLE (intent_id uuid, attempt integer, agent_id bigint, url text, body text,
               secrets text[], headers text[], timeout_ms integer, ca_file text,
               client_cert_file text, client_key_file text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    probe_agents bigint[] := '{}';
    rated_agents bigint[] := '{}';
    rated_tokens double precision[] := '{}';
BEGIN
    PERFORM axme._disable_roleless('http');   -- an agent whose db_role is gone: disabled
    -- webhook bodies carry created_at in UTC whatever the server's TimeZone (axme.render_request
    -- renders them the same way); local to the worker's claim transaction
    PERFORM pg_catalog.set_config('TimeZone', 'UTC', true);
    -- breakers whose cool-down has run out go half-open (one probe each).  axme.agents is named
    -- (so locked) first, as everywhere: DROP EXTENSION locks it before axme.endpoint_state.
    IF EXISTS (SELECT FROM axme.agents ag JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
               WHERE es.breaker = 'open' AND es.open_until <= now()) THEN
        PERFORM axme._breaker_half_open();
    END IF;
    FOR r IN
        WITH a0 AS (
            SELECT ag.agent_id, ag.endpoint_url, ag.options,
                   coalesce((ag.options->>'timeout_ms')::integer, 15000) AS tmo,
                   coalesce((ag.options->>'max_in_flight')::integer, 16) AS mif,
                   (ag.options->>'rate_limit_per_second')::double precision AS rate,
                   es.breaker, es.probe_at, es.conc_limit, es.tokens, es.tokens_at,
                   coalesce(b.n, 0) AS busy
            FROM axme.agents ag
            LEFT JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
            LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
                       GROUP BY x.id) b ON b.id = ag.agent_id
            WHERE ag.delivery_mode = 'http' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
              AND es.breaker IS DISTINCT FROM 'open'
        ), a1 AS (
            SELECT a0.*,
                   CASE WHEN a0.rate IS NULL THEN NULL
                        ELSE least(greatest(1, a0.rate * 0.1),
                                   coalesce(a0.tokens + a0.rate * extract(epoch FROM now() - a0.tokens_at),
                                            greatest(1, a0.rate * 0.1))) END AS tok
            FROM a0
        ), a AS (
            SELECT a1.agent_id, a1.endpoint_url, a1.options, a1.tmo, a1.rate, a1.tok,
                   a1.breaker = 'half_open' AS probing,
                   ARRAY(SELECT s.secret FROM axme.agent_secrets s
                         WHERE s.agent_id = a1.agent_id AND (s.expires_at IS NULL OR s.expires_at > now())
                         ORDER BY s.created_at DESC) AS secrets,
                   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(a1.options->'headers') h) AS headers,
                   greatest(0, least(
                       CASE WHEN a1.breaker = 'half_open' THEN
                                CASE WHEN a1.probe_at IS NULL
                                          OR a1.probe_at < now() - (a1.tmo + 60000) * interval '1 millisecond'
                                     THEN 1 ELSE 0 END
                            ELSE least(a1.mif, coalesce(floor(a1.conc_limit)::integer, a1.mif)) END - a1.busy,
                       coalesce(floor(a1.tok)::integer, a1.mif))) AS free,
                   a1.busy = 0 AS idle
            FROM a1
        ), c AS (
            SELECT ci.intent_id, a.tmo,
                   coalesce(ci.deadline_at <= now(), false) AS timed_out,
                   ci.status <> 'SUBMITTED' AND ci.attempt - ci.attempt_base >= ci.max_delivery_attempts AS exhausted,
                   row_number() OVER (PARTITION BY a.agent_id ORDER BY ci.priority DESC, ci.due_at) AS rn, a.idle
            FROM a, LATERAL (
                SELECT i.intent_id, i.deadline_at, i.status, i.attempt, i.attempt_base,
                       i.max_delivery_attempts, i.due_at, i.priority
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= now()
                ORDER BY i.priority DESC, i.due_at
                LIMIT greatest(least(a.free, max_total), CASE WHEN a.idle THEN 1 ELSE 0 END)
                FOR UPDATE SKIP LOCKED) ci
            WHERE a.free > 0
            -- every idle agent's first intent first, then round-robin
            ORDER BY rn, NOT a.idle
            LIMIT greatest(max_total, 0) + (SELECT count(*) FROM a WHERE a.idle AND a.free > 0)
        ), u AS (
            UPDATE axme.intents i SET
                status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED'
                              ELSE 'DELIVERED' END,
                attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN now() END,
                error = CASE WHEN c.exhausted AND NOT c.timed_out
                             THEN jsonb_build_object('reason', 'lease_expired',
                                      'message', 'the lease of the last allowed attempt ran out '
                                                 '(the worker stopped with the request in flight)')
                             ELSE i.error END,
                lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL
                                   ELSE now() + (c.tmo + 30000) * interval '1 millisecond' END,
                due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL
                              ELSE now() + (c.tmo + 30000) * interval '1 millisecond' END,
                updated_at = now(),
                event_seq = i.event_seq + 1
            FROM c
            WHERE i.intent_id = c.intent_id
            RETURNING i.*
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq,
                   CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                 WHEN 'FAILED' THEN 'intent.dead_lettered'
                                 ELSE 'intent.timed_out' END,
                   u.status, axme._caller(),   -- sec: the caller, not the definer
                   CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until, 'via', 'http')
                                 WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                       'error', u.error)
                                 ELSE jsonb_build_object('deadline_at', u.deadline_at) END
            FROM u
        )
        SELECT u.*, a.endpoint_url, a.options, a.tmo, a.secrets AS agent_secrets, a.headers AS agent_headers,
               a.probing, a.rate, a.tok
        FROM u JOIN a ON a.agent_id = u.agent_id
    LOOP
        IF r.status <> 'DELIVERED' THEN
            PERFORM axme._wake_waiters(r.intent_id);
            CONTINUE;
        END IF;
        IF r.probing THEN
            probe_agents := probe_agents || r.agent_id;
        END IF;
        IF r.rate IS NOT NULL THEN
            rated_agents := rated_agents || r.agent_id;
            rated_tokens := rated_tokens || r.tok;
        END IF;
        intent_id := r.intent_id;
        attempt := r.attempt;
        agent_id := r.agent_id;
        url := r.endpoint_url;
        body := jsonb_build_object(
            'intent_id', r.intent_id, 'intent_type', r.intent_type, 'from_agent', r.from_agent,
            'to_agent', r.to_agent, 'correlation_id', r.correlation_id, 'payload', r.payload,
            'created_at', r.created_at, 'attempt', r.attempt)::text;
        secrets := r.agent_secrets;
        headers := r.agent_headers;
        IF r.traceparent IS NOT NULL THEN   -- W3C Trace Context, on every attempt
            headers := headers || ('traceparent: ' || r.traceparent);
            IF r.tracestate IS NOT NULL THEN
                headers := headers || ('tracestate: ' || r.tracestate);
            END IF;
        END IF;
        timeout_ms := r.tmo;
        ca_file := r.options->>'ca_file';
        client_cert_file := r.options->>'client_cert_file';
        client_key_file := r.options->>'client_key_file';
        RETURN NEXT;
    END LOOP;
    -- the probe is out: no other request until its outcome is recorded
    IF cardinality(probe_agents) > 0 THEN
        UPDATE axme.endpoint_state es SET probe_at = now() WHERE es.agent_id = ANY (probe_agents);
    END IF;
    -- spend the tokens of rate-limited agents
    IF cardinality(rated_agents) > 0 THEN
        INSERT INTO axme.endpoint_state AS es (agent_id, tokens, tokens_at)
        SELECT x.id, min(x.tok) - count(*), now()
        FROM unnest(rated_agents, rated_tokens) AS x(id, tok) GROUP BY x.id
        ON CONFLICT ON CONSTRAINT endpoint_state_pkey DO UPDATE SET tokens = excluded.tokens, tokens_at = excluded.tokens_at;
    END IF;
END $$;
COMMENT ON FUNCTION axme._http_claim(integer, bigint[], integer[]) IS
    'Private (delivery worker): claim due intents of http agents within the worker''s and each agent''s '
    'limits (max_in_flight, slow start, breaker, rate limit, paused / disabled agents) and return '
    'what to send. Moves half-open breakers and spends rate-limit tokens.';

CREATE OR REPLACE FUNCTION axme._http_next_due(busy_agents bigint[], busy_counts integer[]) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT min(CASE
                 WHEN es.breaker = 'open' THEN greatest(d.due_at, es.open_until)
                 WHEN es.breaker = 'half_open' AND es.probe_at IS NOT NULL THEN
                     greatest(d.due_at, es.probe_at + (coalesce((ag.options->>'timeout_ms')::integer, 15000) + 60000)
                                                      * interval '1 millisecond')
                 WHEN es.breaker = 'half_open' AND coalesce(b.n, 0) > 0 THEN NULL
                 WHEN coalesce(b.n, 0) >= least(coalesce((ag.options->>'max_in_flight')::integer, 16),
                                                coalesce(floor(es.conc_limit)::integer, 2147483647)) THEN NULL
                 WHEN ag.options ? 'rate_limit_per_second' AND es.tokens_at IS NOT NULL THEN
                     greatest(d.due_at,
                              es.tokens_at + (least(greatest(1, (ag.options->>'rate_limit_per_second')::float8 * 0.1),
                                                    greatest(1, (ag.options->>'rate_limit_per_second')::float8 * 0.02))
                                              - es.tokens)
                                             / (ag.options->>'rate_limit_per_second')::float8 * interval '1 second')
                 ELSE d.due_at END)
    FROM axme.agents ag
    LEFT JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
    LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
               GROUP BY x.id) b ON b.id = ag.agent_id
    CROSS JOIN LATERAL (SELECT axme._agent_next_due(ag.agent_id, NULL) AS due_at) d
    WHERE ag.delivery_mode = 'http' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
      AND d.due_at IS NOT NULL
      AND coalesce((ag.options->>'max_in_flight')::integer, 16) > coalesce(b.n, 0));
END $$;
COMMENT ON FUNCTION axme._http_next_due(bigint[], integer[]) IS
    'Private (delivery worker): when an http agent can next be handed something (NULL: nothing due).';

CREATE OR REPLACE FUNCTION axme._internal_claim()
RETURNS TABLE (intent_id uuid, attempt integer, handler text, run_as text, run_as_checked boolean,
               timeout_ms integer, next_due timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    i axme.intents;
    t timestamptz := clock_timestamp();
    tmo integer;
BEGIN
    PERFORM axme._disable_roleless('internal');   -- an agent whose run-as role is gone: disabled
    FOR c IN
        SELECT ag.agent_id, ag.options, ag.registered_by, ag.db_role, f.intent_id, f.due_at
        FROM axme.agents ag
        -- the agent's due intent of highest priority, oldest due first, else its next due time
        CROSS JOIN LATERAL (SELECT x.intent_id, x.due_at FROM (
                                (SELECT it.intent_id, it.due_at FROM axme.intents it
                                 WHERE it.agent_id = ag.agent_id AND it.due_at <= t
                                 ORDER BY it.priority DESC, it.due_at LIMIT 1)
                                UNION ALL
                                SELECT NULL::uuid, axme._agent_next_due(ag.agent_id, t)) x
                            WHERE x.due_at IS NOT NULL LIMIT 1) f
        WHERE ag.delivery_mode = 'internal' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
        ORDER BY f.due_at
    LOOP
        IF c.due_at > t THEN
            next_due := c.due_at;
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT * INTO i FROM axme.intents it
        WHERE it.intent_id = c.intent_id AND it.due_at <= t FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF i.deadline_at <= t THEN
            PERFORM axme._transition(i, 'TIMED_OUT', 'intent.timed_out',
                                     jsonb_build_object('deadline_at', i.deadline_at));
            next_due := t;          -- look again at once
            RETURN NEXT;
            RETURN;
        END IF;
        IF i.status <> 'SUBMITTED' AND NOT axme._has_attempts_left(i) THEN
            PERFORM axme._dead_letter(i, 'handler_error', jsonb_build_object('reason', 'lease_expired',
                'message', 'the last allowed handler run did not finish (the worker stopped)'));
            next_due := t;
            RETURN NEXT;
            RETURN;
        END IF;
        tmo := coalesce((c.options->>'timeout_ms')::integer, 5000);
        i.attempt := i.attempt + 1;
        i.lease_until := t + (tmo + 30000) * interval '1 millisecond';
        i.due_at := i.lease_until;
        i.waiting_reason := NULL;
        PERFORM axme._transition(i, 'DELIVERED', 'intent.delivered',
            jsonb_build_object('attempt', i.attempt, 'lease_until', i.lease_until, 'via', 'internal'));
        intent_id := i.intent_id;
        attempt := i.attempt;
        handler := c.options->>'handler';
        -- by OID (a digit string): a later role of the same name is not the one registered
        run_as := coalesce(c.db_role, c.registered_by)::oid::text;
        -- a handler runs as a superuser only when a superuser registered it without db_role
        run_as_checked := c.db_role IS NULL OR NOT coalesce(
            (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = c.db_role), false);
        timeout_ms := tmo;
        next_due := t;
        RETURN NEXT;
        RETURN;
    END LOOP;
    RETURN;
END $$;
COMMENT ON FUNCTION axme._internal_claim() IS
    'Private: hand the oldest due intent of an internal agent to the handler worker (DELIVERED).';

CREATE OR REPLACE FUNCTION axme._wake_streams(since timestamptz, upto timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    nxt timestamptz;
BEGIN
    FOR r IN
        SELECT ag.agent_id, w.first_id, w.n, axme._agent_next_due(ag.agent_id, upto) AS later
        FROM axme.agents ag
        CROSS JOIN LATERAL (
            SELECT (array_agg(i.intent_id ORDER BY i.due_at))[1] AS first_id, count(*) AS n
            FROM axme._agent_priorities(ag.agent_id) AS p(pr)
            JOIN axme.intents i ON i.agent_id = ag.agent_id AND i.priority = p.pr
            WHERE i.due_at > since AND i.due_at <= upto
              AND i.due_at > i.updated_at
        ) w
        WHERE ag.delivery_mode = 'stream' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
    LOOP
        IF r.n > 0 THEN
            PERFORM axme._notify_agent_n(r.agent_id, r.first_id, r.n);
        END IF;
        IF r.later IS NOT NULL AND (nxt IS NULL OR r.later < nxt) THEN
            nxt := r.later;
        END IF;
    END LOOP;
    RETURN nxt;
END $$;
COMMENT ON FUNCTION axme._wake_streams(timestamptz, timestamptz) IS
    'Private: NOTIFY each stream agent whose delayed, backed-off or lease-expired intents became '
    'due in (since, upto]; returns the next such due time.';

CREATE OR REPLACE FUNCTION axme._timers_turn(since timestamptz, upto timestamptz,
                                  OUT next_due timestamptz, OUT internal_agents boolean)
LANGUAGE plpgsql AS $$
DECLARE
    modes text[] := ARRAY(SELECT DISTINCT a.delivery_mode::text FROM axme.agents a);
BEGIN
    next_due := (SELECT min(t.due_at) FROM axme.timers t);
    IF 'stream' = ANY (modes) THEN
        next_due := least(axme._wake_streams(since, upto), next_due, upto + interval '1 second');
    END IF;
    IF 'inbox' = ANY (modes)
       AND pg_catalog.to_regprocedure('axme._inbox_assign_due(integer)') IS NOT NULL THEN
        IF axme._inbox_assign_due(1000) >= 1000 THEN
            next_due := upto;       -- more to assign: at once
        END IF;
        next_due := least(next_due,
            (SELECT min(axme._agent_next_due(a.agent_id, upto)) FROM axme.agents a
             WHERE a.delivery_mode = 'inbox'));
    END IF;
    internal_agents := 'internal' = ANY (modes);
END $$;
COMMENT ON FUNCTION axme._timers_turn(timestamptz, timestamptz) IS
    'Private: stream wake-ups, due inbox tasks, and the next due time of the worker''s timer loop.';

CREATE OR REPLACE FUNCTION axme._inbox_assign_due(max_count integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    n integer := 0;
BEGIN
    PERFORM axme._disable_roleless('inbox');   -- an inbox whose owner role is gone: disabled
    FOR i IN
        SELECT x.* FROM axme.agents a
        CROSS JOIN LATERAL (
            SELECT y.* FROM axme.intents y
            WHERE y.agent_id = a.agent_id AND y.due_at <= now() AND y.status = 'SUBMITTED'
              AND y.human_task IS NOT NULL
            ORDER BY y.priority DESC, y.due_at LIMIT max_count
            FOR UPDATE OF y SKIP LOCKED) x
        WHERE a.delivery_mode = 'inbox' AND a.disabled_at IS NULL
        ORDER BY x.due_at LIMIT max_count
    LOOP
        PERFORM axme._assign_task(i, axme._check_human_task(i.human_task));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme._inbox_assign_due(integer) IS
    'Private: assign human tasks whose not_before has passed (SUBMITTED -> WAITING with a task '
    'thread), at most max_count, oldest due first. Returns the number assigned.';


-- Per-key ordering: intents.ordering_key and ordering_seq (existing intents have none), their
-- index and sequence, the send-time lock and order, and the trigger that releases the next one.
ALTER TABLE axme.intents ADD COLUMN ordering_key text, ADD COLUMN ordering_seq bigint;
COMMENT ON COLUMN axme.intents.ordering_key IS
    'The sender''s ordering key (at most 128 characters): intents of one agent with the same key are '
    'handed out one at a time in send order (ordering_seq); a later one waits, SUBMITTED with no '
    'due time, until every earlier one of its key is terminal.';
COMMENT ON COLUMN axme.intents.ordering_seq IS
    'Send order within an ordering key: taken from axme.ordering_seq under the (agent, key) lock.';
-- Per-key ordering.  The non-terminal keyed intents of an agent by key, in send order; unkeyed
-- intents are not in it, so they pay nothing.
CREATE INDEX intents_agent_key_idx ON axme.intents (agent_id, ordering_key, ordering_seq)
    WHERE ordering_key IS NOT NULL AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT');
CREATE SEQUENCE axme.ordering_seq;
COMMENT ON SEQUENCE axme.ordering_seq IS
    'Send order of keyed intents (intents.ordering_seq), taken under the per-(agent, key) lock.';
SELECT pg_catalog.pg_extension_config_dump('axme.ordering_seq', '');
-- The transaction-scoped lock of one (agent, key): sends of the key and the release of its next
-- intent take it, so send order is lock order (commit order is not sequence order otherwise).
CREATE FUNCTION axme._lock_key(agent_id bigint, ordering_key text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1::text || '/' || $2, 7413))
$$;
COMMENT ON FUNCTION axme._lock_key(bigint, text) IS
    'Private: the transaction lock of one (agent, ordering key).';
-- At send (src/ordering.c, after the store, for intents with a key): under the key's lock, the
-- send order and, when an earlier intent of the key is not terminal, no due time (it waits).
CREATE FUNCTION axme._order_on_send(intent_id uuid, ordering_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ag bigint := (SELECT i.agent_id FROM axme.intents i WHERE i.intent_id = _order_on_send.intent_id);
BEGIN
    PERFORM axme._lock_key(ag, ordering_key);
    UPDATE axme.intents i SET
        ordering_key = _order_on_send.ordering_key,
        ordering_seq = pg_catalog.nextval('axme.ordering_seq'),
        due_at = CASE WHEN EXISTS (SELECT 1 FROM axme.intents e
                                   WHERE e.agent_id = ag AND e.ordering_key = _order_on_send.ordering_key
                                     AND e.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
                                     AND e.intent_id <> i.intent_id)
                      THEN NULL ELSE i.due_at END
    WHERE i.intent_id = _order_on_send.intent_id;
END $$;
COMMENT ON FUNCTION axme._order_on_send(uuid, text) IS
    'Private (send path): give a keyed intent its send order; it waits while an earlier one of its key is not terminal.';
-- When a keyed intent ends (any way: completed, dead-lettered, canceled, timed out), the earliest
-- non-terminal intent of its key, if it is waiting, becomes due; a stream agent is notified and
-- the handler worker rung (the delivery worker is rung by intents_http_wake).
CREATE FUNCTION axme._release_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    nxt uuid;
BEGIN
    PERFORM axme._lock_key(NEW.agent_id, NEW.ordering_key);
    UPDATE axme.intents n SET due_at = greatest(now(), n.not_before)
    WHERE n.intent_id = (SELECT e.intent_id FROM axme.intents e
                         WHERE e.agent_id = NEW.agent_id AND e.ordering_key = NEW.ordering_key
                           AND e.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
                         ORDER BY e.ordering_seq LIMIT 1)
      AND n.due_at IS NULL AND n.status = 'SUBMITTED'
    RETURNING n.intent_id INTO nxt;
    IF nxt IS NOT NULL THEN
        CASE (SELECT a.delivery_mode FROM axme.agents a WHERE a.agent_id = NEW.agent_id)
            WHEN 'stream' THEN PERFORM axme._notify_agent(NEW.agent_id, nxt);
            WHEN 'internal' THEN PERFORM axme._wake_internal();
            ELSE NULL;      -- http: rung by intents_http_wake; poll and inbox: nothing to ring
        END CASE;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._release_key() IS
    'Private trigger: when a keyed intent ends, the next intent of its key becomes due.';
CREATE TRIGGER intents_key_release AFTER UPDATE OF status ON axme.intents
    FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL
          AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'))
    EXECUTE FUNCTION axme._release_key();
COMMENT ON TRIGGER intents_key_release ON axme.intents IS
    'Per-key ordering: the end of a keyed intent releases the next one of its key (axme._release_key).';

-- Fan-out: intents.fanout_id (NULL for existing intents), the subscriptions and fanouts tables,
-- subscribe, unsubscribe and publish, and _secure with them on its lists.
ALTER TABLE axme.intents ADD COLUMN fanout_id uuid;
COMMENT ON COLUMN axme.intents.fanout_id IS
    'The publish (axme.publish) that created the intent, shared by all the intents it created; NULL for a send.';

-- Fan-out: agents subscribe to intent types (dotted, with AMQP wildcards) and an optional
-- payload filter; axme.publish sends one intent per matching subscription, in the sender's
-- transaction, each an ordinary intent (its own lifecycle, retries, dead letters) sharing the
-- correlation id and a fanout_id.  Every intent goes through send_intent's own parse and store.

CREATE SEQUENCE axme.subscriptions_subscription_id_seq;
SELECT pg_catalog.pg_extension_config_dump('axme.subscriptions_subscription_id_seq', '');
CREATE TABLE axme.subscriptions (
    subscription_id     bigint PRIMARY KEY DEFAULT nextval('axme.subscriptions_subscription_id_seq'),
    agent_id            bigint NOT NULL REFERENCES axme.agents ON DELETE CASCADE,
    intent_type_pattern text NOT NULL,
    filter              jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text NOT NULL
);
ALTER SEQUENCE axme.subscriptions_subscription_id_seq OWNED BY axme.subscriptions.subscription_id;
COMMENT ON TABLE axme.subscriptions IS
    'Fan-out subscriptions: the agent receives a copy of every published intent whose type matches '
    'intent_type_pattern (* one segment, # zero or more) and whose payload contains filter.';
CREATE INDEX subscriptions_agent_idx ON axme.subscriptions (agent_id);
SELECT pg_catalog.pg_extension_config_dump('axme.subscriptions', '');

CREATE TABLE axme.fanouts (
    fanout_id    uuid PRIMARY KEY,
    sender_role  regrole NOT NULL,
    sender       text NOT NULL,
    key          text,
    request_hash text NOT NULL,
    intent_ids   uuid[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE axme.fanouts IS
    'One row per publish with an idempotency key: (sender_role, sender, key) -> the fanout_id and '
    'the intents it created, in subscription order (none when nothing matched).';
CREATE UNIQUE INDEX fanouts_key_idx ON axme.fanouts (sender_role, sender, key);
SELECT pg_catalog.pg_extension_config_dump('axme.fanouts', '');

-- Whether a dotted intent type matches a pattern: * is one segment, # zero or more (AMQP).
CREATE FUNCTION axme._segments_match(p text[], t text[]) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF cardinality(p) = 0 THEN
        RETURN cardinality(t) = 0;
    ELSIF p[1] = '#' THEN
        RETURN axme._segments_match(p[2:], t) OR (cardinality(t) > 0 AND axme._segments_match(p, t[2:]));
    ELSIF cardinality(t) = 0 THEN
        RETURN false;
    ELSIF p[1] = '*' OR p[1] = t[1] THEN
        RETURN axme._segments_match(p[2:], t[2:]);
    END IF;
    RETURN false;
END $$;
COMMENT ON FUNCTION axme._segments_match(text[], text[]) IS
    'Private: whether type segments t match pattern segments p (* one segment, # zero or more).';
CREATE FUNCTION axme._type_matches(pattern text, intent_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT axme._segments_match(pg_catalog.string_to_array($1, '.'), pg_catalog.string_to_array($2, '.'))
$$;
COMMENT ON FUNCTION axme._type_matches(text, text) IS
    'Private: whether a dotted intent type matches a subscription pattern.';

CREATE FUNCTION axme.subscribe(agent text, intent_type_pattern text, filter jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    id bigint;
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_receiver(a.agent_id, 'subscribe');   -- sec
    IF intent_type_pattern IS NULL OR length(intent_type_pattern) > 255
       OR intent_type_pattern !~ '^([A-Za-z0-9_-]+|\*|#)(\.([A-Za-z0-9_-]+|\*|#))*$' THEN
        RAISE EXCEPTION 'argument "intent_type_pattern" must be dotted segments of letters, digits, _ or -, '
                        'or * (one segment) or # (zero or more), at most 255 characters, got %',
                        coalesce(pg_catalog.quote_literal(left(intent_type_pattern, 100)), 'NULL')
            USING ERRCODE = '22023', HINT = 'For example intent.order.# or intent.*.created.v1.';
    END IF;
    IF filter IS NOT NULL AND jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'argument "filter" must be a JSON object (contained in the payload), got %', jsonb_typeof(filter)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO axme.subscriptions (agent_id, intent_type_pattern, filter, created_by)
    VALUES (a.agent_id, subscribe.intent_type_pattern, subscribe.filter, axme._caller())
    RETURNING subscription_id INTO id;
    RETURN id;
END $$;
COMMENT ON FUNCTION axme.subscribe(text, text, jsonb) IS
    'Subscribe an agent to published intents whose type matches intent_type_pattern (* one '
    'segment, # zero or more) and, when filter is given, whose payload contains it (@>); returns the '
    'subscription id.  The agent''s receiver or an admin.  22023 bad pattern or filter, P0002 no such '
    'agent, 42501 not its receiver.';

CREATE FUNCTION axme.unsubscribe(subscription_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ag bigint;
BEGIN
    SELECT s.agent_id INTO ag FROM axme.subscriptions s WHERE s.subscription_id = unsubscribe.subscription_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', coalesce(subscription_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    PERFORM axme._check_receiver(ag, 'unsubscribe');   -- sec
    DELETE FROM axme.subscriptions s WHERE s.subscription_id = unsubscribe.subscription_id;
END $$;
COMMENT ON FUNCTION axme.unsubscribe(bigint) IS
    'End a subscription (intents already published stay).  The agent''s receiver or an admin.  '
    'P0002 no such subscription, 42501 not its receiver.';

CREATE FUNCTION axme.publish(intent jsonb, idempotency_key text DEFAULT NULL) RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    fid uuid;
    old axme.fanouts;
    doc jsonb;
    s record;
    ids uuid[] := '{}';
    one uuid;
    hash text;
    who text := coalesce(intent->>'from_agent', axme._caller());
BEGIN
    IF intent IS NULL OR jsonb_typeof(intent) <> 'object' THEN
        RAISE EXCEPTION 'argument "intent" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF intent ? 'to_agent' THEN
        RAISE EXCEPTION 'publish takes no "to_agent": the subscriptions choose the receivers'
            USING ERRCODE = '22023', HINT = 'Use send_intent to send to one agent.';
    END IF;
    IF jsonb_typeof(intent->'intent_type') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'intent field "intent_type" must be a string' USING ERRCODE = '22023';
    END IF;
    IF idempotency_key IS NOT NULL AND length(idempotency_key) NOT BETWEEN 8 AND 128 THEN
        RAISE EXCEPTION 'argument "idempotency_key" must be 8..128 characters, got %', length(idempotency_key)
            USING ERRCODE = '22023';
    END IF;
    fid := gen_random_uuid();
    hash := md5(intent::text);
    IF idempotency_key IS NOT NULL THEN
        -- the key maps to the fanout: a second publish with it waits for the first to commit
        INSERT INTO axme.fanouts (fanout_id, sender_role, sender, key, request_hash)
        VALUES (fid, axme._caller_id(), who, idempotency_key, hash)
        ON CONFLICT (sender_role, sender, key) DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO old FROM axme.fanouts f
            WHERE f.sender_role = axme._caller_id() AND f.sender = who AND f.key = idempotency_key;
            IF old.request_hash <> hash THEN
                RAISE EXCEPTION 'idempotency key "%" was already used with a different intent', idempotency_key
                    USING ERRCODE = '23505', DETAIL = format('It made fan-out %s.', old.fanout_id);
            END IF;
            RETURN QUERY SELECT x FROM unnest(old.intent_ids) WITH ORDINALITY AS u(x, n) ORDER BY n;
            RETURN;
        END IF;
    END IF;
    -- one correlation id for all of them: the sender's, or a new one (send_intent validates it)
    doc := CASE WHEN intent ? 'correlation_id' THEN intent
                ELSE intent || jsonb_build_object('correlation_id', gen_random_uuid()) END;
    -- every subscription, whoever's (the sender cannot read them: this runs as the definer)
    FOR s IN
        SELECT a.address FROM axme.subscriptions sb JOIN axme.agents a ON a.agent_id = sb.agent_id
        WHERE axme._type_matches(sb.intent_type_pattern, intent->>'intent_type')
          AND (sb.filter IS NULL OR coalesce(intent->'payload', '{}'::jsonb) @> sb.filter)
        ORDER BY sb.subscription_id
    LOOP
        one := axme.send_intent(doc || jsonb_build_object('to_agent', s.address));
        UPDATE axme.intents i SET fanout_id = fid WHERE i.intent_id = one;
        ids := ids || one;
    END LOOP;
    IF idempotency_key IS NOT NULL THEN
        UPDATE axme.fanouts f SET intent_ids = ids WHERE f.fanout_id = fid;
    END IF;
    RETURN QUERY SELECT x FROM unnest(ids) WITH ORDINALITY AS u(x, n) ORDER BY n;
END $$;
COMMENT ON FUNCTION axme.publish(jsonb, text) IS
    'Send one intent per matching subscription (send_intent''s document without to_agent), in the '
    'caller''s transaction, sharing the correlation id and a fanout_id; returns their ids in '
    'subscription order, none when nothing matches.  With idempotency_key the whole publish is '
    'idempotent (the same key returns the same set, also an empty one).  22023 bad document, '
    '23505 key reused with another document, and send_intent''s errors.';

CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'send_intents', 'publish', 'get_intent', 'intent_events', 'wait_for', 'channel', 'cancel',
                               'render_request',
                               'inbox_thread'];   -- the thread of a human task it sent
    agent_fns text[] := ARRAY['poll', 'ack', 'progress', 'extend_lease', 'complete', 'complete_many',
                              'fail', 'resolve', 'replay', 'replay_dead_letters', 'channel',
                              'get_intent', 'intent_events', 'wait_for', 'render_request', 'ping_agent',
                              'subscribe', 'unsubscribe',
                              -- inbox and human tasks
                              'decide', 'reply', 'delegate', 'inbox', 'inbox_thread', 'inbox_changes'];
    -- monitoring: also for pg_monitor (the role exporters run as), checked by _check_monitor
    monitor_fns text[] := ARRAY['metrics'];
    -- public functions that stay SECURITY INVOKER so that the planner can inline them (it never
    -- inlines a SECURITY DEFINER function or one with SET): their caller check is a private
    -- SECURITY DEFINER helper below, and row-level security binds what they read
    invoker_fns text[] := ARRAY['inbox'];
    -- private helpers those call: SECURITY DEFINER with the pinned search_path, EXECUTE for the
    -- roles that may call the public function
    definer_private_fns text[] := ARRAY['_inbox_reader'];
    roles text := 'axme_admin, axme_sender, axme_agent';
    f record;
    t record;
    pol text;   -- (SELECT f()) of a constant: an InitPlan, evaluated once per query, not per row
    what text;
    cols text;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA axme TO ' || roles || ', pg_monitor';
    -- axme-gateway's role (80_gateway.sql): its key check and listener functions live here
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'axme_gateway') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA axme TO axme_gateway';
    END IF;

    -- Functions
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname, p.prosecdef, p.proconfig
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind IN ('f', 'p')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, pg_monitor, %s', f.sig, roles);
        IF f.proname = ANY (definer_private_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin, axme_agent', f.sig);
        END IF;
        CONTINUE WHEN left(f.proname, 1) = '_';
        CONTINUE WHEN (SELECT p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
                       FROM pg_catalog.pg_proc p WHERE p.oid = f.sig);
        IF f.proname = ANY (invoker_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER RESET ALL', f.sig);
        ELSE
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
        END IF;
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        IF f.proname = ANY (sender_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_sender', f.sig);
        END IF;
        IF f.proname = ANY (agent_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_agent', f.sig);
        END IF;
        IF f.proname = ANY (monitor_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f.sig);
        END IF;
    END LOOP;
    -- row-level security policies call this one as the reader
    EXECUTE 'GRANT EXECUTE ON FUNCTION axme._user_has(text) TO ' || roles;
    EXECUTE 'GRANT EXECUTE ON FUNCTION axme._user_has(regrole) TO ' || roles;

    -- Tables.  The policy of a table other than agents and intents is the OR of the rules its
    -- columns allow: intent_id uuid (rows of the intents the reader may read), thread_id uuid
    -- (rows of the threads it may read, when axme.threads exists), agent_id or owner_id integer
    -- (rows of the agents it receives for); none of them, or a name containing "secret": admins.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'intent_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped) AS has_intent,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'thread_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped)
                   AND c.relname <> 'threads' AND pg_catalog.to_regclass('axme.threads') IS NOT NULL AS has_thread,
               (SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname IN ('agent_id', 'owner_id') AND NOT a.attisdropped
                  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                ORDER BY a.attname LIMIT 1) AS agent_col
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'p')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        IF EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.rel AND p.polname = 'axme_read') THEN
            EXECUTE pg_catalog.format('DROP POLICY axme_read ON %s', t.rel);
        END IF;
        IF t.relname LIKE '%secret%' THEN
            pol := NULL;
        ELSIF t.relname = 'agents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'') OR axme._user_has(''axme_sender'') OR axme._user_has(''axme_agent''))';
            what := 'Every agent, for axme_admin, axme_sender and axme_agent members.';
        ELSIF t.relname = 'intents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'')) OR axme._user_has(sender_role) OR agent_id IN '
                   '(SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))';
            what := 'Intents whose sending role or whose agent''s db_role the reader has; all for axme_admin members.';
        ELSE
            pol := '';
            what := 'Rows';
            IF t.has_intent THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.intents i WHERE i.intent_id = %s.intent_id)', t.rel);
                what := what || ' of the intents the reader may read,';
            END IF;
            IF t.has_thread THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.threads th WHERE th.thread_id = %s.thread_id)', t.rel);
                what := what || ' of the threads the reader may read,';
            END IF;
            IF t.agent_col IS NOT NULL THEN
                -- first after the admin test: OR stops at the first true part, and this one is a
                -- small hashed list of agents (a receiver listing its inbox never probes intents)
                pol := pg_catalog.format(' OR %s.%I IN (SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))',
                                         t.rel, t.agent_col) || pol;
                what := what || pg_catalog.format(' of the agents (%s) whose db_role the reader has,', t.agent_col);
            END IF;
            IF pol = '' THEN
                pol := NULL;
            ELSE
                pol := '(SELECT axme._user_has(''axme_admin''))' || pol;
                what := rtrim(what, ',') || '; all for axme_admin members.';
            END IF;
        END IF;
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        IF pol IS NULL THEN
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING ((SELECT axme._user_has(''axme_admin'')))', t.rel);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel,
                'Rows readable by members of axme_admin only (superusers bypass row-level security).');
        ELSE
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING (%s)', t.rel, pol);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel, what);
            IF t.relname = 'agents' THEN
                SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
                FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = t.rel AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.attname NOT IN ('options', 'endpoint_url');
                EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO axme_sender, axme_agent', cols, t.rel);
            ELSE
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Views: evaluated with the reader's rights (security_invoker), so the policies above apply.
    -- A view is for admins only when it reads something a sender may not (a column such as
    -- agents.options, an admin-only table or view, a private function: those get EXECUTE for
    -- axme_admin) or when its name contains "secret".  Materialized views have no row-level
    -- security: admins only.  In creation order, so a view over a view sees its grants.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname, c.relkind FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('v', 'm')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        FOR f IN
            SELECT DISTINCT d.refobjid::regprocedure AS sig, NULL::text AS proname, NULL::boolean AS prosecdef,
                   NULL::text[] AS proconfig
            FROM pg_catalog.pg_rewrite rw
            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
            JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
            WHERE rw.ev_class = t.rel AND p.pronamespace = 'axme'::regnamespace AND left(p.proname, 1) = '_'
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        END LOOP;
        IF t.relkind = 'v' THEN
            EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true)', t.rel);
            IF t.relname NOT LIKE '%secret%' AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_rewrite rw
                JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                WHERE rw.ev_class = t.rel
                  AND CASE WHEN d.refclassid = 'pg_class'::regclass AND d.refobjid <> t.rel THEN
                           CASE WHEN d.refobjsubid > 0
                                THEN NOT pg_catalog.has_column_privilege('axme_sender', d.refobjid, d.refobjsubid::smallint, 'SELECT')
                                ELSE NOT pg_catalog.has_table_privilege('axme_sender', d.refobjid, 'SELECT') END
                           WHEN d.refclassid = 'pg_proc'::regclass THEN
                                NOT pg_catalog.has_function_privilege('axme_sender', d.refobjid, 'EXECUTE')
                           ELSE false END) THEN
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Sequences: only the functions use them.
    FOR t IN
        SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'S'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, %s', t.rel, roles);
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._secure() IS
    'Private: apply the security model (SECURITY DEFINER with a pinned search_path, EXECUTE grants, '
    'row-level security, security_invoker views) to everything in schema axme. Idempotent; the last '
    'step of every upgrade script.';


-- The database's delivery worker, waiting for this update, resumes at commit.
SELECT axme._wake_http();

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
