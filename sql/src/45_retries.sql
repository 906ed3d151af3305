-- Retries and dead letters: axme._retry_or_dead_letter decides whether a failed hand-out is retried
-- after a backoff or dead-lettered; replay, replay_dead_letters, purge_dead_letters.

-- Dead-letter a locked intent: FAILED, reason recorded, one intent.dead_lettered event.
CREATE FUNCTION axme._dead_letter(i axme.intents, reason text, error jsonb) RETURNS axme.intents
LANGUAGE plpgsql AS $$
BEGIN
    i.dead_letter_reason := reason;
    i.dead_lettered_at := now();
    i.error := coalesce(error, i.error);
    RETURN axme._transition(i, 'FAILED', 'intent.dead_lettered',
        jsonb_build_object('reason', reason, 'attempt', i.attempt, 'error', i.error));
END $$;

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

CREATE VIEW axme.dead_letters AS
    SELECT intent_id, to_agent, dead_letter_reason AS reason, error AS last_error, attempt,
           dead_lettered_at
    FROM axme.intents
    WHERE dead_letter_reason IS NOT NULL AND status = 'FAILED';
COMMENT ON VIEW axme.dead_letters IS
    'Dead-lettered intents: FAILED after their attempt budget (or a non-retryable failure). '
    'axme.replay(intent_id) sends one again with a fresh budget.';

CREATE FUNCTION axme.replay(intent_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, NULL);
    reason text := i.dead_letter_reason;
    lettered_at timestamptz := i.dead_lettered_at;
    last_error jsonb := i.error;
BEGIN
    IF i.status <> 'FAILED' OR reason IS NULL THEN
        RAISE EXCEPTION 'intent % is not a dead letter (status %)', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'Only dead-lettered intents can be replayed.';
    END IF;
    i.attempt_base := i.attempt;
    i.error := NULL;                -- kept in the intent.replayed event below
    i.dead_letter_reason := NULL;
    i.dead_lettered_at := NULL;
    i.due_at := clock_timestamp();
    i := axme._transition(i, 'SUBMITTED', 'intent.replayed',
        jsonb_build_object('previous_reason', reason, 'dead_lettered_at', lettered_at,
                           'previous_error', last_error));
    IF (SELECT delivery_mode FROM axme.agents WHERE agent_id = i.agent_id) = 'stream' THEN
        PERFORM axme._notify_agent(i.agent_id, i.intent_id);
    END IF;
END $$;
COMMENT ON FUNCTION axme.replay(uuid) IS
    'Send a dead-lettered intent again with a fresh attempt budget (-> SUBMITTED, event '
    'intent.replayed). Errors: 22023 NULL, P0002 unknown intent, 55000 not a dead letter.';

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

CREATE FUNCTION axme.purge_dead_letters(agent text, before timestamptz DEFAULT now()) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    ids uuid[];
BEGIN
    PERFORM axme._check_admin('purge_dead_letters');   -- sec
    a := axme._agent(agent, 'agent');
    IF before IS NULL THEN
        RAISE EXCEPTION 'argument "before" must not be null' USING ERRCODE = '22023';
    END IF;
    ids := ARRAY(SELECT i.intent_id FROM axme.intents i
                 WHERE i.agent_id = a.agent_id AND i.dead_letter_reason IS NOT NULL
                   AND i.dead_lettered_at < before
                 FOR UPDATE);
    RETURN (axme._delete_intents(ids)->>'intents')::bigint;
END $$;
COMMENT ON FUNCTION axme.purge_dead_letters(text, timestamptz) IS
    'Delete the dead letters of an agent dead-lettered before the given time (default: now), with '
    'their events and attempts. Returns how many. Admins only. Errors: 42501 not an admin, 22023 '
    'invalid address or NULL before, P0002 agent not registered.';
