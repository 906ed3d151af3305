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

-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'get_intent', 'intent_events', 'wait_for', 'channel',
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

-- Comments that named the processes by their old names: the delivery worker (formerly "the http
-- worker", backend_type 'axme worker') and the handler worker (formerly "the internal worker").
-- send_intent's errors: 40001 when the conflicting idempotency key is gone when read back.
COMMENT ON FUNCTION axme.send_intent(jsonb, text) IS
    'Store an intent and queue it for its receiver, in the caller''s transaction. intent: '
    '{"intent_type", "to_agent", "payload": {...}} plus optional from_agent, correlation_id, reply_to, '
    'deadline_at, not_before, max_delivery_attempts, remind_after_seconds, remind_interval_seconds, '
    'max_reminders, escalate_to, human_task. idempotency_key: 8..128 characters; the same key and '
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
COMMENT ON FUNCTION axme._http_claim(integer, bigint[], integer[]) IS
    'Private (delivery worker): claim due intents of http agents within the worker''s and each agent''s '
    'limits (max_in_flight, slow start, breaker, rate limit, paused / disabled agents) and return '
    'what to send. Moves half-open breakers and spends rate-limit tokens.';
COMMENT ON FUNCTION axme._http_next_due(bigint[], integer[]) IS
    'Private (delivery worker): when an http agent can next be handed something (NULL: nothing due).';
COMMENT ON FUNCTION axme._http_record_batch(uuid[], integer[], bigint[], timestamptz[], double precision[],
                                            integer[], text[], text[], text[], text[], bigint[]) IS
    'Private (delivery worker): record finished attempts and move their intents on, then update the '
    'endpoints'' breaker, slow start and health (axme._endpoint_observe).';
COMMENT ON FUNCTION axme._internal_claim() IS
    'Private: hand the oldest due intent of an internal agent to the handler worker (DELIVERED).';
COMMENT ON VIEW axme.worker_status IS
    'The running axme workers of the cluster (shared memory): kind (delivery worker, handler worker), database, pid, state '
    '(idle, delivering, cleanup, waiting for ALTER EXTENSION axme UPDATE, ...), in_flight requests, '
    'deliveries_per_second (outcomes recorded over the last 10 s), deliveries_total, last_error and '
    'when, started_at. Needs shared_preload_libraries = axme (empty otherwise).';

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
        FROM axme.worker_status WHERE database = current_database()
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
    'The figures of axme.queue_depth, axme.delivery_stats and axme.worker_status (this database) '
    'in the Prometheus text exposition format (metric names axme_*, labels agent, mode, window), '
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

-- The database's delivery worker, waiting for this update, resumes at commit.
SELECT axme._wake_http();

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
