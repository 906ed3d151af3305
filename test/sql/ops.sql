-- ops: agent administration (pause, resume, unregister, purge_dead_letters), cleanup and the
-- retention settings, the monitoring views and metrics().  Output must not depend on
-- shared_preload_libraries (worker_status and alerts are tested in test/python/test_ops.py).
\i test/include/setup.psql

CREATE FUNCTION pg_temp.send(agent text, extra jsonb DEFAULT '{}', key text DEFAULT NULL) RETURNS uuid
LANGUAGE sql AS $f$
    SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.ops.v1', 'to_agent', agent,
                                               'payload', '{}'::jsonb) || extra, key)
$f$;
-- statuses of an agent's intents, as "STATUS count" lines
CREATE FUNCTION pg_temp.statuses(agent text) RETURNS TABLE (status text, n bigint)
LANGUAGE sql AS $f$
    SELECT i.status, count(*) FROM axme.intents i WHERE i.to_agent = agent GROUP BY 1 ORDER BY 1
$f$;

SELECT axme.register_agent('agent://acme/ops/worker', 'poll', NULL, '{"retry": {"base_delay_ms": 1, "max_delay_ms": 2}}');
SELECT axme.register_agent('agent://acme/ops/other', 'stream');
SELECT count(pg_temp.send('agent://acme/ops/worker')) FROM generate_series(1, 4);

-- pause: poll hands out nothing and charges nothing; resume hands out again
SELECT axme.pause_agent('agent://acme/ops/worker');
SELECT axme.pause_agent('agent://acme/ops/worker');      -- idempotent
SELECT count(*) AS polled_while_paused FROM axme.poll('agent://acme/ops/worker', 10);
SELECT sum(attempt) AS attempts_charged FROM axme.intents WHERE to_agent = 'agent://acme/ops/worker';
SELECT agent, paused, ready, leased FROM axme.queue_depth WHERE agent = 'agent://acme/ops/worker';
SELECT axme.resume_agent('agent://acme/ops/worker');
SELECT count(*) AS polled_after_resume FROM axme.poll('agent://acme/ops/worker', 2);
SELECT agent, paused, ready, leased, waiting, scheduled, dead_lettered FROM axme.queue_depth WHERE agent LIKE 'agent://acme/ops/%' ORDER BY agent;
-- a disabled agent (set by the resilience features) is not handed anything either
UPDATE axme.agents SET disabled_at = now() WHERE address = 'agent://acme/ops/worker';
SELECT count(*) AS polled_while_disabled FROM axme.poll('agent://acme/ops/worker', 10);
UPDATE axme.agents SET disabled_at = NULL WHERE address = 'agent://acme/ops/worker';
SELECT pg_temp.err('SELECT axme.pause_agent(''agent://acme/ops/nobody'')');
SELECT pg_temp.err('SELECT axme.resume_agent(''bad address'')');
SELECT pg_temp.err('SELECT axme.pause_agent(NULL)');

-- complete one, fail one for good, dead-letter one (budget of 1)
SELECT axme.complete(intent_id, '{}', attempt) FROM axme.intents
WHERE to_agent = 'agent://acme/ops/worker' AND status = 'DELIVERED' ORDER BY created_at, intent_id LIMIT 1;
SELECT axme.fail(intent_id, '{"why": "no"}', false, attempt) FROM axme.intents
WHERE to_agent = 'agent://acme/ops/worker' AND status = 'DELIVERED';
SELECT pg_temp.send('agent://acme/ops/worker', '{"max_delivery_attempts": 1}') IS NOT NULL AS sent;
SELECT count(axme.fail(p.intent_id, '{"why": "boom"}', true, p.attempt)) FROM axme.poll('agent://acme/ops/worker', 10) p;
SELECT * FROM pg_temp.statuses('agent://acme/ops/worker');
SELECT agent, mode, "window", sent, delivered, completed, failed, dead_lettered, retrying, success_rate,
       p50_ms >= 0 AS p50, p95_ms >= p50_ms AS p95, p99_ms >= p95_ms AS p99
FROM axme.delivery_stats WHERE agent LIKE 'agent://acme/ops/%' ORDER BY agent, "window";
-- (the retries are due within 2 ms: ready or scheduled depending on timing)
SELECT agent, ready + scheduled AS ready_or_scheduled, leased, dead_lettered FROM axme.queue_depth WHERE agent LIKE 'agent://acme/ops/%' ORDER BY agent;

-- metrics(): Prometheus text, HELP and TYPE before the samples of each metric
SELECT line FROM regexp_split_to_table(axme.metrics(), E'\n') line
WHERE line ~ '^axme_(queue_leased|dead_letters|intents_completed|success_ratio)\{agent="agent://acme/ops/worker"'
   OR line ~ '^# TYPE axme_(queue_ready|notification_queue_usage) '
