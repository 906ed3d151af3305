-- The http delivery mode, SQL side: the delivery worker's claim (axme._http_claim) and record
-- (axme._http_record_batch) transactions and the delivery_attempts table.  Their C side is
-- src/claim.c, the curl pipeline src/http.c, signing src/sign.c, the SSRF check src/ssrf.c, the
-- commit-time wake-up src/doorbell.c.

CREATE FUNCTION axme._wake_http() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wake_http';
COMMENT ON FUNCTION axme._wake_http() IS
    'Private: wake this database''s delivery worker when the current transaction commits (or have the '
    'launcher start one).';

-- The database's delivery worker starts once the install commits (the launcher is woken).
SELECT axme._wake_http(), axme._agents_changed();

CREATE FUNCTION axme._http_wake_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'axme_http_wake_trigger';
COMMENT ON FUNCTION axme._http_wake_trigger() IS
    'Private: row trigger on axme.intents; an intent became due, wake the delivery worker at commit.';

CREATE TABLE axme.delivery_attempts (
    intent_id        uuid NOT NULL,
    attempt          integer NOT NULL,
    agent_id         bigint NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      double precision NOT NULL,
    http_status      integer,
    error_class      text,
    error            text,
    response_excerpt text,
    next_attempt_at  timestamptz,
    PRIMARY KEY (intent_id, attempt)
);
CREATE INDEX delivery_attempts_started_idx ON axme.delivery_attempts (started_at);
COMMENT ON TABLE axme.delivery_attempts IS
    'One row per http delivery attempt: intent_id, attempt (the intent''s attempt counter), '
    'started_at, duration_ms (milliseconds), http_status (NULL when no response), error_class '
    '(NULL on success; dns | connect | tls | timeout | network | http | redirect | ssrf_blocked | '
    'invalid_url), error text, response_excerpt (first 1024 bytes of the body), next_attempt_at '
    '(when a retry is due; NULL when none follows).';
SELECT pg_catalog.pg_extension_config_dump('axme.delivery_attempts', '');

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

-- Sends, replays, retries and mode changes make an intent due: wake the worker at commit.
CREATE TRIGGER intents_http_wake AFTER INSERT OR UPDATE OF due_at ON axme.intents
    FOR EACH ROW WHEN (NEW.status = 'SUBMITTED' AND NEW.due_at IS NOT NULL)
    EXECUTE FUNCTION axme._http_wake_trigger();

