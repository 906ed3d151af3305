-- Endpoint resilience for http agents: circuit breaker, slow start after recovery, rate limits,
-- endpoint health (axme.endpoint_state, axme.endpoint_health).

-- Per-agent endpoint state of http agents: the circuit breaker, the slow-start limit, the token
-- bucket and what endpoint_health shows.  One small row per agent, written by the worker (claim
-- and record) and by enable_agent / replay_dead_letters; no row = closed, healthy, unlimited.
CREATE TABLE axme.endpoint_state (
    agent_id             bigint PRIMARY KEY REFERENCES axme.agents ON DELETE CASCADE,
    breaker              text NOT NULL DEFAULT 'closed' CHECK (breaker IN ('closed', 'open', 'half_open')),
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    reopen_count         integer NOT NULL DEFAULT 0,
    cooldown_ms          bigint,
    open_until           timestamptz,
    probe_at             timestamptz,
    conc_limit           double precision,
    ssthresh             double precision,
    halved_at            timestamptz,
    tokens               double precision,
    tokens_at            timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    last_error_class     text,
    last_http_status     integer
);
CREATE INDEX endpoint_state_open_idx ON axme.endpoint_state (open_until) WHERE breaker = 'open';
-- Dumped like every other table: a restored database keeps each endpoint's breaker and its
-- failing_since (which axme.disable_after counts from).
SELECT pg_catalog.pg_extension_config_dump('axme.endpoint_state', '');
COMMENT ON TABLE axme.endpoint_state IS
    'Private state of each http endpoint (one row per agent, created on first need): breaker '
    '(closed | open | half_open), consecutive_failures (distinct intents), failing_since (first '
    'failure with no success since), reopen_count and cooldown_ms / open_until (the current '
    'cool-down), probe_at (half-open probe handed out), conc_limit / ssthresh / halved_at (slow '
    'start; NULL = max_in_flight), tokens / tokens_at (rate limit bucket), last success, failure and error. '
    'Read it through axme.endpoint_health.';

-- Whether an attempt's outcome counts as a failure of the endpoint for its breaker: no answer
-- (dns, connect, tls, timeout, network) or a server error (408, 5xx).  4xx answers (the endpoint is
-- up), 429 (it asks us to slow down: halves concurrency instead) and local refusals do not.
CREATE FUNCTION axme._breaker_failure(error_class text, http_status integer) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT error_class IN ('dns', 'connect', 'tls', 'timeout', 'network')
        OR (error_class = 'http' AND (http_status = 408 OR http_status >= 500))
$$;
COMMENT ON FUNCTION axme._breaker_failure(text, integer) IS
    'Private: true when an attempt outcome (error_class, http_status) counts toward the breaker.';

-- Open breakers whose cool-down ran out go half-open; one alert each.  Called by the claim.
CREATE FUNCTION axme._breaker_half_open() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        UPDATE axme.endpoint_state es SET breaker = 'half_open', probe_at = NULL
        FROM axme.agents ag
        WHERE es.breaker = 'open' AND es.open_until <= now() AND ag.agent_id = es.agent_id
        RETURNING ag.address, es.consecutive_failures, es.cooldown_ms
    LOOP
        PERFORM axme._alert(r.address, 'breaker_half_open',
            jsonb_build_object('consecutive_failures', r.consecutive_failures, 'cooldown_ms', r.cooldown_ms));
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._breaker_half_open() IS
    'Private: move open breakers whose cool-down ended to half_open (alert breaker_half_open).';