ORDER BY line;
SELECT count(*) AS bad_lines FROM regexp_split_to_table(axme.metrics(), E'\n') line
WHERE line <> '' AND line !~ '^# (HELP|TYPE) axme_[a-z_]+ ' AND line !~ '^axme_[a-z_]+(\{[^}]*\})? [0-9.e+-]+$';
SELECT count(*) AS queue_usage_lines FROM regexp_split_to_table(axme.metrics(), E'\n') line
WHERE line ~ '^axme_notification_queue_usage [0-9.e-]+$';
-- the counters (values depend on preloading: tested in test/python/test_counters.py): every
-- counter is TYPE counter and ends in _total; every agent has its six intent counters
SELECT line FROM regexp_split_to_table(axme.metrics(), E'\n') line
WHERE line ~ '^# TYPE axme_\w+ counter$' ORDER BY line;
SELECT count(*) AS worker_intent_counters FROM regexp_split_to_table(axme.metrics(), E'\n') line
WHERE line ~ '^axme_intents_[a-z_]+_total\{agent="agent://acme/ops/worker",mode="poll"\} [0-9]+$';

-- purge_dead_letters: only dead letters, only before the given time
SELECT axme.purge_dead_letters('agent://acme/ops/worker', now() - interval '1 hour') AS purged_none;
SELECT axme.purge_dead_letters('agent://acme/ops/worker') AS purged;
SELECT count(*) AS dead_letters_left FROM axme.dead_letters WHERE to_agent = 'agent://acme/ops/worker';
SELECT pg_temp.err('SELECT axme.purge_dead_letters(''agent://acme/ops/worker'', NULL)');
SELECT pg_temp.err('SELECT axme.purge_dead_letters(''agent://acme/ops/nobody'')');

-- retention settings: time with units, at least 1 s; idempotency keys at least a day
SET axme.retention_terminal = '1s';
SHOW axme.retention_terminal;
SET axme.retention_terminal = '7d';
SHOW axme.retention_terminal;
SELECT pg_temp.err('SET axme.retention_terminal = 0');
SELECT pg_temp.err('SET axme.retention_dead_letters = ''500ms''');
SELECT pg_temp.err('SET axme.idempotency_ttl = ''23h''');
SELECT pg_temp.err('SET axme.attempts_retention = ''-1''');
SELECT pg_temp.err('SET axme.cleanup_interval = ''1min''');
SHOW axme.idempotency_ttl;
SHOW axme.retention_dead_letters;
SHOW axme.attempts_retention;
SHOW axme.cleanup_interval;