CREATE FUNCTION axme._http_claim(max_total integer, busy_agents bigint[], busy_counts integer[])
RETURNS TABLE (intent_id uuid, attempt integer, agent_id bigint, url text, body text,
               secrets text[], headers text[], timeout_ms integer, ca_file text,
               client_cert_file text, client_key_file text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    probe_agents bigint[] := '{}';
    rated_agents bigint[] := '{}';
    rated_tokens double precision[] := '{}';
BEGIN
    PERFORM axme._disable_roleless('http');   -- an agent whose db_role is gone: disabled
    -- webhook bodies carry created_at in UTC whatever the server's TimeZone (axme.render_request
    -- renders them the same way); local to the worker's claim transaction
    PERFORM pg_catalog.set_config('TimeZone', 'UTC', true);
    -- breakers whose cool-down has run out go half-open (one probe each).  axme.agents is named
    -- (so locked) first, as everywhere: DROP EXTENSION locks it before axme.endpoint_state.
    IF EXISTS (SELECT FROM axme.agents ag JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
               WHERE es.breaker = 'open' AND es.open_until <= now()) THEN
        PERFORM axme._breaker_half_open();
    END IF;
    FOR r IN
        WITH a0 AS (
            SELECT ag.agent_id, ag.endpoint_url, ag.options,
                   coalesce((ag.options->>'timeout_ms')::integer, 15000) AS tmo,
                   coalesce((ag.options->>'max_in_flight')::integer, 16) AS mif,
                   (ag.options->>'rate_limit_per_second')::double precision AS rate,
                   es.breaker, es.probe_at, es.conc_limit, es.tokens, es.tokens_at,
                   coalesce(b.n, 0) AS busy
            FROM axme.agents ag
            LEFT JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
            LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
                       GROUP BY x.id) b ON b.id = ag.agent_id
            WHERE ag.delivery_mode = 'http' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
              AND es.breaker IS DISTINCT FROM 'open'
        ), a1 AS (
            SELECT a0.*,
                   CASE WHEN a0.rate IS NULL THEN NULL
                        ELSE least(greatest(1, a0.rate * 0.1),
                                   coalesce(a0.tokens + a0.rate * extract(epoch FROM now() - a0.tokens_at),
                                            greatest(1, a0.rate * 0.1))) END AS tok
            FROM a0
        ), a AS (
            SELECT a1.agent_id, a1.endpoint_url, a1.options, a1.tmo, a1.rate, a1.tok,
                   a1.breaker = 'half_open' AS probing,
                   ARRAY(SELECT s.secret FROM axme.agent_secrets s
                         WHERE s.agent_id = a1.agent_id AND (s.expires_at IS NULL OR s.expires_at > now())
                         ORDER BY s.created_at DESC) AS secrets,
                   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(a1.options->'headers') h) AS headers,
                   greatest(0, least(
                       CASE WHEN a1.breaker = 'half_open' THEN
                                CASE WHEN a1.probe_at IS NULL
                                          OR a1.probe_at < now() - (a1.tmo + 60000) * interval '1 millisecond'
                                     THEN 1 ELSE 0 END
                            ELSE least(a1.mif, coalesce(floor(a1.conc_limit)::integer, a1.mif)) END - a1.busy,
                       coalesce(floor(a1.tok)::integer, a1.mif))) AS free,
                   a1.busy = 0 AS idle
            FROM a1
        ), c AS (
            SELECT ci.intent_id, a.tmo,
                   coalesce(ci.deadline_at <= now(), false) AS timed_out,
                   ci.status <> 'SUBMITTED' AND ci.attempt - ci.attempt_base >= ci.max_delivery_attempts AS exhausted,
                   row_number() OVER (PARTITION BY a.agent_id ORDER BY ci.priority DESC, ci.due_at) AS rn, a.idle
            FROM a, LATERAL (
                SELECT i.intent_id, i.deadline_at, i.status, i.attempt, i.attempt_base,
                       i.max_delivery_attempts, i.due_at, i.priority
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= now()
                ORDER BY i.priority DESC, i.due_at
                LIMIT greatest(least(a.free, max_total), CASE WHEN a.idle THEN 1 ELSE 0 END)
                FOR UPDATE SKIP LOCKED) ci
            WHERE a.free > 0
            -- every idle agent's first intent first, then round-robin
            ORDER BY rn, NOT a.idle
            LIMIT greatest(max_total, 0) + (SELECT count(*) FROM a WHERE a.idle AND a.free > 0)
        ), u AS (
            UPDATE axme.intents i SET
                status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED'
                              ELSE 'DELIVERED' END,
                attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN now() END,
                error = CASE WHEN c.exhausted AND NOT c.timed_out
                             THEN jsonb_build_object('reason', 'lease_expired',
                                      'message', 'the lease of the last allowed attempt ran out '
                                                 '(the worker stopped with the request in flight)')
                             ELSE i.error END,
                lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL
                                   ELSE now() + (c.tmo + 30000) * interval '1 millisecond' END,
                due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL
                              ELSE now() + (c.tmo + 30000) * interval '1 millisecond' END,
                updated_at = now(),
                event_seq = i.event_seq + 1
            FROM c
            WHERE i.intent_id = c.intent_id
            RETURNING i.*
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq,
                   CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                 WHEN 'FAILED' THEN 'intent.dead_lettered'
                                 ELSE 'intent.timed_out' END,
                   u.status, axme._caller(),   -- sec: the caller, not the definer
                   CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until, 'via', 'http')
                                 WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                       'error', u.error)
                                 ELSE jsonb_build_object('deadline_at', u.deadline_at) END
            FROM u
        )
        SELECT u.*, a.endpoint_url, a.options, a.tmo, a.secrets AS agent_secrets, a.headers AS agent_headers,
               a.probing, a.rate, a.tok
        FROM u JOIN a ON a.agent_id = u.agent_id
    LOOP
        IF r.status <> 'DELIVERED' THEN
            PERFORM axme._wake_waiters(r.intent_id);
            CONTINUE;
        END IF;
        IF r.probing THEN
            probe_agents := probe_agents || r.agent_id;
        END IF;
        IF r.rate IS NOT NULL THEN
            rated_agents := rated_agents || r.agent_id;
            rated_tokens := rated_tokens || r.tok;
        END IF;
        intent_id := r.intent_id;
        attempt := r.attempt;
        agent_id := r.agent_id;
        url := r.endpoint_url;
        body := jsonb_build_object(
            'intent_id', r.intent_id, 'intent_type', r.intent_type, 'from_agent', r.from_agent,
            'to_agent', r.to_agent, 'correlation_id', r.correlation_id, 'payload', r.payload,
            'created_at', r.created_at, 'attempt', r.attempt)::text;
        secrets := r.agent_secrets;
        headers := r.agent_headers;
        IF r.traceparent IS NOT NULL THEN   -- W3C Trace Context, on every attempt
            headers := headers || ('traceparent: ' || r.traceparent);
            IF r.tracestate IS NOT NULL THEN
                headers := headers || ('tracestate: ' || r.tracestate);
            END IF;
        END IF;
        timeout_ms := r.tmo;
        ca_file := r.options->>'ca_file';
        client_cert_file := r.options->>'client_cert_file';
        client_key_file := r.options->>'client_key_file';
        RETURN NEXT;
    END LOOP;
    -- the probe is out: no other request until its outcome is recorded
    IF cardinality(probe_agents) > 0 THEN
        UPDATE axme.endpoint_state es SET probe_at = now() WHERE es.agent_id = ANY (probe_agents);
    END IF;
    -- spend the tokens of rate-limited agents
    IF cardinality(rated_agents) > 0 THEN
        INSERT INTO axme.endpoint_state AS es (agent_id, tokens, tokens_at)
        SELECT x.id, min(x.tok) - count(*), now()
        FROM unnest(rated_agents, rated_tokens) AS x(id, tok) GROUP BY x.id
        ON CONFLICT ON CONSTRAINT endpoint_state_pkey DO UPDATE SET tokens = excluded.tokens, tokens_at = excluded.tokens_at;
    END IF;
