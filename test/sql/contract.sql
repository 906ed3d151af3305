-- contract: the public SQL surface (names, argument names, defaults, results), what PUBLIC
-- may do (nothing), 42501 for roles without grants, SECURITY INVOKER, no STRICT public function,
-- and the tables pg_dump keeps.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

-- The functions of the contract, exactly: argument names, defaults, results.
\x on
SELECT sig, to_regprocedure(sig) IS NOT NULL AS present,
       pg_get_function_arguments(to_regprocedure(sig)) AS arguments,
       pg_get_function_result(to_regprocedure(sig)) AS returns
FROM unnest(ARRAY[
    'axme.register_agent(text,text,text,jsonb)',
    'axme.send_intent(jsonb,text)',
    'axme.get_intent(uuid)',
    'axme.intent_events(uuid,bigint)',
    'axme.wait_for(uuid,interval)',
    'axme.channel(text)',
    'axme.poll(text,integer,interval)',
    'axme.ack(uuid,integer)',
    'axme.extend_lease(uuid,interval,integer)',
    'axme.complete(uuid,jsonb,integer)',
    'axme.fail(uuid,jsonb,boolean,integer)',
    'axme.resolve(uuid,text,jsonb)',
    'axme.replay(uuid)'
]) sig;
\x off
SELECT attname, format_type(atttypid, atttypmod) AS type
FROM pg_attribute WHERE attrelid = 'axme.dead_letters'::regclass AND attnum > 0 ORDER BY attnum;

-- No public function is STRICT (a NULL must raise 22023, not return NULL).  Every public function
-- is SECURITY DEFINER with search_path pinned (it checks its caller itself, see security.sql);
-- no private one is.  Except axme.inbox, which stays inlinable (SECURITY INVOKER, no SET) and
-- checks its caller through the private SECURITY DEFINER axme._inbox_reader, and the gateway's
-- key check and listener registration (SECURITY DEFINER, executable by axme_gateway only).
SELECT p.oid::regprocedure AS strict_public_function FROM pg_proc p
WHERE p.pronamespace = 'axme'::regnamespace AND p.proisstrict AND p.proname NOT LIKE '\_%';
SELECT p.oid::regprocedure AS wrong_security FROM pg_proc p
WHERE p.pronamespace = 'axme'::regnamespace
  AND ((p.proname LIKE '\_%') <> (p.proname IN ('inbox', '_inbox_reader', '_gateway_authenticate',
                                                '_gateway_listen', '_gateway_unlisten', '_gateway_watch')))
      = coalesce(p.prosecdef AND 'search_path=pg_catalog, axme, pg_temp' = ANY (p.proconfig), false);
SELECT p.oid::regprocedure AS inbox_security, p.prosecdef, p.proconfig FROM pg_proc p
WHERE p.pronamespace = 'axme'::regnamespace AND p.proname IN ('inbox', '_inbox_reader') ORDER BY 1;

-- PUBLIC gets nothing: no EXECUTE on any function, no table or sequence privilege.
SELECT p.oid::regprocedure AS public_can_execute FROM pg_proc p
WHERE p.pronamespace = 'axme'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');
SELECT c.oid::regclass AS public_can_use FROM pg_class c
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'v', 'S')
  AND (has_table_privilege('public', c.oid, 'SELECT, INSERT, UPDATE, DELETE'));

-- pg_dump keeps the data of every table and of the agent id sequence.
SELECT c::regclass AS dumped FROM pg_extension e, unnest(e.extconfig) c
WHERE e.extname = 'axme' ORDER BY c::regclass::text;
SELECT c.oid::regclass AS not_dumped FROM pg_class c
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'S')
  AND c.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'axme')::oid[]);

-- 42501 for a role without grants, for one with the schema but not the functions, and for one
-- with the functions but not the tables (the functions run with the caller's rights).
SELECT axme.register_agent('agent://myorg/prod/guarded');
SELECT axme.send_intent('{"intent_type": "intent.guard.v1", "to_agent": "agent://myorg/prod/guarded", "payload": {}}') AS gid \gset
SET client_min_messages = warning;
DROP ROLE IF EXISTS axme_regress_nobody;
DROP ROLE IF EXISTS axme_regress_schema_only;
DROP ROLE IF EXISTS axme_regress_no_tables;
RESET client_min_messages;
CREATE ROLE axme_regress_nobody;
CREATE ROLE axme_regress_schema_only;
GRANT USAGE ON SCHEMA axme TO axme_regress_schema_only;
CREATE ROLE axme_regress_no_tables;
GRANT USAGE ON SCHEMA axme TO axme_regress_no_tables;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA axme TO axme_regress_no_tables;
CREATE TEMP TABLE calls (n int, call text);
INSERT INTO calls VALUES
    (1, 'SELECT axme.register_agent(''agent://myorg/prod/intruder'')'),
    (2, 'SELECT axme.send_intent(''{"intent_type": "intent.guard.v1", "to_agent": "agent://myorg/prod/guarded", "payload": {}}'')'),
    (3, 'SELECT axme.get_intent($1)'),
    (4, 'SELECT * FROM axme.intent_events($1)'),
    (5, 'SELECT axme.wait_for($1, ''0'')'),
    (6, 'SELECT axme.channel(''agent://myorg/prod/guarded'')'),
    (7, 'SELECT * FROM axme.poll(''agent://myorg/prod/guarded'')'),
    (8, 'SELECT axme.complete($1)'),
    (9, 'SELECT axme.resolve($1, ''CANCELED'')'),
    (10, 'SELECT * FROM axme.dead_letters'),
    (11, 'SELECT * FROM axme.intents');
GRANT SELECT ON calls TO axme_regress_nobody, axme_regress_schema_only, axme_regress_no_tables;
SET ROLE axme_regress_nobody;
SELECT n, call, pg_temp.err(call, :'gid') AS result FROM calls ORDER BY n;
RESET ROLE;
SET ROLE axme_regress_schema_only;
SELECT n, call, pg_temp.err(call, :'gid') AS result FROM calls ORDER BY n;
RESET ROLE;
SET ROLE axme_regress_no_tables;
SELECT n, call, split_part(pg_temp.err(call, :'gid'), ' ', 1) AS sqlstate FROM calls ORDER BY n;
RESET ROLE;
-- none of it wrote anything
SELECT (axme.get_intent(:'gid'))->>'status' AS status;
SELECT count(*) AS agents FROM axme.agents WHERE address = 'agent://myorg/prod/intruder';
SELECT count(*) AS intents FROM axme.intents WHERE to_agent = 'agent://myorg/prod/guarded';
DROP TABLE calls;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM axme_regress_no_tables;
REVOKE ALL ON SCHEMA axme FROM axme_regress_schema_only, axme_regress_no_tables;
DROP ROLE axme_regress_nobody;
DROP ROLE axme_regress_schema_only;
DROP ROLE axme_regress_no_tables;
