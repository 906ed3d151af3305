/* axme 0.1.0 -> 0.2.0: the http delivery mode.
 *
 * A background worker per database (src/worker.c) claims due intents of http agents in a short
 * transaction (axme._http_claim), POSTs them signed with libcurl outside any transaction, and
 * records the outcomes in a second short transaction (axme._http_record).  Retry and dead-letter
 * decisions stay in SQL, in axme._retry_or_dead_letter and axme._http_record.
 * Every attempt is one row of axme.delivery_attempts.  Secrets live in axme.agent_secrets, which
 * nobody but superusers can read.
 */
\echo Use "ALTER EXTENSION axme UPDATE TO '0.2.0'" to load this file. \quit

-------------------------------------------------------------------------------------------------
-- C helpers
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme._wake_http() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wake_http';
COMMENT ON FUNCTION axme._wake_http() IS
    'Private: wake this database''s http worker when the current transaction commits (or have the '
    'launcher start one).';

CREATE FUNCTION axme._http_wake_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'axme_http_wake_trigger';
COMMENT ON FUNCTION axme._http_wake_trigger() IS
    'Private: row trigger on axme.intents; an intent became due, wake the http worker at commit.';

CREATE FUNCTION axme._agents_changed() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_agents_changed';
COMMENT ON FUNCTION axme._agents_changed() IS
    'Private: agents were registered or changed mode; at commit, backends forget which agents are '
    'http agents (the wake-up trigger caches it).';

CREATE FUNCTION axme._random_secret() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_random_secret';
COMMENT ON FUNCTION axme._random_secret() IS
    'Private: a new signing secret, whsec_ followed by the base64 of 32 strong random bytes.';

-------------------------------------------------------------------------------------------------
-- Tables
-------------------------------------------------------------------------------------------------

CREATE TABLE axme.agent_secrets (
    agent_id   bigint NOT NULL REFERENCES axme.agents ON DELETE CASCADE,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (agent_id, secret)
);
REVOKE ALL ON axme.agent_secrets FROM PUBLIC;
COMMENT ON TABLE axme.agent_secrets IS
    'Signing secrets of http agents (whsec_ + base64). Every unexpired secret signs each request '
    '(one webhook-signature entry per secret). Readable only by superusers; use axme.agent_secret().';

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

SELECT pg_catalog.pg_extension_config_dump('axme.agent_secrets', '');

-- http agents registered under 0.1.0 get a secret now: no request goes out unsigned.
INSERT INTO axme.agent_secrets (agent_id, secret)
SELECT a.agent_id, axme._random_secret() FROM axme.agents a WHERE a.delivery_mode = 'http';
SELECT pg_catalog.pg_extension_config_dump('axme.delivery_attempts', '');

-- Sends, replays, retries and mode changes make an intent due: wake the worker at commit.
CREATE TRIGGER intents_http_wake AFTER INSERT OR UPDATE OF due_at ON axme.intents
    FOR EACH ROW WHEN (NEW.status = 'SUBMITTED' AND NEW.due_at IS NOT NULL)
    EXECUTE FUNCTION axme._http_wake_trigger();

-------------------------------------------------------------------------------------------------
-- Agent options
-------------------------------------------------------------------------------------------------