END $$;
COMMENT ON FUNCTION axme._http_claim(integer, bigint[], integer[]) IS
    'Private (delivery worker): claim due intents of http agents within the worker''s and each agent''s '
    'limits (max_in_flight, slow start, breaker, rate limit, paused / disabled agents) and return '
    'what to send. Moves half-open breakers and spends rate-limit tokens.';

-- When the worker should look again: the earliest moment an http agent can be handed
-- something: its first due intent, but not before its breaker's cool-down ends or its token
-- bucket refills; agents at their concurrency limit or with a probe out are woken by completions.
CREATE OR REPLACE FUNCTION axme._http_next_due(busy_agents bigint[], busy_counts integer[]) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    SELECT min(CASE
                 WHEN es.breaker = 'open' THEN greatest(d.due_at, es.open_until)
                 WHEN es.breaker = 'half_open' AND es.probe_at IS NOT NULL THEN
                     greatest(d.due_at, es.probe_at + (coalesce((ag.options->>'timeout_ms')::integer, 15000) + 60000)
                                                      * interval '1 millisecond')
                 WHEN es.breaker = 'half_open' AND coalesce(b.n, 0) > 0 THEN NULL
                 WHEN coalesce(b.n, 0) >= least(coalesce((ag.options->>'max_in_flight')::integer, 16),
                                                coalesce(floor(es.conc_limit)::integer, 2147483647)) THEN NULL
                 WHEN ag.options ? 'rate_limit_per_second' AND es.tokens_at IS NOT NULL THEN
                     greatest(d.due_at,
                              es.tokens_at + (least(greatest(1, (ag.options->>'rate_limit_per_second')::float8 * 0.1),
                                                    greatest(1, (ag.options->>'rate_limit_per_second')::float8 * 0.02))
                                              - es.tokens)
                                             / (ag.options->>'rate_limit_per_second')::float8 * interval '1 second')
                 ELSE d.due_at END)
    FROM axme.agents ag
    LEFT JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
    LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
               GROUP BY x.id) b ON b.id = ag.agent_id
    CROSS JOIN LATERAL (SELECT axme._agent_next_due(ag.agent_id, NULL) AS due_at) d
    WHERE ag.delivery_mode = 'http' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
      AND d.due_at IS NOT NULL
      AND coalesce((ag.options->>'max_in_flight')::integer, 16) > coalesce(b.n, 0));