-- Start the slow-start ramp of an http agent (concurrency 1, doubling per round trip up to
-- max_in_flight).  spread: also spread the due times of its intents due now over a short window
-- with jitter (at most 5 s, about 10 rounds of max_in_flight per second).
CREATE FUNCTION axme._ramp_start(p_agent_id bigint, spread boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    mif integer;
    n bigint;
    window_ms double precision;
BEGIN
    SELECT coalesce((a.options->>'max_in_flight')::integer, 16) INTO mif
    FROM axme.agents a WHERE a.agent_id = p_agent_id;
    -- intents first, then the endpoint_state row: the worker's claim locks in that order too
    IF spread THEN
        SELECT count(*) INTO n FROM axme.intents i
        WHERE i.agent_id = p_agent_id AND i.due_at <= now() AND i.status = 'SUBMITTED';
        window_ms := least(5000, greatest(0, n - mif) * 1000.0 / (mif * 10));
        IF window_ms > 0 THEN
            UPDATE axme.intents i SET due_at = now() + random() * window_ms * interval '1 millisecond'
            WHERE i.agent_id = p_agent_id AND i.due_at <= now() AND i.status = 'SUBMITTED';
        END IF;
    END IF;
    INSERT INTO axme.endpoint_state AS es (agent_id, conc_limit) VALUES (p_agent_id, 1)
    ON CONFLICT (agent_id) DO UPDATE SET conc_limit = 1, ssthresh = NULL;
END $$;
COMMENT ON FUNCTION axme._ramp_start(bigint, boolean) IS
    'Private: start the slow-start ramp of an http agent (concurrency limit 1); spread => also '
    'spread the due times of its backlog with jitter over up to 5 s.';

-- Feed a batch of attempt outcomes to the endpoints' state: breaker, slow start, health, 410 and
-- axme.disable_after.  Agents whose outcomes are all 2xx and whose state is plain cost one lookup.
CREATE FUNCTION axme._endpoint_observe(p_ids uuid[], p_attempts integer[], p_agents bigint[],
                                       p_started timestamptz[], p_durations double precision[],
                                       p_statuses integer[], p_classes text[], p_errors text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    g record;
    o record;
    es axme.endpoint_state;
    ag axme.agents;
    mif integer;
    threshold integer;
    base_ms bigint;
    halved boolean;
    spread boolean;
    disable_after interval;
BEGIN
    FOR g IN
        SELECT x.agent, count(*) FILTER (WHERE x.cls IS NOT NULL) AS n_bad
        FROM unnest(p_agents, p_classes) AS x(agent, cls) GROUP BY x.agent ORDER BY x.agent
    LOOP
        SELECT * INTO es FROM axme.endpoint_state s WHERE s.agent_id = g.agent FOR UPDATE;
        IF g.n_bad = 0 AND (NOT FOUND OR (es.breaker = 'closed' AND es.consecutive_failures = 0
                                          AND es.conc_limit IS NULL AND es.failing_since IS NULL)) THEN
            -- healthy: only keep last_success_at current (to the second)
            IF NOT FOUND THEN
                INSERT INTO axme.endpoint_state (agent_id, last_success_at) VALUES (g.agent, now())
                ON CONFLICT (agent_id) DO NOTHING;
            ELSIF es.last_success_at IS NULL OR es.last_success_at < now() - interval '1 second' THEN
                UPDATE axme.endpoint_state SET last_success_at = now() WHERE agent_id = g.agent;
            END IF;
            CONTINUE;
        END IF;
        SELECT * INTO ag FROM axme.agents a WHERE a.agent_id = g.agent;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        IF es.agent_id IS NULL THEN
            INSERT INTO axme.endpoint_state (agent_id) VALUES (g.agent) ON CONFLICT (agent_id) DO NOTHING;
            SELECT * INTO es FROM axme.endpoint_state s WHERE s.agent_id = g.agent FOR UPDATE;
        END IF;
        mif := coalesce((ag.options->>'max_in_flight')::integer, 16);
        threshold := coalesce((ag.options->'breaker'->>'failure_threshold')::integer, 10);
        base_ms := coalesce((ag.options->'breaker'->>'cooldown_ms')::bigint, 30000);
        halved := false;
        spread := false;
        FOR o IN
            SELECT x.* FROM unnest(p_ids, p_attempts, p_agents, p_started, p_durations, p_statuses,
                                   p_classes, p_errors)
                            AS x(id, att, agent, started, dur, st, cls, err)
            WHERE x.agent = g.agent
            ORDER BY x.started + x.dur * interval '1 millisecond'
        LOOP
            IF o.cls IS NULL THEN
                -- a success: closes the breaker, ends the failure streak, grows the ramp
                IF es.breaker <> 'closed' THEN
                    PERFORM axme._alert(ag.address, 'breaker_closed',
                        jsonb_build_object('intent_id', o.id, 'attempt', o.att,
                                           'failing_since', es.failing_since));
                    es.breaker := 'closed';
                    es.reopen_count := 0;
                    es.cooldown_ms := NULL;
                    es.open_until := NULL;
                    es.probe_at := NULL;
                    es.conc_limit := 1;
                    es.ssthresh := NULL;
                    spread := true;
                ELSIF es.consecutive_failures >= 3 AND coalesce(es.conc_limit, mif) > 1 THEN
                    -- a backlog built up while the endpoint was failing: ramp up from 1
                    es.conc_limit := 1;
                    es.ssthresh := NULL;
                ELSIF es.conc_limit IS NOT NULL THEN
                    IF es.ssthresh IS NULL OR es.conc_limit < es.ssthresh THEN
                        es.conc_limit := es.conc_limit + 1;            -- slow start: doubles per round trip
                    ELSE
                        es.conc_limit := es.conc_limit + 1 / es.conc_limit;  -- then +1 per round trip
                    END IF;
                    IF es.conc_limit >= mif THEN
                        es.conc_limit := NULL;
                        es.ssthresh := NULL;
                    END IF;
                END IF;
                es.consecutive_failures := 0;
                es.failing_since := NULL;
                es.last_success_at := now();
                CONTINUE;
            END IF;
            es.last_failure_at := now();
            es.last_error := o.err;
            es.last_error_class := o.cls;
            es.last_http_status := o.st;
            IF o.cls = 'http' AND o.st = 410 THEN
                IF ag.disabled_at IS NULL THEN
                    UPDATE axme.agents SET disabled_at = now(), disabled_reason = 'gone: the endpoint answered HTTP 410 Gone'
                    WHERE agent_id = ag.agent_id RETURNING * INTO ag;
                    PERFORM axme._alert(ag.address, 'endpoint_disabled',
                        jsonb_build_object('reason', 'gone', 'http_status', 410, 'intent_id', o.id));
                END IF;
                CONTINUE;
            END IF;
            IF o.st IN (429, 503) OR axme._breaker_failure(o.cls, o.st) THEN
                -- slow down: halve the concurrency limit, once per batch and only for requests
                -- sent after the last halving (one reaction per round trip, as TCP does)
                -- After a 429 / 503 the limit climbs back by doubling only to 7/8 of where the
                -- receiver pushed back, then by one per round trip (ssthresh).
                IF NOT halved AND (es.halved_at IS NULL OR o.started >= es.halved_at) THEN
                    IF o.st IN (429, 503) THEN
                        es.ssthresh := greatest(1, 0.875 * least(coalesce(es.conc_limit, mif), mif));
                    END IF;
                    es.conc_limit := greatest(1, floor(least(coalesce(es.conc_limit, mif), mif) / 2));
                    es.halved_at := now();
                    halved := true;
                END IF;
            END IF;
            IF NOT axme._breaker_failure(o.cls, o.st) THEN
                CONTINUE;
            END IF;
            IF es.failing_since IS NULL THEN
                es.failing_since := o.started;
            END IF;
            -- distinct intents: an intent's own earlier failures in this streak were counted already
            IF NOT EXISTS (SELECT FROM axme.delivery_attempts da
                           WHERE da.intent_id = o.id AND da.attempt < o.att
                             AND da.started_at >= es.failing_since AND da.error_class IS NOT NULL) THEN
                es.consecutive_failures := es.consecutive_failures + 1;
            END IF;
            IF es.breaker = 'half_open' OR (es.breaker = 'closed' AND es.consecutive_failures >= threshold) THEN
                IF es.breaker = 'half_open' THEN
                    es.reopen_count := es.reopen_count + 1;
                ELSE
                    es.reopen_count := 0;
                END IF;
                -- cool-down: doubles with every re-open, capped at 8 x cooldown_ms (and at 10 min
                -- unless cooldown_ms itself is longer), so an endpoint that comes back is probed
                -- within a bounded time of the first cool-down; jitter only lengthens it (+0-20 %)
                es.cooldown_ms := least(base_ms * (2 ^ least(es.reopen_count, 30))::bigint,
                                        greatest(base_ms, least(base_ms * 8, 600000)));
                es.open_until := clock_timestamp() + es.cooldown_ms * (1 + 0.2 * random()) * interval '1 millisecond';
                es.breaker := 'open';
                es.probe_at := NULL;
                PERFORM axme._alert(ag.address, 'breaker_opened',
                    jsonb_build_object('consecutive_failures', es.consecutive_failures,
                                       'cooldown_ms', es.cooldown_ms, 'open_until', es.open_until,
                                       'reopened', es.reopen_count > 0,
                                       'error_class', o.cls, 'http_status', o.st, 'error', o.err));
            END IF;
            -- failing without a single success for axme.disable_after: disabled
            disable_after := coalesce(nullif(current_setting('axme.disable_after', true), ''), '5d')::interval;
            IF ag.disabled_at IS NULL AND es.failing_since <= now() - disable_after THEN
                UPDATE axme.agents SET disabled_at = now(),
                       disabled_reason = format('failing: no successful delivery since %s (axme.disable_after = %s)',
                                                es.failing_since, disable_after)
                WHERE agent_id = ag.agent_id RETURNING * INTO ag;
                PERFORM axme._alert(ag.address, 'endpoint_disabled',
                    jsonb_build_object('reason', 'failing', 'failing_since', es.failing_since,
                                       'disable_after', disable_after::text));
            END IF;
        END LOOP;
        UPDATE axme.endpoint_state s SET
            breaker = es.breaker, consecutive_failures = es.consecutive_failures,
            failing_since = es.failing_since, reopen_count = es.reopen_count,
            cooldown_ms = es.cooldown_ms, open_until = es.open_until, probe_at = es.probe_at,
            conc_limit = es.conc_limit, ssthresh = es.ssthresh, halved_at = es.halved_at,
            last_success_at = es.last_success_at, last_failure_at = es.last_failure_at,
            last_error = es.last_error, last_error_class = es.last_error_class,
            last_http_status = es.last_http_status
        WHERE s.agent_id = g.agent;
        IF spread THEN
            PERFORM axme._ramp_start(g.agent, true);
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._endpoint_observe(uuid[], integer[], bigint[], timestamptz[], double precision[],
                                           integer[], text[], text[]) IS
    'Private: update each endpoint''s breaker, slow start and health from a batch of attempt '
    'outcomes; disable it on 410 Gone or after failing for axme.disable_after.';

CREATE VIEW axme.endpoint_health AS
SELECT ag.address AS agent,
       ag.endpoint_url,
       coalesce(es.breaker, 'closed') AS breaker_state,
       coalesce(es.consecutive_failures, 0) AS consecutive_failures,
       st.success_rate_5m,
       coalesce(st.attempts_5m, 0) AS attempts_5m,
       es.last_success_at,
       es.last_failure_at,
       es.last_error,
       es.last_error_class,
       es.last_http_status,
       coalesce(fl.n, 0) AS in_flight,
       CASE WHEN ag.disabled_at IS NOT NULL OR ag.paused_at IS NOT NULL OR es.breaker = 'open' THEN 0
            WHEN es.breaker = 'half_open' THEN 1
            ELSE least(coalesce((ag.options->>'max_in_flight')::integer, 16),
                       coalesce(floor(es.conc_limit)::integer, 2147483647)) END AS concurrency_limit,
       coalesce((ag.options->>'max_in_flight')::integer, 16) AS max_in_flight,
       (ag.options->>'rate_limit_per_second')::double precision AS rate_limit_per_second,
       es.cooldown_ms AS breaker_cooldown_ms,
       CASE WHEN es.breaker = 'open' THEN es.open_until END AS breaker_open_until,
       CASE WHEN ag.disabled_at IS NULL AND ag.paused_at IS NULL THEN
            CASE WHEN es.breaker = 'open' THEN greatest(nd.due_at, es.open_until) ELSE nd.due_at END
       END AS next_attempt_at,
       coalesce(nd.waiting, 0) AS waiting,
       ag.paused_at,
       ag.disabled_at,
       ag.disabled_reason
FROM axme.agents ag
LEFT JOIN axme.endpoint_state es ON es.agent_id = ag.agent_id
LEFT JOIN (SELECT da.agent_id, count(*) AS attempts_5m,
                  round(count(*) FILTER (WHERE da.error_class IS NULL)::numeric / count(*), 4) AS success_rate_5m
           FROM axme.delivery_attempts da
           WHERE da.started_at >= now() - interval '5 minutes'
           GROUP BY da.agent_id) st ON st.agent_id = ag.agent_id
LEFT JOIN LATERAL (SELECT count(*) AS n FROM axme.intents i
                   WHERE i.agent_id = ag.agent_id AND i.due_at IS NOT NULL AND i.lease_until IS NOT NULL
                     AND i.status IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS')) fl ON true
LEFT JOIN LATERAL (SELECT min(i.due_at) AS due_at, count(*) AS waiting FROM axme.intents i
                   WHERE i.agent_id = ag.agent_id AND i.due_at IS NOT NULL AND i.status = 'SUBMITTED') nd ON true
WHERE ag.delivery_mode = 'http';
COMMENT ON VIEW axme.endpoint_health IS
    'Health of each http endpoint: breaker_state (closed | open | half_open), consecutive_failures '
    '(distinct intents since the last success), success_rate_5m (0..1 over the attempts of the last '
    '5 minutes, NULL without any) and attempts_5m, last_success_at, last_failure_at, last_error, '
    'last_error_class, last_http_status, in_flight (requests out now), concurrency_limit (current '
    'slow-start limit; 0 while open, paused or disabled), max_in_flight, rate_limit_per_second, '
    'breaker_cooldown_ms and breaker_open_until (current cool-down), next_attempt_at (when the next '
    'request may go out), waiting (intents waiting to be sent), paused_at, disabled_at, disabled_reason.';
