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
-- registered in axme.gateway_listeners (a heartbeat row, 90 s time-to-live): a table read per
-- writing statement instead of a shared-memory flag, so the extension's shared memory is
-- untouched; the cost is that a gateway that crashed keeps the channel on for up to 90 s.
-------------------------------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'axme_gateway') THEN
        CREATE ROLE axme_gateway NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA axme TO axme_gateway;

CREATE TABLE axme.api_key_hashes (
    key_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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

CREATE FUNCTION axme._gateway_listen(name text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    DELETE FROM axme.gateway_listeners g
    WHERE g.seen_at < now() - interval '90 seconds'
       OR g.pid NOT IN (SELECT a.pid FROM pg_catalog.pg_stat_activity a WHERE a.pid IS NOT NULL);
    INSERT INTO axme.gateway_listeners AS g (pid, name) VALUES (pg_catalog.pg_backend_pid(), left(name, 255))
    ON CONFLICT (pid) DO UPDATE SET seen_at = now(), name = excluded.name;
$$;
COMMENT ON FUNCTION axme._gateway_listen(text) IS
    'Private: register (or refresh, every 30 s) the calling session as a gateway listener, and drop '
    'the rows of listeners that are gone. For axme-gateway only.';

CREATE FUNCTION axme._gateway_unlisten() RETURNS void
LANGUAGE sql VOLATILE AS $$
    DELETE FROM axme.gateway_listeners g WHERE g.pid = pg_catalog.pg_backend_pid();
$$;
COMMENT ON FUNCTION axme._gateway_unlisten() IS
    'Private: unregister the calling gateway listener (clean shutdown). For axme-gateway only.';

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['axme._gateway_authenticate(text)', 'axme._gateway_listen(text)',
                             'axme._gateway_unlisten()'] LOOP
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

-- Change channel payloads (text, small, identifiers only): "i <intent_id> <agent_id>" when an
-- intent got events, "o <owner_id>" when an inbox thread changed, "*" when one statement changed
-- more than 100 intents (every stream re-reads).  Identical notifications of a transaction merge.
CREATE FUNCTION axme._gateway_events_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n bigint;
BEGIN
    IF NOT axme._gateway_active() THEN
        RETURN NULL;
    END IF;
    SELECT count(DISTINCT e.intent_id) INTO n FROM ins e;
    IF n > 100 THEN
        PERFORM pg_notify('axme_changes', '*');
        RETURN NULL;
    END IF;
    FOR r IN SELECT DISTINCT e.intent_id, i.agent_id FROM ins e JOIN axme.intents i USING (intent_id) LOOP
        PERFORM pg_notify('axme_changes', 'i ' || r.intent_id || ' ' || r.agent_id);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._gateway_events_trigger() IS
    'Private trigger: while a gateway listens, NOTIFY axme_changes "i <intent_id> <agent_id>" for '
    'each intent with new events (at commit; "*" above 100 intents in one statement).';
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
    FOR o IN SELECT DISTINCT f.owner_id FROM changed f LOOP
        PERFORM pg_notify('axme_changes', 'o ' || o);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._gateway_inbox_trigger() IS
    'Private trigger: while a gateway listens, NOTIFY axme_changes "o <owner_id>" for each inbox '
    'owner whose change feed moved (at commit).';
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
