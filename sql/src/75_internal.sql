-- The internal delivery mode: registered SQL handlers run by the handler worker; its claim and
-- the recording of a handler's result or error.

CREATE FUNCTION axme._wake_internal() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wake_internal_sql';
COMMENT ON FUNCTION axme._wake_internal() IS
    'Private: at commit, wake the worker that runs internal handlers.';

-- Internal delivery: handlers run by the handler worker of each database (src/handler_worker.c), one
-- intent at a time: claim (this function, its own transaction: DELIVERED, lease timeout_ms + 30 s),
-- then the handler and axme._internal_done / axme._internal_failed in a second transaction.
-- Returns no row when nothing is due, with next_due (NULL: nothing pending) in a row whose
-- intent_id is NULL.  Agents with paused_at or disabled_at set are skipped.
CREATE FUNCTION axme._internal_claim()
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

-- The handler of attempt p_attempt returned: COMPLETED with its result.  Raises 40001 when the
-- intent is no longer that attempt (timed out, canceled or re-claimed meanwhile): the caller then
-- rolls back the handler's work with it.
CREATE FUNCTION axme._internal_done(p_intent_id uuid, p_attempt integer, p_result jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    SELECT * INTO i FROM axme.intents it WHERE it.intent_id = p_intent_id FOR UPDATE;
    IF NOT FOUND OR i.attempt <> p_attempt OR i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
        RAISE EXCEPTION 'intent % is no longer handed out to this handler run (status %)', p_intent_id, i.status
            USING ERRCODE = '40001';
    END IF;
    i.result := p_result;
    i.error := NULL;
    i.lease_until := NULL;
    i.due_at := NULL;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed',
                             jsonb_build_object('attempt', i.attempt, 'via', 'internal'));
END $$;
COMMENT ON FUNCTION axme._internal_done(uuid, integer, jsonb) IS
    'Private: record a handler''s result (COMPLETED); 40001 when the run is stale.';

-- The handler of attempt p_attempt failed (exception, timeout, refused): retried after the
-- agent's backoff while the budget lasts, then dead-lettered with reason handler_error.
-- Does nothing when the intent is no longer that attempt.
CREATE FUNCTION axme._internal_failed(p_intent_id uuid, p_attempt integer, p_error jsonb,
                                      p_retry boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    SELECT * INTO i FROM axme.intents it WHERE it.intent_id = p_intent_id FOR UPDATE;
    IF NOT FOUND OR i.attempt <> p_attempt OR i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
        RETURN;
    END IF;
    IF p_retry AND axme._has_attempts_left(i) THEN
        PERFORM axme._retry_or_dead_letter(i, p_error);
    ELSE
        PERFORM axme._dead_letter(i, 'handler_error', p_error);
    END IF;
END $$;
COMMENT ON FUNCTION axme._internal_failed(uuid, integer, jsonb, boolean) IS
    'Private: one failed handler run: retry after the backoff, or dead letter (handler_error).';

-- Registration checks of an internal agent's handler (called by axme._check_agent_refs).
CREATE FUNCTION axme._check_handler(handler text, db_role text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    fn regprocedure;
    p record;
    run_as text := coalesce(db_role, axme._caller());   -- sec: the registering role, not the definer
BEGIN
    fn := pg_catalog.to_regprocedure(handler || '(jsonb)');
    IF fn IS NULL THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_proc pr JOIN pg_catalog.pg_namespace n ON n.oid = pr.pronamespace
                   WHERE n.nspname = lower(split_part(handler, '.', 1)) AND pr.proname = lower(split_part(handler, '.', 2))) THEN
            RAISE EXCEPTION 'option "handler": function % exists but not as %(intent jsonb)', handler, handler
                USING ERRCODE = '42883', HINT = 'A handler is schema.function(intent jsonb) RETURNS jsonb.';
        END IF;
        RAISE EXCEPTION 'option "handler": function %(jsonb) does not exist', handler
            USING ERRCODE = '42883', HINT = 'A handler is schema.function(intent jsonb) RETURNS jsonb.';
    END IF;
    SELECT pr.prorettype, pr.proretset, pr.prokind, pr.prosecdef, r.rolsuper AS owner_super
    INTO p FROM pg_catalog.pg_proc pr JOIN pg_catalog.pg_roles r ON r.oid = pr.proowner WHERE pr.oid = fn;
    IF p.prokind <> 'f' OR p.proretset OR p.prorettype <> 'jsonb'::regtype THEN
        RAISE EXCEPTION 'option "handler": % must be a function returning jsonb (one value, not a set)', handler
            USING ERRCODE = '42804', HINT = 'A handler is schema.function(intent jsonb) RETURNS jsonb.';
    END IF;
    IF db_role IS NOT NULL THEN
        IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = db_role) THEN
            RAISE EXCEPTION 'option "db_role": handlers do not run as superuser "%"', db_role
                USING ERRCODE = '42501',
                      HINT = 'Name a role with only the privileges the handler needs.';
        END IF;
        IF NOT pg_catalog.pg_has_role(axme._caller(), db_role, 'MEMBER') AND NOT axme._is_admin() THEN   -- sec
            RAISE EXCEPTION 'option "db_role": role "%" is not a role of %', db_role, axme._caller()   -- sec
                USING ERRCODE = '42501', HINT = 'Only members of a role (or axme administrators) may run handlers as it.';
        END IF;
    END IF;
    IF p.prosecdef AND p.owner_super AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r
                                                        WHERE r.rolname = axme._caller()), false) THEN   -- sec
        RAISE EXCEPTION 'option "handler": % is SECURITY DEFINER owned by a superuser', handler
            USING ERRCODE = '42501', HINT = 'Only a superuser may register a handler that runs as a superuser.';
    END IF;
    IF NOT pg_catalog.has_function_privilege(run_as, fn, 'EXECUTE') THEN
        RAISE EXCEPTION 'option "handler": role "%" may not execute %', run_as, fn
            USING ERRCODE = '42501';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_handler(text, text) IS
    'Private: registration checks of an internal handler. Errors: 42883 no such function or wrong '
    'arguments, 42804 wrong return type, 42501 superuser db_role, role not the caller''s, '
    'superuser-owned SECURITY DEFINER handler, or no EXECUTE privilege.';