END $$;
COMMENT ON FUNCTION axme._http_next_due(bigint[], integer[]) IS
    'Private (delivery worker): when an http agent can next be handed something (NULL: nothing due).';

-- Record one finished attempt: the attempt row, and the intent's next state.  The outcome only
-- moves the intent if it is still the attempt handed out (nobody resolved or re-claimed it since).
-- error_class NULL = a 2xx; response is the body when it is valid JSON.  Retry decisions:
-- dns, connect, tls, timeout, network, 408, 425, 429 and 5xx retry; 3xx dead-letters (redirect),
-- ssrf_blocked dead-letters (ssrf_blocked), other 4xx and invalid_url dead-letter (non_retryable).
CREATE FUNCTION axme._http_record(p_intent_id uuid, p_attempt integer, p_agent_id bigint,
                                  p_started_at timestamptz, p_duration_ms double precision,
                                  p_http_status integer, p_error_class text, p_error text,
                                  p_excerpt text, p_response text, p_retry_after_ms bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    completion text;
    resp jsonb;
    err jsonb;
    next_at timestamptz;
BEGIN
    SELECT * INTO i FROM axme.intents WHERE intent_id = p_intent_id FOR UPDATE;
    -- (the receiver may have called ack or progress while handling the request)
    IF FOUND AND i.attempt = p_attempt AND i.status IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS')
       AND i.lease_until IS NOT NULL THEN
        IF p_error_class IS NULL THEN
            resp := p_response::jsonb;
            IF jsonb_typeof(resp) = 'object' AND resp->>'status' = 'COMPLETED' THEN
                i.result := resp->'result';
                PERFORM axme._transition(i, 'COMPLETED', 'intent.completed',
                    jsonb_build_object('attempt', i.attempt, 'http_status', p_http_status));
            ELSIF jsonb_typeof(resp) = 'object' AND resp->>'status' = 'FAILED' THEN
                i.error := resp->'error';
                PERFORM axme._transition(i, 'FAILED', 'intent.failed',
                    jsonb_build_object('attempt', i.attempt, 'http_status', p_http_status, 'error', i.error));
            ELSE
                SELECT a.options->>'completion' INTO completion FROM axme.agents a WHERE a.agent_id = i.agent_id;
                IF completion = 'explicit' THEN
                    -- Delivered; the receiver reports the result with complete/fail.  The lease
                    -- ends, so it is not sent again; only its deadline (if any) stays due.
                    -- due_at = deadline_at: the worker's claim times it out then.
                    UPDATE axme.intents SET lease_until = NULL, due_at = i.deadline_at, updated_at = now()
                    WHERE intent_id = i.intent_id;
                ELSE
                    i.result := resp;
                    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed',
                        jsonb_build_object('attempt', i.attempt, 'http_status', p_http_status));
                END IF;
            END IF;
        ELSE
            err := jsonb_build_object('class', p_error_class, 'http_status', p_http_status,
                                      'message', p_error, 'attempt', i.attempt);
            IF p_error_class = 'redirect' THEN
                PERFORM axme._dead_letter(i, 'redirect', err);
            ELSIF p_error_class = 'ssrf_blocked' THEN
                PERFORM axme._dead_letter(i, 'ssrf_blocked', err);
            ELSIF p_error_class = 'invalid_url'
                  OR (p_error_class = 'http' AND p_http_status BETWEEN 400 AND 499
                      AND p_http_status NOT IN (408, 425, 429)) THEN
                PERFORM axme._dead_letter(i, 'non_retryable', err);
            ELSE
                i := axme._retry_or_dead_letter(i, err,
                        CASE WHEN p_http_status IN (429, 503) THEN p_retry_after_ms END);
                IF i.status = 'SUBMITTED' THEN
                    next_at := i.due_at;
                END IF;
            END IF;
        END IF;
    END IF;
    INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms,
        http_status, error_class, error, response_excerpt, next_attempt_at)
    VALUES (p_intent_id, p_attempt, p_agent_id, p_started_at, p_duration_ms, p_http_status,
        p_error_class, p_error, p_excerpt, next_at)
    ON CONFLICT DO NOTHING;
