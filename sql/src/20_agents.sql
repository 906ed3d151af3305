-- Agents (receivers): the registry, registration with options and secrets, rotation, pause,
-- resume, enable, unregister.

CREATE SEQUENCE axme.agents_agent_id_seq;
SELECT pg_catalog.pg_extension_config_dump('axme.agents_agent_id_seq', '');

CREATE TABLE axme.agents (
    agent_id      bigint PRIMARY KEY DEFAULT nextval('axme.agents_agent_id_seq'),
    address       text NOT NULL UNIQUE,
    delivery_mode text NOT NULL
                  CHECK (delivery_mode IN ('stream', 'poll', 'http', 'inbox', 'internal')),
    endpoint_url  text,
    options       jsonb NOT NULL DEFAULT '{}',
    registered_by regrole NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- Agent administration and endpoint health, read by every claim path (poll, http, internal):
    -- an agent that is paused (axme.pause_agent) or disabled (breaker gave up, 410 Gone, operator)
    -- is handed nothing; its intents wait and are not charged attempts.
    paused_at       timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    -- The receiving role as a column of its own: non-admins may read it (row-level security on
    -- axme.intents uses it) but not options, which may hold credentials in headers.  By OID, set
    -- by register_agent from option db_role: a role created later under the same name is another
    -- role and receives nothing.
    db_role regrole
);
ALTER SEQUENCE axme.agents_agent_id_seq OWNED BY axme.agents.agent_id;
COMMENT ON TABLE axme.agents IS
    'Registered agents (receivers): address, delivery mode, endpoint and options. '
    'Write it with axme.register_agent().';
-- pg_dump / pg_restore keep the data of every table and the agent id sequence.
SELECT pg_catalog.pg_extension_config_dump('axme.agents', '');
COMMENT ON COLUMN axme.agents.paused_at IS
    'Set by axme.pause_agent(): nothing is handed out to the agent until axme.resume_agent().';
COMMENT ON COLUMN axme.agents.disabled_at IS
    'Set when the endpoint was disabled (410 Gone, failing for axme.disable_after): nothing is '
    'handed out until axme.enable_agent(); disabled_reason says why.';
COMMENT ON COLUMN axme.agents.db_role IS
    'The database role (by OID) that receives for the agent, resolved from option db_role by '
    'register_agent; NULL: admins only. When that role has been dropped the agent delivers '
    'nothing and is disabled (alert role_missing).';
COMMENT ON COLUMN axme.agents.registered_by IS
    'The role (by OID) that registered the agent last; an internal agent without db_role runs its '
    'handler as this role.';

