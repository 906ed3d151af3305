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

-- Background work bounded by what is due (issue 12 item 3).
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
    FOR i IN
        SELECT x.* FROM axme.agents a
        CROSS JOIN LATERAL (
            SELECT y.* FROM axme.intents y
            WHERE y.agent_id = a.agent_id AND y.due_at <= now() AND y.status = 'SUBMITTED'
              AND y.human_task IS NOT NULL
            ORDER BY y.due_at LIMIT max_count
            FOR UPDATE OF y SKIP LOCKED) x
        WHERE a.delivery_mode = 'inbox'
        ORDER BY x.due_at LIMIT max_count
    LOOP
        PERFORM axme._assign_task(i, axme._check_human_task(i.human_task));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- One turn of the worker's time-driven steps besides firing timers (src/timers.c): stream
-- wake-ups, delayed inbox tasks whose not_before came (axme._inbox_assign_due, when the inbox
-- feature is installed), and when to look next: the earliest timer, delayed stream or inbox
-- intent; within a second while stream agents exist (their leases and backoffs end unannounced).
-- internal_agents: whether the internal worker is needed.  Every query goes through an index
-- that holds only due or pending rows (timers_due_idx, the claim index), per agent of the mode it
-- serves, and a mode no agent uses costs one look at axme.agents: a turn stays the same with
-- millions of finished intents in history (bench/background).
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
            (SELECT min(f.due_at) FROM axme.agents a
             CROSS JOIN LATERAL (SELECT i.due_at FROM axme.intents i
                                 WHERE i.agent_id = a.agent_id AND i.due_at > upto
                                 ORDER BY i.due_at LIMIT 1) f
             WHERE a.delivery_mode = 'inbox'));
    END IF;
    internal_agents := 'internal' = ANY (modes);
END $$;

-- complete in one statement on its fast path (issue 12).
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
          AND (complete.attempt IS NULL OR x.attempt = complete.attempt)
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
    i := axme._lock_intent(intent_id, attempt);
    i.result := result;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed', jsonb_build_object('attempt', i.attempt));
END $$;

-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'send_intents', 'get_intent', 'intent_events', 'wait_for', 'channel',
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

-- The database's delivery worker, waiting for this update, resumes at commit.
SELECT axme._wake_http();

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