END $$;

-- Record a batch of finished attempts, then feed the outcomes to each endpoint's
-- breaker, slow start and health (axme._endpoint_observe).  Otherwise as in 0.2.0.
CREATE OR REPLACE FUNCTION axme._http_record_batch(p_ids uuid[], p_attempts integer[], p_agents bigint[],
                                        p_started timestamptz[], p_durations double precision[],
                                        p_statuses integer[], p_classes text[], p_errors text[],
                                        p_excerpts text[], p_responses text[], p_retry_after bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    done uuid[];
    r record;
BEGIN
    -- The worker passes the outcomes sorted by intent_id, so rows are usually locked in that
    -- order (a deadlock with another session is still possible: the worker then retries).
    WITH o AS (
        SELECT x.id, x.att, x.agent, x.started, x.dur, x.st, x.excerpt, x.resp::jsonb AS body
        FROM unnest(p_ids, p_attempts, p_agents, p_started, p_durations, p_statuses, p_classes,
                    p_excerpts, p_responses)
             AS x(id, att, agent, started, dur, st, cls, excerpt, resp)
        WHERE x.cls IS NULL
    ), u AS (
        UPDATE axme.intents i SET
            status = 'COMPLETED', result = o.body, due_at = NULL, lease_until = NULL,
            updated_at = now(), event_seq = i.event_seq + 1
        FROM o, axme.agents a
        WHERE i.intent_id = o.id AND i.attempt = o.att AND i.status IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS')
          AND i.lease_until IS NOT NULL
          AND a.agent_id = i.agent_id AND coalesce(a.options->>'completion', 'on_2xx') <> 'explicit'
          AND NOT coalesce(jsonb_typeof(o.body) = 'object' AND o.body->>'status' IN ('COMPLETED', 'FAILED'), false)
        RETURNING i.intent_id, i.event_seq, i.attempt, o.agent, o.started, o.dur, o.st, o.excerpt
    ), e AS (
        INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
        SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', axme._caller(),   -- sec
               jsonb_build_object('attempt', u.attempt, 'http_status', u.st)
        FROM u
    ), da AS (
        INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms,
                                            http_status, response_excerpt)
        SELECT u.intent_id, u.attempt, u.agent, u.started, u.dur, u.st, u.excerpt FROM u
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(u.intent_id) INTO done FROM u CROSS JOIN LATERAL axme._wake_waiters(u.intent_id) w;

    FOR r IN
        SELECT x.* FROM unnest(p_ids, p_attempts, p_agents, p_started, p_durations, p_statuses,
                               p_classes, p_errors, p_excerpts, p_responses, p_retry_after)
                        AS x(id, att, agent, started, dur, st, cls, err, excerpt, resp, ra)
        WHERE done IS NULL OR NOT (x.id = ANY (done))
    LOOP
        PERFORM axme._http_record(r.id, r.att, r.agent, r.started, r.dur, r.st, r.cls, r.err,
                                  r.excerpt, r.resp, r.ra);
    END LOOP;
    PERFORM axme._endpoint_observe(p_ids, p_attempts, p_agents, p_started, p_durations, p_statuses,
                                   p_classes, p_errors);
END $$;
COMMENT ON FUNCTION axme._http_record_batch(uuid[], integer[], bigint[], timestamptz[], double precision[],
                                            integer[], text[], text[], text[], text[], bigint[]) IS
    'Private (delivery worker): record finished attempts and move their intents on, then update the '
    'endpoints'' breaker, slow start and health (axme._endpoint_observe).';

-- The request as the worker sends it (axme.render_request) and a test event (axme.ping_agent).
CREATE FUNCTION axme._webhook_signature(msg_id text, ts bigint, body text, secrets text[]) RETURNS text
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_webhook_signature';
COMMENT ON FUNCTION axme._webhook_signature(text, bigint, text, text[]) IS
    'Private: the webhook-signature header value for msg_id, Unix time ts and body with the given '
    'secrets (the worker''s own signing, src/sign.c); NULL without a secret.';

CREATE FUNCTION axme._user_agent() RETURNS text
    LANGUAGE c IMMUTABLE AS 'MODULE_PATHNAME', 'axme_user_agent';
COMMENT ON FUNCTION axme._user_agent() IS
    'Private: the user-agent header the http worker sends (axme/<library version>).';

CREATE FUNCTION axme._send_reserved(intent jsonb) RETURNS uuid
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_send_reserved';
COMMENT ON FUNCTION axme._send_reserved(jsonb) IS
    'Private: send_intent for one of axme''s own intent types (axme.ping.v1), which send_intent '
    'refuses from users; the caller checks who may.';

-- The webhook body of an intent's attempt, byte for byte as axme._http_claim builds it: its
-- created_at in UTC (as the claim formats it), whatever the session's TimeZone.
CREATE FUNCTION axme._webhook_body(i axme.intents, attempt integer) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    session_tz text := current_setting('TimeZone');
    body text;
BEGIN
    PERFORM set_config('TimeZone', 'UTC', true);
    body := jsonb_build_object(
        'intent_id', i.intent_id, 'intent_type', i.intent_type, 'from_agent', i.from_agent,
        'to_agent', i.to_agent, 'correlation_id', i.correlation_id, 'payload', i.payload,
        'created_at', i.created_at, 'attempt', attempt)::text;
    PERFORM set_config('TimeZone', session_tz, true);
    RETURN body;
END $$;
COMMENT ON FUNCTION axme._webhook_body(axme.intents, integer) IS
    'Private: the body the http worker posts for attempt of the intent (as axme._http_claim builds it).';

CREATE FUNCTION axme.render_request(intent_id uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    a axme.agents;
    v_attempt integer;
    v_body text;
    v_ts bigint := floor(extract(epoch FROM now()))::bigint;
    v_admin boolean := axme._is_admin();
    v_secrets text[];
    v_sig text;
    hdrs jsonb;
BEGIN
    PERFORM axme._check_intent_reader(intent_id);   -- sec: 22023 NULL, P0002 unknown, 42501 not a reader
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = render_request.intent_id;
    SELECT * INTO a FROM axme.agents g WHERE g.agent_id = i.agent_id;
    IF a.delivery_mode IS DISTINCT FROM 'http' THEN
        RAISE EXCEPTION 'intent % goes to agent "%" of delivery mode %, which receives no http requests',
                        i.intent_id, i.to_agent, coalesce(a.delivery_mode, 'unknown')
            USING ERRCODE = '55000', HINT = 'render_request renders the requests of http agents.';
    END IF;
    -- the next attempt of an intent waiting to be sent, else the last one (in flight or done)
    v_attempt := CASE WHEN i.status = 'SUBMITTED' THEN i.attempt + 1 ELSE greatest(i.attempt, 1) END;
    v_body := axme._webhook_body(i, v_attempt);
    hdrs := jsonb_build_object(
        'host', regexp_replace(substring(a.endpoint_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'), '^.*@', ''),
        'accept', '*/*',
        'content-type', 'application/json',
        'content-length', octet_length(v_body)::text,
        'user-agent', axme._user_agent(),
        'webhook-id', i.intent_id::text,
        'webhook-timestamp', v_ts::text)
        || CASE WHEN i.traceparent IS NULL THEN '{}'::jsonb
                ELSE jsonb_strip_nulls(jsonb_build_object('traceparent', i.traceparent, 'tracestate', i.tracestate)) END;
    v_secrets := ARRAY(SELECT s.secret FROM axme.agent_secrets s
                       WHERE s.agent_id = a.agent_id AND (s.expires_at IS NULL OR s.expires_at > now())
                       ORDER BY s.created_at DESC);
    -- sec: a signature is a replayable credential (valid for minutes): admins only
    IF v_admin AND cardinality(v_secrets) > 0 THEN
        v_sig := axme._webhook_signature(i.intent_id::text, v_ts, v_body, v_secrets);
        IF v_sig IS NOT NULL THEN
            hdrs := hdrs || jsonb_build_object('webhook-signature', v_sig);
        END IF;
    END IF;
    -- the agent's own headers (option headers); their values only for admins, who may read the
    -- options (an Authorization header is a credential)
    hdrs := hdrs || coalesce((SELECT jsonb_object_agg(h.key, CASE WHEN v_admin THEN h.value ELSE '(hidden)' END)
                              FROM jsonb_each_text(a.options->'headers') h), '{}');
    RETURN jsonb_build_object(
        'method', 'POST', 'url', a.endpoint_url, 'headers', hdrs, 'body', v_body, 'attempt', v_attempt,
        'signature', CASE WHEN cardinality(v_secrets) = 0 THEN 'none'
                          WHEN v_sig IS NOT NULL THEN 'included'
                          ELSE 'hidden' END);
END $$;
COMMENT ON FUNCTION axme.render_request(uuid) IS
    'The http request the worker sends for an intent: {method, url, headers, body, attempt, '
    'signature}. attempt: the next attempt of a SUBMITTED intent, else the last one; body: the exact '
    'bytes posted (created_at in UTC); headers: every header sent (host, accept, '
    'content-type, content-length, user-agent, webhook-id, webhook-timestamp = now(), '
    'webhook-signature, traceparent and tracestate when the intent has them, the agent''s option '
    'headers). The signature (a credential replayable for '
    'minutes) and option header values are shown to admins only: signature is included, hidden '
    '(not an admin) or none (the agent has no secret); secrets never. The intent''s readers only '
    '(sender, receiver, admins). Errors: 22023 NULL, P0002 unknown intent, 42501 not a reader, '
    '55000 not an http agent''s intent.';

CREATE FUNCTION axme.ping_agent(agent text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents := axme._agent(agent, 'agent');
BEGIN
    PERFORM axme._check_receiver(a.agent_id, 'ping_agent');   -- sec: the endpoint's owner, admins
    IF a.delivery_mode <> 'http' THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which receives no http requests', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'ping_agent sends a test event to an http agent.';
    END IF;
    RETURN axme._send_reserved(jsonb_build_object(
        'intent_type', 'axme.ping.v1', 'to_agent', a.address, 'max_delivery_attempts', 1,
        'payload', jsonb_build_object('ping', true, 'sent_at', clock_timestamp())));
END $$;
COMMENT ON FUNCTION axme.ping_agent(text) IS
    'Queue a test event to an http agent: an ordinary intent of the reserved type axme.ping.v1 '
    '(types beginning with axme. are refused from send_intent) with payload {"ping": true, '
    '"sent_at"}, signed and posted like any other, one attempt (max_delivery_attempts 1, no '
    'retries). Returns its intent_id: wait_for it, read its attempts in axme.attempts. A paused '
    'or disabled agent gets it when resumed; with completion explicit it stays DELIVERED after its '
    '2xx. The agent''s receiver role and admins only. Errors: 22023 invalid address, P0002 agent '
    'not registered, 42501 not its receiver, 55000 not an http agent.';
