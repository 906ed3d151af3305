-- The security model applied to everything in schema axme (SECURITY DEFINER with a pinned
-- search_path, EXECUTE grants, row-level security, security_invoker views).  This file comes
-- last: axme._secure() covers every object the files before it created.

-- Apply the security model to everything in schema axme; idempotent.  Runs at the end of this
-- script (after every feature's objects exist) and must run at the end of every later upgrade
-- script, so functions, tables and views added later are covered too:
-- * every public function (name not starting with "_", not a trigger) becomes SECURITY DEFINER
--   with search_path = pg_catalog, axme, pg_temp; EXECUTE: axme_admin on all of them, axme_sender
--   and axme_agent on the lists below (a function not listed: admins only).  Private functions
--   stay SECURITY INVOKER with no EXECUTE grant: only the public ones (as their owner) call them.
-- * every table gets row-level security and one SELECT policy "axme_read" (details below);
--   SELECT is granted to the three roles (to axme_admin only where only admins pass the policy;
--   on agents, every column but options and endpoint_url, which may hold credentials); nothing
--   else: all writes go through the functions.
-- * every view becomes security_invoker (row-level security applies to its reader); SELECT for
--   the three roles unless it reads something a sender may not (then admins only).
CREATE FUNCTION axme._secure() RETURNS void
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

-- Last: everything the sections above created is covered.
SELECT axme._secure();