-- Validate agent options.  Raises 22023 for unknown keys or bad values.
CREATE OR REPLACE FUNCTION axme._check_agent_options(mode text, options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    extra jsonb;
    h record;
    s text;
BEGIN
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'argument "options" must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    extra := options - ARRAY['retry', 'secret', 'timeout_ms', 'max_in_flight', 'completion',
                             'headers', 'ca_file'];
    IF extra <> '{}' THEN
        RAISE EXCEPTION 'unknown agent option(s): %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
            USING ERRCODE = '22023',
                  HINT = 'Known options: retry, secret, timeout_ms, max_in_flight, completion, headers, ca_file.';
    END IF;
    IF options ? 'retry' THEN
        IF jsonb_typeof(options->'retry') <> 'object' THEN
            RAISE EXCEPTION 'option "retry" must be a JSON object' USING ERRCODE = '22023';
        END IF;
        extra := (options->'retry') - ARRAY['max_attempts', 'base_delay_ms', 'max_delay_ms'];
        IF extra <> '{}' THEN
            RAISE EXCEPTION 'unknown key(s) in option "retry": %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
                USING ERRCODE = '22023', HINT = 'Known keys: max_attempts, base_delay_ms, max_delay_ms.';
        END IF;
        PERFORM axme._jsonb_int(options->'retry'->'max_attempts', 'retry.max_attempts', 1, 1000);
        PERFORM axme._jsonb_int(options->'retry'->'base_delay_ms', 'retry.base_delay_ms', 1, 86400000);
        PERFORM axme._jsonb_int(options->'retry'->'max_delay_ms', 'retry.max_delay_ms', 1, 604800000);
        IF (options->'retry'->>'base_delay_ms')::bigint >
           coalesce((options->'retry'->>'max_delay_ms')::bigint, CASE WHEN mode = 'http' THEN 36000000 ELSE 3600000 END) THEN
            RAISE EXCEPTION 'option "retry.base_delay_ms" (%) is larger than "retry.max_delay_ms" (%)',
                            options->'retry'->>'base_delay_ms',
                            coalesce(options->'retry'->>'max_delay_ms', CASE WHEN mode = 'http' THEN '36000000' ELSE '3600000' END)
                USING ERRCODE = '22023';
        END IF;
    END IF;
    PERFORM axme._jsonb_int(options->'timeout_ms', 'timeout_ms', 100, 600000);
    PERFORM axme._jsonb_int(options->'max_in_flight', 'max_in_flight', 1, 10000);
    IF options ? 'completion' AND (jsonb_typeof(options->'completion') <> 'string'
                                   OR options->>'completion' NOT IN ('on_2xx', 'explicit')) THEN
        RAISE EXCEPTION 'option "completion" must be "on_2xx" or "explicit", got %', options->'completion'
            USING ERRCODE = '22023';
    END IF;
    IF options ? 'secret' THEN
        s := options->>'secret';
        IF jsonb_typeof(options->'secret') <> 'string'
           OR s !~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
           OR (length(s) - 6) % 4 <> 0
           OR length(decode(substr(s, 7), 'base64')) NOT BETWEEN 24 AND 64 THEN
            RAISE EXCEPTION 'option "secret" must be whsec_ followed by the base64 of 24 to 64 bytes'
                USING ERRCODE = '22023', HINT = 'Leave it out and axme generates one.';
        END IF;
    END IF;
    IF options ? 'ca_file' AND (jsonb_typeof(options->'ca_file') <> 'string'
                                OR left(options->>'ca_file', 1) <> '/') THEN
        RAISE EXCEPTION 'option "ca_file" must be an absolute file path' USING ERRCODE = '22023';
    END IF;
    IF options ? 'headers' THEN
        IF jsonb_typeof(options->'headers') <> 'object' THEN
            RAISE EXCEPTION 'option "headers" must be a JSON object of strings' USING ERRCODE = '22023';
        END IF;
        FOR h IN SELECT key, value FROM jsonb_each(options->'headers') LOOP
            IF h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' OR length(h.key) > 256 THEN
                RAISE EXCEPTION 'invalid header name "%" in option "headers"', left(h.key, 300)
                    USING ERRCODE = '22023';
            END IF;
            IF lower(h.key) IN ('webhook-id', 'webhook-timestamp', 'webhook-signature', 'content-type',
                                'content-length', 'user-agent', 'host', 'transfer-encoding',
                                'connection', 'expect', 'te', 'upgrade', 'trailer',
                                'proxy-authorization', 'keep-alive') THEN
                RAISE EXCEPTION 'header "%" in option "headers" is reserved', h.key
                    USING ERRCODE = '22023', HINT = 'axme sets it itself.';
            END IF;
            IF jsonb_typeof(h.value) <> 'string' OR h.value #>> '{}' ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f]'
               OR length(h.value #>> '{}') > 8192 THEN
                RAISE EXCEPTION 'header "%" in option "headers" must be a string of at most 8192 '
                                'characters without control characters', h.key
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION axme.register_agent(address text, delivery_mode text DEFAULT 'poll',
                                               endpoint_url text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    merged jsonb;
    old_mode text;
    new_secret text;
    v_agent_id bigint;
BEGIN
    PERFORM axme._check_address(address, 'address');
    IF delivery_mode IS NULL OR delivery_mode NOT IN ('stream', 'poll', 'http', 'inbox', 'internal') THEN
        RAISE EXCEPTION 'invalid delivery mode "%"', coalesce(delivery_mode, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use one of stream, poll, http, inbox, internal.';
    END IF;
    IF options IS NULL THEN
        RAISE EXCEPTION 'argument "options" must not be null' USING ERRCODE = '22023',
            HINT = 'Pass ''{}'' for no options.';
    END IF;
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'argument "options" must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    IF delivery_mode = 'http' THEN
        IF endpoint_url IS NULL OR length(endpoint_url) > 2048
           OR endpoint_url !~* '^https?://[^/?#[:space:]]+([/?#][^[:space:]]*)?$' THEN
            RAISE EXCEPTION 'invalid endpoint_url "%" for an http agent', coalesce(endpoint_url, 'NULL')
                USING ERRCODE = '22023', HINT = 'Use an http:// or https:// URL.';
        END IF;
    ELSIF endpoint_url IS NOT NULL THEN
        RAISE EXCEPTION 'endpoint_url is only for http agents' USING ERRCODE = '22023';
    END IF;
    -- The mode before, for the wake-ups below (no lock needed: a race only costs a wake-up).
    SELECT a.delivery_mode INTO old_mode FROM axme.agents a WHERE a.address = register_agent.address;
    -- The secret is kept apart from the options, which anyone reading axme.agents can see.
    IF jsonb_typeof(options->'secret') IS DISTINCT FROM 'null' THEN
        new_secret := options->>'secret';
    END IF;
    -- Merge inside the upsert, against the row as locked by it, so two concurrent registrations
    -- of one agent (the first ones included) merge one after the other; then check the result
    -- (an error undoes the upsert with the statement).
    INSERT INTO axme.agents AS a (address, delivery_mode, endpoint_url, options, registered_by)
    VALUES (address, delivery_mode, endpoint_url, axme._jsonb_merge('{}', options - 'secret'), current_user)
    ON CONFLICT ON CONSTRAINT agents_address_key DO UPDATE
        SET delivery_mode = excluded.delivery_mode, endpoint_url = excluded.endpoint_url,
            options = axme._jsonb_merge(a.options, register_agent.options - 'secret'), updated_at = now()
    RETURNING a.options, a.agent_id INTO merged, v_agent_id;
    PERFORM axme._check_agent_options(delivery_mode,
        CASE WHEN new_secret IS NULL THEN merged ELSE merged || jsonb_build_object('secret', options->'secret') END);
    IF new_secret IS NOT NULL THEN
        DELETE FROM axme.agent_secrets s WHERE s.agent_id = v_agent_id;
        INSERT INTO axme.agent_secrets (agent_id, secret) VALUES (v_agent_id, new_secret);
    ELSIF delivery_mode = 'http' AND NOT EXISTS (SELECT FROM axme.agent_secrets s WHERE s.agent_id = v_agent_id) THEN
        INSERT INTO axme.agent_secrets (agent_id, secret) VALUES (v_agent_id, axme._random_secret());
    END IF;
    IF old_mode IS DISTINCT FROM delivery_mode THEN
        PERFORM axme._agents_changed();
    END IF;
    -- Pending intents follow the new mode; an http agent's are picked up by the worker now.
    IF delivery_mode = 'http' THEN
        PERFORM axme._wake_http();
    ELSIF delivery_mode = 'stream' AND old_mode IS DISTINCT FROM 'stream' THEN
        PERFORM axme._notify_agent(v_agent_id, i.intent_id)
        FROM axme.intents i WHERE i.agent_id = v_agent_id AND i.status = 'SUBMITTED' LIMIT 1;
    END IF;
END $$;
COMMENT ON FUNCTION axme.register_agent(text, text, text, jsonb) IS
    'Register or update an agent (upsert). address: agent://org/workspace/name; delivery_mode: '
    'stream | poll | http | inbox | internal; endpoint_url: http(s) URL, http agents only; options: '
    'merged into the stored ones (nested objects merge, null removes a key): retry {max_attempts, '
    'base_delay_ms, max_delay_ms}, and for http: secret (whsec_..., generated when absent, kept when '
    're-registering), timeout_ms (100..600000, default 15000), max_in_flight (1..10000, default 16), '
    'completion (on_2xx | explicit), headers {name: value}, ca_file (absolute path). Changing the '
    'mode moves pending intents to the new mode. Errors: 22023 invalid address, mode, URL or option.';

CREATE FUNCTION axme.agent_secret(agent text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents := axme._agent(agent, 'agent');
    s text;
BEGIN
    SELECT secret INTO s FROM axme.agent_secrets
    WHERE agent_id = a.agent_id AND (expires_at IS NULL OR expires_at > now())
    ORDER BY created_at DESC LIMIT 1;
    RETURN s;
END $$;
COMMENT ON FUNCTION axme.agent_secret(text) IS
    'The current signing secret (whsec_...) of an agent, NULL when it has none. Superusers only '
    '(reads axme.agent_secrets). Errors: 22023 invalid address, P0002 not registered, 42501 not allowed.';

-------------------------------------------------------------------------------------------------
-- Retries: Retry-After lower bound, clamped to max_delay_ms; http defaults modelled on Svix.
-------------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION axme._retry_or_dead_letter(i axme.intents, error jsonb, min_delay_ms bigint DEFAULT 0)
RETURNS axme.intents LANGUAGE plpgsql AS $$
DECLARE
    retry jsonb;
    mode text;
    delay_ms bigint;
    max_ms bigint;
BEGIN
    IF NOT axme._has_attempts_left(i) THEN
        RETURN axme._dead_letter(i, 'exhausted', error);
    END IF;
    SELECT a.options->'retry', a.delivery_mode INTO retry, mode FROM axme.agents a WHERE a.agent_id = i.agent_id;
    max_ms := coalesce((retry->>'max_delay_ms')::bigint, CASE WHEN mode = 'http' THEN 36000000 ELSE 3600000 END);
    delay_ms := axme._backoff_ms(
        coalesce((retry->>'base_delay_ms')::bigint, CASE WHEN mode = 'http' THEN 5000 ELSE 1000 END),
        max_ms, i.attempt - i.attempt_base);
    -- A receiver's Retry-After is honoured within [the computed delay, max_delay_ms].
    delay_ms := greatest(delay_ms, least(coalesce(min_delay_ms, 0), max_ms));
    i.error := error;
    i.lease_until := NULL;
    -- never due later than the deadline: the claim times it out then
    i.due_at := least(clock_timestamp() + delay_ms * interval '1 millisecond', i.deadline_at);
    RETURN axme._transition(i, 'SUBMITTED', 'intent.delivery_failed',
        jsonb_build_object('attempt', i.attempt, 'error', error, 'next_attempt_at', i.due_at));
END $$;

-------------------------------------------------------------------------------------------------
-- The worker's two transactions
-------------------------------------------------------------------------------------------------

-- Claim up to max_total due intents of http agents, per agent at most its free in-flight slots
-- (max_in_flight minus busy_counts for that agent), oldest due first, round-robin across agents.
-- An agent with nothing in flight may take one more beyond max_total (even at max_total = 0), so
-- hanging endpoints that fill the worker's axme.max_in_flight never starve the other agents.
-- Claimed intents go DELIVERED with a lease of timeout_ms + 30 s: if the worker dies, they are due
-- again when it runs out.  A candidate past its deadline times out; one whose last lease ran out
-- is dead-lettered (exhausted).  Returns what the worker needs to send each claimed intent.
CREATE FUNCTION axme._http_claim(max_total integer, busy_agents bigint[], busy_counts integer[])
RETURNS TABLE (intent_id uuid, attempt integer, agent_id bigint, url text, body text,
               secrets text[], headers text[], timeout_ms integer, ca_file text)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        WITH a AS (
            SELECT ag.agent_id, ag.endpoint_url, ag.options,
                   coalesce((ag.options->>'timeout_ms')::integer, 15000) AS tmo,
                   ARRAY(SELECT s.secret FROM axme.agent_secrets s
                         WHERE s.agent_id = ag.agent_id AND (s.expires_at IS NULL OR s.expires_at > now())
                         ORDER BY s.created_at DESC) AS secrets,
                   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(ag.options->'headers') h) AS headers,
                   greatest(0, coalesce((ag.options->>'max_in_flight')::integer, 16) - coalesce(b.n, 0)) AS free,
                   coalesce(b.n, 0) = 0 AS idle
            FROM axme.agents ag
            LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
                       GROUP BY x.id) b ON b.id = ag.agent_id
            WHERE ag.delivery_mode = 'http'
        ), c AS (
            SELECT ci.intent_id, a.tmo,
                   coalesce(ci.deadline_at <= now(), false) AS timed_out,
                   ci.status <> 'SUBMITTED' AND ci.attempt - ci.attempt_base >= ci.max_delivery_attempts AS exhausted,
                   row_number() OVER (PARTITION BY a.agent_id ORDER BY ci.due_at) AS rn, a.idle
            FROM a, LATERAL (
                SELECT i.intent_id, i.deadline_at, i.status, i.attempt, i.attempt_base,
                       i.max_delivery_attempts, i.due_at
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= now()
                ORDER BY i.due_at
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
                   u.status, current_user,
                   CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until, 'via', 'http')
                                 WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                       'error', u.error)
                                 ELSE jsonb_build_object('deadline_at', u.deadline_at) END
            FROM u
        )
        SELECT u.*, a.endpoint_url, a.options, a.tmo, a.secrets AS agent_secrets, a.headers AS agent_headers
        FROM u JOIN a ON a.agent_id = u.agent_id
    LOOP
        IF r.status <> 'DELIVERED' THEN
            PERFORM axme._wake_waiters(r.intent_id);
            CONTINUE;
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
        timeout_ms := r.tmo;
        ca_file := r.options->>'ca_file';
        RETURN NEXT;
    END LOOP;
END $$;

-- When the worker should look again: the earliest due_at of an http agent with a free slot.
CREATE FUNCTION axme._http_next_due(busy_agents bigint[], busy_counts integer[]) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(d.due_at)
    FROM axme.agents ag
    LEFT JOIN (SELECT x.id, sum(x.n)::integer AS n FROM unnest(busy_agents, busy_counts) AS x(id, n)
                       GROUP BY x.id) b ON b.id = ag.agent_id
    CROSS JOIN LATERAL (SELECT i.due_at FROM axme.intents i
                        WHERE i.agent_id = ag.agent_id AND i.due_at IS NOT NULL
                        ORDER BY i.due_at LIMIT 1) d
    WHERE ag.delivery_mode = 'http'
      AND coalesce((ag.options->>'max_in_flight')::integer, 16) > coalesce(b.n, 0)
$$;

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

-- Record a batch of finished attempts.  The common case, a 2xx that completes the intent
-- (completion on_2xx, no status body), is done set-based: one UPDATE, one INSERT of events, one of
-- attempt rows.  Everything else goes through axme._http_record one by one.
CREATE FUNCTION axme._http_record_batch(p_ids uuid[], p_attempts integer[], p_agents bigint[],
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
        SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', current_user,
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
END $$;

-------------------------------------------------------------------------------------------------
-- Replay many
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme.replay_dead_letters(agent text, since timestamptz DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents := axme._agent(agent, 'agent');
    n bigint := 0;
    r record;
BEGIN
    FOR r IN
        SELECT i.intent_id FROM axme.intents i
        WHERE i.agent_id = a.agent_id AND i.status = 'FAILED' AND i.dead_letter_reason IS NOT NULL
          AND (since IS NULL OR i.dead_lettered_at >= since)
        ORDER BY i.dead_lettered_at
    LOOP
        PERFORM axme.replay(r.intent_id);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme.replay_dead_letters(text, timestamptz) IS
    'Replay every dead letter of an agent (dead-lettered at or after since, when given) with a fresh '
    'attempt budget; they are delivered within the agent''s usual in-flight caps. Returns how many. '
    'Errors: 22023 invalid address, P0002 agent not registered.';

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM PUBLIC;

-- Have the launcher start this database's worker once this commits; agent ids may be new.
SELECT axme._wake_http(), axme._agents_changed();
