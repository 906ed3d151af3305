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
COMMENT ON DOMAIN axme.intent_status IS
    'An intent status: CREATED, SUBMITTED, DELIVERED, ACKNOWLEDGED, IN_PROGRESS, WAITING, COMPLETED, FAILED, CANCELED or TIMED_OUT.';

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

-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'get_intent', 'intent_events', 'wait_for', 'channel', 'cancel',
                               'inbox_thread'];   -- the thread of a human task it sent
    agent_fns text[] := ARRAY['poll', 'ack', 'progress', 'extend_lease', 'complete', 'complete_many',
                              'fail', 'resolve', 'replay', 'replay_dead_letters', 'channel',
                              'get_intent', 'intent_events', 'wait_for',
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

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
