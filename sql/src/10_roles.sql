-- Who the caller is and what it may do: axme._caller() (the session's role, SET ROLE honoured), the
-- three axme roles, and the _check_* helpers every public function calls (42501 naming what was
-- refused).  axme._secure() in 90_security.sql applies grants and row-level security.

-- Who is calling (section 5, roles and security; defined here because _is_admin uses them).
-- Public functions run as their owner (SECURITY DEFINER): the caller is the outer user id, the
-- role the session runs as (SET ROLE honoured).  "Has role r": has the privileges of r (directly
-- or through an INHERIT membership); superusers have every role; an unknown or NULL role name
-- is held by superusers only.
CREATE FUNCTION axme._caller() RETURNS text
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_caller_fn';
COMMENT ON FUNCTION axme._caller() IS
    'Private: the calling role: current_user outside any SECURITY DEFINER function (SET ROLE is '
    'honoured). Recorded as sender_role, registered_by and event actor.';

CREATE FUNCTION axme._caller_has(role text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_caller_has_fn';
COMMENT ON FUNCTION axme._caller_has(text) IS
    'Private: whether the calling role has the privileges of role (superusers: always; unknown or '
    'NULL role: superusers only). For checks inside SECURITY DEFINER functions.';

CREATE FUNCTION axme._user_has(role text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'axme_user_has_fn';
COMMENT ON FUNCTION axme._user_has(text) IS
    'Private: whether current_user has the privileges of role (superusers: always; unknown or NULL '
    'role: superusers only). For row-level security policies.';

-- The same checks by OID: axme stores roles as regrole (sender_role, db_role, registered_by), so a
-- role created later under a dropped role's name has a new OID and never matches.
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

-- Whether the caller is an administrator of axme: a superuser or a role with the privileges of
-- axme_admin.
CREATE FUNCTION axme._is_admin() RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT axme._caller_has('axme_admin') $$;
COMMENT ON FUNCTION axme._is_admin() IS
    'Private: true when the calling role (axme._caller()) is a superuser or has the privileges of '
    'axme_admin.';

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['axme_admin', 'axme_sender', 'axme_agent'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;
COMMENT ON ROLE axme_admin IS
    'axme: administrators (register agents, read everything including secrets, operator functions).';
COMMENT ON ROLE axme_sender IS
    'axme: may send intents and read the intents it sent.';
COMMENT ON ROLE axme_agent IS
    'axme: may receive (poll, ack, complete, fail, ...) for the agents whose option db_role it has.';

-- The one role check the four below share: 42501 unless the caller is an admin or has the
-- privileges of one of roles; the message names what was refused and the roles that would do.
CREATE FUNCTION axme._check_member(what text, roles text[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT (axme._is_admin() OR EXISTS (SELECT FROM unnest(roles) r WHERE axme._caller_has(r))) THEN
        RAISE EXCEPTION 'permission denied for %: role "%" is not a member of %', what, axme._caller(),
                        CASE WHEN cardinality(roles) = 0 THEN 'axme_admin'
                             ELSE array_to_string(roles, ', ') || ' or axme_admin' END
            USING ERRCODE = '42501';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_member(text, text[]) IS
    'Private: 42501 unless the caller is a superuser, has the privileges of axme_admin, or of one of roles.';

CREATE FUNCTION axme._check_admin(what text) RETURNS void
LANGUAGE sql STABLE AS $$ SELECT axme._check_member(what, '{}') $$;
COMMENT ON FUNCTION axme._check_admin(text) IS
    'Private: 42501 unless the caller is a superuser or has the privileges of axme_admin.';

CREATE FUNCTION axme._check_sender(what text) RETURNS void
LANGUAGE sql STABLE AS $$ SELECT axme._check_member(what, '{axme_sender}') $$;
COMMENT ON FUNCTION axme._check_sender(text) IS
    'Private: 42501 unless the caller has the privileges of axme_sender or axme_admin.';

CREATE FUNCTION axme._check_any_role(what text) RETURNS void
LANGUAGE sql STABLE AS $$ SELECT axme._check_member(what, '{axme_sender,axme_agent}') $$;
COMMENT ON FUNCTION axme._check_any_role(text) IS
    'Private: 42501 unless the caller has the privileges of axme_sender, axme_agent or axme_admin.';

-- Monitoring (metrics, worker status): admins and members of pg_monitor (an exporter's role
-- needs no access to payloads or secrets).
CREATE FUNCTION axme._check_monitor(what text) RETURNS void
LANGUAGE sql STABLE AS $$ SELECT axme._check_member(what, '{pg_monitor}') $$;
COMMENT ON FUNCTION axme._check_monitor(text) IS
    'Private: 42501 unless the caller has the privileges of pg_monitor or axme_admin.';

-- Whether the caller receives for an agent: an admin, or a role with the privileges of the
-- agent's db_role.  An agent without db_role is received for by admins only.
CREATE FUNCTION axme._can_receive(agent_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT axme._is_admin()
        OR coalesce((SELECT axme._caller_has(a.db_role) FROM axme.agents a
                     WHERE a.agent_id = _can_receive.agent_id), false)
$$;
COMMENT ON FUNCTION axme._can_receive(bigint) IS
    'Private: whether the caller may receive for the agent (has its db_role, or is an admin).';

CREATE FUNCTION axme._check_receiver(agent_id bigint, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT axme._can_receive(agent_id) THEN
        RAISE EXCEPTION 'permission denied for %: role "%" does not receive for agent "%"', what,
                        axme._caller(), (SELECT a.address FROM axme.agents a WHERE a.agent_id = _check_receiver.agent_id)
            USING ERRCODE = '42501',
                  HINT = 'The agent''s option db_role names the role that receives for it.';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_receiver(bigint, text) IS
    'Private: 42501 unless the caller receives for the agent (its db_role, or an admin).';

-- Whether the caller may read an intent: its sending role, its receiver's role, an admin.
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

CREATE FUNCTION axme._check_intent_reader(intent_id uuid) RETURNS void
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

CREATE FUNCTION axme._check_intent_receiver(intent_id uuid, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent bigint;
BEGIN
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT i.agent_id INTO v_agent FROM axme.intents i WHERE i.intent_id = _check_intent_receiver.intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM axme._check_receiver(v_agent, what);
END $$;
COMMENT ON FUNCTION axme._check_intent_receiver(uuid, text) IS
    'Private: 22023 NULL, P0002 unknown intent, 42501 unless the caller receives for its agent.';