-- The registered agent of an address, or P0002 with a hint to register it.
CREATE FUNCTION axme._agent(address text, argname text) RETURNS axme.agents
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a axme.agents;
BEGIN
    PERFORM axme._check_address(address, argname);
    SELECT * INTO a FROM axme.agents WHERE agents.address = _agent.address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent "%" is not registered', address
            USING ERRCODE = 'P0002',
                  HINT = 'Register it first: SELECT axme.register_agent(''' || address || ''', ''poll'');';
    END IF;
    RETURN a;
END $$;

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

CREATE FUNCTION axme._tls_file_problem(value text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'axme_tls_file_problem_fn';
COMMENT ON FUNCTION axme._tls_file_problem(text) IS
    'Private: NULL when value is PEM contents or a file path inside axme.tls_files_directory '
    '(symbolic links resolved), else why not.';

CREATE FUNCTION axme._url_problem(url text) RETURNS text
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'axme_url_problem';
COMMENT ON FUNCTION axme._url_problem(text) IS
    'Private: NULL when libcurl parses url with a host, else why not (an unclosed IPv6 bracket, a '
    'bad port, ...).';

-- A role by its name as written in option db_role (exact, not an SQL identifier), NULL when
-- there is none.
CREATE FUNCTION axme._role_named(name text) RETURNS regrole
LANGUAGE sql STABLE AS $$
    SELECT r.oid::regrole FROM pg_catalog.pg_roles r WHERE r.rolname = _role_named.name
$$;
COMMENT ON FUNCTION axme._role_named(text) IS
    'Private: the role of that exact name (no identifier quoting) as a regrole, NULL when none.';

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

CREATE OR REPLACE FUNCTION axme.channel(agent text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM axme._check_any_role('channel');   -- sec
    RETURN 'axme_agent_' || (axme._agent(agent, 'agent')).agent_id;
END $$;
COMMENT ON FUNCTION axme.channel(text) IS
    'The LISTEN channel of a registered agent (axme_agent_<id>: lower case, at most 63 bytes). '
    'Stream agents get one NOTIFY per sending transaction with {"intent_id": first, "count": n}. '
    'Errors: 42501 caller has none of the axme roles, 22023 invalid address, P0002 not registered.';

CREATE FUNCTION axme._agents_changed() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_agents_changed';
COMMENT ON FUNCTION axme._agents_changed() IS
    'Private: agents were registered or changed mode; at commit, backends forget which agents are '
    'http agents (the wake-up trigger caches it).';

CREATE FUNCTION axme._random_secret() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_random_secret';
COMMENT ON FUNCTION axme._random_secret() IS
    'Private: a new signing secret, whsec_ followed by the base64 of 32 strong random bytes.';

CREATE TABLE axme.agent_secrets (
    agent_id   bigint NOT NULL REFERENCES axme.agents ON DELETE CASCADE,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (agent_id, secret)
);
COMMENT ON TABLE axme.agent_secrets IS
    'Signing secrets of http agents (whsec_ + base64). Every unexpired secret signs each request '
    '(one webhook-signature entry per secret). Readable only by superusers; use axme.agent_secret().';
SELECT pg_catalog.pg_extension_config_dump('axme.agent_secrets', '');

CREATE OR REPLACE FUNCTION axme.agent_secret(agent text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    s text;
BEGIN
    PERFORM axme._check_admin('agent_secret');   -- sec: secrets are for admins only
    a := axme._agent(agent, 'agent');
    SELECT secret INTO s FROM axme.agent_secrets
    WHERE agent_id = a.agent_id AND (expires_at IS NULL OR expires_at > now())
    ORDER BY created_at DESC LIMIT 1;
    RETURN s;
END $$;
COMMENT ON FUNCTION axme.agent_secret(text) IS
    'The current signing secret (whsec_...) of an agent, NULL when it has none. Superusers and '
    'axme_admin members only. Errors: 22023 invalid address, P0002 not registered, 42501 not allowed.';

-- Checks of agent options against the catalogs (STABLE, so not in _check_agent_options):
-- db_role names an existing role; client certificates are set only by admins.
-- merged: the options as stored after the merge; given: the options of this call.
CREATE FUNCTION axme._check_agent_refs(mode text, merged jsonb, given jsonb) RETURNS void
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

-- An agent whose role is gone delivers nothing: its db_role, and for an internal agent without
-- db_role the role its handler runs as (registered_by).  The claim paths (poll, the http and
-- internal workers, the inbox assignment) call this first: each such agent not yet disabled is
-- disabled (disabled_reason role_missing) with one alert role_missing.  mode and agent_id narrow
-- the agents looked at (NULL: all).  Returns how many were disabled.
CREATE FUNCTION axme._disable_roleless(mode text DEFAULT NULL, agent_id bigint DEFAULT NULL) RETURNS integer
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

CREATE FUNCTION axme.enable_agent(agent text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    was_disabled boolean;
BEGIN
    PERFORM axme._check_admin('enable_agent');   -- sec: agent administration is for admins
    a := axme._agent(agent, 'agent');
    SELECT ag.disabled_at IS NOT NULL INTO was_disabled FROM axme.agents ag
    WHERE ag.agent_id = a.agent_id FOR UPDATE;
    IF NOT was_disabled THEN
        RETURN false;
    END IF;
    UPDATE axme.agents SET disabled_at = NULL, disabled_reason = NULL, updated_at = now()
    WHERE agent_id = a.agent_id;
    IF a.delivery_mode = 'http' THEN
        PERFORM axme._ramp_start(a.agent_id, true);
        PERFORM axme._wake_http();
    END IF;
    UPDATE axme.endpoint_state SET breaker = 'closed', consecutive_failures = 0, failing_since = NULL,
           reopen_count = 0, cooldown_ms = NULL, open_until = NULL, probe_at = NULL
    WHERE agent_id = a.agent_id;
    PERFORM axme._alert(a.address, 'endpoint_enabled',
        jsonb_build_object('disabled_at', a.disabled_at, 'disabled_reason', a.disabled_reason,
                           'by', axme._caller()));   -- sec: the caller, not the definer
    RETURN true;
END $$;
COMMENT ON FUNCTION axme.enable_agent(text) IS
    'Turn a disabled agent (410 Gone, failing for axme.disable_after) back on: its waiting intents '
    'are re-driven through the slow-start ramp with their due times spread. Returns true when it '
    'was disabled, false when it was not (nothing changes). Alert endpoint_enabled. Admins only. '
    'Errors: 42501 not a superuser or axme_admin member, 22023 invalid address, P0002 agent not registered.';

CREATE FUNCTION axme.rotate_secret(agent text, grace interval DEFAULT '24 hours') RETURNS text
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

CREATE FUNCTION axme.pause_agent(agent text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
BEGIN
    PERFORM axme._check_admin('pause_agent');   -- sec: agent administration is for admins
    a := axme._agent(agent, 'agent');
    UPDATE axme.agents SET paused_at = coalesce(paused_at, now()), updated_at = now()
    WHERE agent_id = a.agent_id;
END $$;
COMMENT ON FUNCTION axme.pause_agent(text) IS
    'Pause an agent: from the commit on, nothing more is handed out to it (poll returns no rows, '
    'the delivery and handler workers skip it); its intents wait and are not charged attempts. '
    'Intents already handed out keep their leases. Idempotent. Admins only. Errors: 42501 not an '
    'admin, 22023 invalid address, P0002 agent not registered.';

CREATE FUNCTION axme.resume_agent(agent text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
BEGIN
    PERFORM axme._check_admin('resume_agent');   -- sec: agent administration is for admins
    a := axme._agent(agent, 'agent');
    UPDATE axme.agents SET paused_at = NULL, updated_at = now() WHERE agent_id = a.agent_id;
    IF a.paused_at IS NULL THEN
        RETURN;
    END IF;
    -- wake whoever serves the agent: the database worker (http, internal), a stream listener
    PERFORM axme._wake_http();
    IF a.delivery_mode = 'stream' THEN
        PERFORM axme._notify_agent(a.agent_id, i.intent_id)
        FROM axme.intents i WHERE i.agent_id = a.agent_id AND i.due_at IS NOT NULL
                              AND i.status = 'SUBMITTED' LIMIT 1;
    END IF;
END $$;
COMMENT ON FUNCTION axme.resume_agent(text) IS
    'Resume a paused agent: its waiting intents are handed out again from the commit on (a stream '
    'agent gets a wake-up). Idempotent. Admins only. Errors: 42501 not an admin, 22023 invalid '
    'address, P0002 agent not registered.';

CREATE FUNCTION axme.unregister_agent(agent text, force boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    i axme.intents;
    pending bigint;
    n bigint := 0;
BEGIN
    PERFORM axme._check_admin('unregister_agent');   -- sec
    a := axme._agent(agent, 'agent');
    IF force IS NULL THEN
        RAISE EXCEPTION 'argument "force" must not be null' USING ERRCODE = '22023';
    END IF;
    -- No send may slip an intent in between the check below and the delete: wait for the
    -- transactions writing intents to end, and keep new ones out until this one ends.
    LOCK TABLE axme.intents IN SHARE ROW EXCLUSIVE MODE;
    PERFORM FROM axme.agents WHERE agent_id = a.agent_id FOR UPDATE;
    SELECT count(*) INTO pending FROM axme.intents
    WHERE agent_id = a.agent_id AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT');
    IF pending > 0 AND NOT force THEN
        RAISE EXCEPTION 'agent "%" has % pending intent(s)', a.address, pending
            USING ERRCODE = '55000',
                  HINT = 'Wait for them, cancel them, or call unregister_agent(agent, force => true), which cancels them.';
    END IF;
    FOR i IN
        SELECT * FROM axme.intents
        WHERE agent_id = a.agent_id AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
        ORDER BY created_at FOR UPDATE
    LOOP
        PERFORM axme._transition(i, 'CANCELED', 'intent.canceled',
            jsonb_build_object('reason', 'agent_unregistered', 'agent', a.address));
        n := n + 1;
    END LOOP;
    DELETE FROM axme.alert_state WHERE agent_id = a.agent_id;
    DELETE FROM axme.agents WHERE agent_id = a.agent_id;   -- its secrets go with it (cascade)
    PERFORM axme._agents_changed();
    RETURN n;
END $$;
COMMENT ON FUNCTION axme.unregister_agent(text, boolean) IS
    'Remove an agent (and its secrets). Refused while it has pending (non-terminal) intents unless '
    'force, which cancels them first (-> CANCELED, event intent.canceled with reason '
    'agent_unregistered). Terminal intents stay as history. Returns the number of intents '
    'canceled. Takes a SHARE ROW EXCLUSIVE lock on axme.intents until commit (sends wait). '
    'Admins only. Errors: 42501 not an admin, 22023 invalid address or NULL force, P0002 agent not '
    'registered, 55000 pending intents.';