-- cleanup: terminal intents that ended long enough ago go with their events and attempts;
-- live intents never, however old; dead letters by their own retention
CREATE TEMP TABLE keyed AS SELECT pg_temp.send('agent://acme/ops/other', '{}', 'key-ops-0001') AS id;
SELECT axme.resolve(id, 'COMPLETED') FROM keyed;
SELECT axme.register_agent('agent://acme/ops/dead', 'poll');
SELECT pg_temp.send('agent://acme/ops/dead', '{"max_delivery_attempts": 1}') IS NOT NULL AS sent;
SELECT count(axme.fail(p.intent_id, '{"why": "boom"}', true, p.attempt)) FROM axme.poll('agent://acme/ops/dead', 1) p;
INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms)
SELECT id, 1, 0, now() - interval '2 days', 1 FROM keyed;
-- (only this test's intents: the regression tests share a database)
UPDATE axme.intents SET updated_at = now() - interval '2 days', created_at = now() - interval '2 days',
                        dead_lettered_at = dead_lettered_at - interval '2 days'
WHERE to_agent LIKE 'agent://acme/ops/%';
SELECT * FROM pg_temp.statuses('agent://acme/ops/worker');
SELECT c->'intents' AS intents, c->'events' AS events, c->'delivery_attempts' AS attempts, c->'idempotency_keys' AS keys, c->'alerts' AS alerts FROM axme.cleanup() c; -- nothing_yet
SET axme.retention_terminal = '1d';
SET axme.cleanup_batch_size = 2;      -- three intents to delete: two batches
SELECT c->'intents' AS intents, c->'events' AS events, c->'delivery_attempts' AS attempts, c->'idempotency_keys' AS keys, c->'alerts' AS alerts FROM axme.cleanup() c; -- terminal
RESET axme.cleanup_batch_size;
SELECT * FROM pg_temp.statuses('agent://acme/ops/worker');
SELECT * FROM pg_temp.statuses('agent://acme/ops/dead');
SELECT * FROM pg_temp.statuses('agent://acme/ops/other');
SELECT count(*) AS orphan_events FROM axme.events e WHERE NOT EXISTS (SELECT FROM axme.intents i WHERE i.intent_id = e.intent_id);
SET axme.retention_dead_letters = '1d';
SELECT c->'intents' AS intents, c->'events' AS events, c->'delivery_attempts' AS attempts, c->'idempotency_keys' AS keys, c->'alerts' AS alerts FROM axme.cleanup() c; -- dead_letters
SELECT * FROM pg_temp.statuses('agent://acme/ops/dead');
-- the idempotency key outlived its intent: the same send still answers with the original id
SELECT pg_temp.send('agent://acme/ops/other', '{}', 'key-ops-0001') = id AS same_id FROM keyed;
SELECT count(*) AS intents_of_key FROM axme.intents i JOIN keyed k ON k.id = i.intent_id;
UPDATE axme.idempotency_keys SET created_at = now() - interval '8 days' WHERE key = 'key-ops-0001';
SELECT c->'intents' AS intents, c->'events' AS events, c->'delivery_attempts' AS attempts, c->'idempotency_keys' AS keys, c->'alerts' AS alerts FROM axme.cleanup() c; -- keys
SELECT pg_temp.send('agent://acme/ops/other', '{}', 'key-ops-0001') = id AS same_id_after_ttl FROM keyed;
RESET axme.retention_terminal;
RESET axme.retention_dead_letters;

-- unregister: refused while intents are pending (55000) unless force, which cancels them
SELECT pg_temp.err('SELECT axme.unregister_agent(''agent://acme/ops/worker'')', NULL, true);
SELECT axme.unregister_agent('agent://acme/ops/worker', force => true) AS canceled;
SELECT * FROM pg_temp.statuses('agent://acme/ops/worker');
SELECT DISTINCT e.event_type, e.details->>'reason' AS reason FROM axme.events e
JOIN axme.intents i USING (intent_id) WHERE i.to_agent = 'agent://acme/ops/worker' AND e.event_type = 'intent.canceled';
SELECT count(*) AS agents_left FROM axme.agents WHERE address = 'agent://acme/ops/worker';
SELECT pg_temp.err('SELECT axme.unregister_agent(''agent://acme/ops/worker'')');
SELECT pg_temp.err('SELECT axme.unregister_agent(''agent://acme/ops/other'', NULL)');
SELECT pg_temp.err('SELECT pg_temp.send(''agent://acme/ops/worker'')');
-- an agent without pending intents goes without force
SELECT axme.resolve(i.intent_id, 'CANCELED') FROM axme.intents i
WHERE i.to_agent = 'agent://acme/ops/other' AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT');
SELECT axme.unregister_agent('agent://acme/ops/other') AS canceled;
SELECT axme.register_agent('agent://acme/ops/worker', 'poll');
SELECT agent, ready, leased, dead_lettered FROM axme.queue_depth WHERE agent LIKE 'agent://acme/ops/%' ORDER BY agent;

-- README (Operations, Alerting): forwarding alerts to a chat webhook through an http agent (verbatim)
SELECT axme.register_agent('agent://ops/alerts/chat', 'http', 'https://chat.example.com/hooks/axme');
CREATE FUNCTION public.forward_axme_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM axme.send_intent(jsonb_build_object('intent_type', 'intent.ops.alert.v1',
        'to_agent', 'agent://ops/alerts/chat', 'payload', jsonb_build_object('text',
        format('axme %s: %s %s', NEW.kind, coalesce(NEW.agent, '-'), NEW.details))), 'axme-alert-' || NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER forward AFTER INSERT ON axme.alerts FOR EACH ROW
    WHEN (NEW.agent IS DISTINCT FROM 'agent://ops/alerts/chat') EXECUTE FUNCTION public.forward_axme_alert();
-- an alert becomes one intent to the chat agent; one about the chat agent itself does not
SELECT axme._alert('agent://acme/ops/worker', 'dead_letter_threshold', '{"dead_letters": 3}') > 0 AS raised;
SELECT axme._alert('agent://ops/alerts/chat', 'dead_letter_threshold', '{"dead_letters": 3}') > 0 AS raised;
SELECT i.payload->>'text' AS text FROM axme.intents i WHERE i.to_agent = 'agent://ops/alerts/chat';
DROP TRIGGER forward ON axme.alerts;
DROP FUNCTION public.forward_axme_alert();
SELECT axme.unregister_agent('agent://ops/alerts/chat', force => true) AS canceled;
