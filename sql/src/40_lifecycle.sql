-- The lifecycle: axme._transition (the one place a status changes; one event per transition),
-- the poll claim with leases (FOR UPDATE SKIP LOCKED) and the receiver's calls with receipts
-- (ack, progress, extend_lease, complete, complete_many, fail) and resolve.

-- The intent row, locked FOR UPDATE, after the receipt check.  Raises 22023 for NULL,
-- P0002 when unknown, 42501 when the caller does not receive for its agent (sec), 55000 when a receipt is given and the intent has been handed out since.
CREATE OR REPLACE FUNCTION axme._lock_intent(intent_id uuid, receipt integer) RETURNS axme.intents
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO i FROM axme.intents WHERE intents.intent_id = _lock_intent.intent_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    -- sec: every writer of a handed-out intent (ack, progress, extend_lease, complete, fail,
    -- resolve, replay) is its receiver's role (agent option db_role) or an admin
    PERFORM axme._check_receiver(i.agent_id, 'intent ' || i.intent_id);
    IF receipt IS NOT NULL AND receipt <> i.attempt THEN
        RAISE EXCEPTION 'stale receipt for intent %: receipt % does not match its current attempt %',
                        intent_id, receipt, i.attempt
            USING ERRCODE = '55000',
                  HINT = 'The lease ran out and another receiver holds the intent now; drop this work.';
    END IF;
    RETURN i;
END $$;

CREATE FUNCTION axme._receipts_required() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'axme_receipts_required';
COMMENT ON FUNCTION axme._receipts_required() IS
    'Private: setting axme.require_receipts (default on), always false in axme''s own workers.';

-- Whether a call on intent i needs a receipt: handed out by poll (a poll or stream agent), not
-- terminal, axme.require_receipts on and the agent's option require_receipts not false.
CREATE FUNCTION axme._needs_receipt(i axme.intents) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT i.attempt > 0 AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
       AND axme._receipts_required()
       AND coalesce((SELECT a.delivery_mode IN ('poll', 'stream')
                            AND a.options->'require_receipts' IS DISTINCT FROM 'false'::jsonb
                     FROM axme.agents a WHERE a.agent_id = i.agent_id), false)
$$;
COMMENT ON FUNCTION axme._needs_receipt(axme.intents) IS
    'Private: whether a receiver''s call on this intent must carry its receipt (see axme.require_receipts).';

-- _lock_intent for the receiver's calls (ack, progress, extend_lease, complete, fail): also
-- 55000 when the receipt is missing and required (axme._needs_receipt).  resolve, replay and the
-- workers use _lock_intent itself.
CREATE FUNCTION axme._lock_receipt(intent_id uuid, receipt integer, what text) RETURNS axme.intents
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, receipt);
BEGIN
    IF receipt IS NULL AND axme._needs_receipt(i) THEN
        RAISE EXCEPTION '% of intent % needs its receipt', what, i.intent_id
            USING ERRCODE = '55000',
                  DETAIL = 'The intent was handed out by poll (attempt ' || i.attempt || '); a call '
                           'without the receipt could overwrite the work of a receiver that holds it now.',
                  HINT = 'Pass the attempt that poll returned (attempt => n), or use axme.resolve(); '
                         'SET axme.require_receipts = off or the agent option "require_receipts": false '
                         'turn the check off.';
    END IF;
    RETURN i;
END $$;
COMMENT ON FUNCTION axme._lock_receipt(uuid, integer, text) IS
    'Private: axme._lock_intent, plus 55000 when the receipt is missing and required.';

-- The single place that applies a transition: checks it against the transition table, updates the
-- row, appends one event and arranges wake-ups.  `i` is the locked row as read by the caller
-- (status still the old one), with the caller's changes to other columns applied; this sets
-- status, updated_at and event_seq.
-- Raises 55000 when the transition is not allowed.
CREATE OR REPLACE FUNCTION axme._transition(i axme.intents, new_status text, event_type text, details jsonb)
RETURNS axme.intents LANGUAGE plpgsql AS $$
DECLARE
    old_status text;
    allowed boolean;
BEGIN
    old_status := i.status;
    allowed := CASE
        WHEN old_status IN ('COMPLETED', 'CANCELED', 'TIMED_OUT') THEN false
        WHEN old_status = 'FAILED' THEN
            new_status = 'SUBMITTED' AND event_type = 'intent.replayed'
        WHEN new_status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN true
        WHEN old_status = 'CREATED' THEN new_status = 'SUBMITTED'
        WHEN old_status = 'SUBMITTED' THEN new_status IN ('DELIVERED', 'WAITING')
        WHEN old_status = 'DELIVERED' THEN new_status IN ('ACKNOWLEDGED', 'IN_PROGRESS', 'WAITING', 'DELIVERED', 'SUBMITTED')
        WHEN old_status = 'ACKNOWLEDGED' THEN new_status IN ('IN_PROGRESS', 'WAITING', 'DELIVERED', 'SUBMITTED')
        WHEN old_status = 'IN_PROGRESS' THEN new_status IN ('WAITING', 'DELIVERED', 'SUBMITTED')
        WHEN old_status = 'WAITING' THEN new_status IN ('IN_PROGRESS', 'SUBMITTED')
        ELSE false END;
    IF NOT allowed THEN
        -- (two RAISEs: a RAISE option that evaluates to NULL is itself an error, 22004)
        IF old_status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
            RAISE EXCEPTION 'intent % cannot go from % to %', i.intent_id, old_status, new_status
                USING ERRCODE = '55000', DETAIL = 'The intent is already terminal.';
        END IF;
        RAISE EXCEPTION 'intent % cannot go from % to %', i.intent_id, old_status, new_status
            USING ERRCODE = '55000';
    END IF;
    i.status := new_status;
    i.updated_at := now();
    i.event_seq := i.event_seq + 1;
    IF new_status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
        i.due_at := NULL;
        i.lease_until := NULL;
    END IF;
    UPDATE axme.intents SET
        status = i.status, waiting_reason = i.waiting_reason, attempt = i.attempt,
        attempt_base = i.attempt_base, result = i.result, error = i.error,
        dead_letter_reason = i.dead_letter_reason, dead_lettered_at = i.dead_lettered_at,
        updated_at = i.updated_at, due_at = i.due_at, lease_until = i.lease_until,
        event_seq = i.event_seq
    WHERE intent_id = i.intent_id;
    INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
    VALUES (i.intent_id, i.event_seq, event_type, new_status, axme._caller(), coalesce(details, '{}'));  -- sec: the caller, not the definer
    IF new_status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
        PERFORM axme._wake_waiters(i.intent_id);
    END IF;
    RETURN i;
END $$;

-- Budget left for a handed-out intent: true when another hand-out is allowed.
CREATE FUNCTION axme._has_attempts_left(i axme.intents) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT i.attempt - i.attempt_base < i.max_delivery_attempts $$;

-- poll (0.1.0) with agent administration: a paused (axme.pause_agent) or disabled agent is handed
-- nothing, and nothing of it is dead-lettered or timed out by the claim either (its intents wait).
CREATE OR REPLACE FUNCTION axme.poll(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (intent_id uuid, intent_type text, payload jsonb, from_agent text,
               correlation_id uuid, attempt integer, lease_until timestamptz, traceparent text)
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    claimed integer := 0;
    seen integer;
    r record;
    t timestamptz;
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_receiver(a.agent_id, 'poll');   -- sec
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'argument "max_count" must be between 1 and 10000, got %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    IF a.delivery_mode NOT IN ('poll', 'stream') THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which poll does not serve', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'poll serves agents registered as poll or stream.';
    END IF;
    IF a.paused_at IS NOT NULL OR a.disabled_at IS NOT NULL THEN
        RETURN;                     -- nothing handed out, no attempt charged
    END IF;
    -- its receiving role was dropped: nothing is handed out (only an admin gets this far)
    IF a.db_role IS NOT NULL AND NOT axme._role_exists(a.db_role) THEN
        PERFORM axme._disable_roleless(NULL, a.agent_id);
        RETURN;
    END IF;
    LOOP
        seen := 0;
        -- Leases run from the claim, not from the start of the caller's transaction.
        t := clock_timestamp();
        -- Claim up to the remaining count, highest priority first, oldest due first within one.  A candidate whose deadline passed
        -- times out and one whose last allowed lease ran out is dead-lettered, instead of being
        -- handed out; then the loop claims again to fill the batch.
        FOR r IN
            WITH c AS (
                SELECT i.intent_id, i.due_at AS was_due,
                       coalesce(i.deadline_at <= t, false) AS timed_out,
                       i.status <> 'SUBMITTED' AND i.attempt - i.attempt_base >= i.max_delivery_attempts AS exhausted
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= t
                ORDER BY i.priority DESC, i.due_at
                LIMIT max_count - claimed
                FOR UPDATE SKIP LOCKED
            ), u AS (
                UPDATE axme.intents i SET
                    status = CASE WHEN c.timed_out THEN 'TIMED_OUT' WHEN c.exhausted THEN 'FAILED'
                                  ELSE 'DELIVERED' END,
                    attempt = CASE WHEN c.timed_out OR c.exhausted THEN i.attempt ELSE i.attempt + 1 END,
                    dead_letter_reason = CASE WHEN c.exhausted AND NOT c.timed_out THEN 'exhausted' END,
                    dead_lettered_at = CASE WHEN c.exhausted AND NOT c.timed_out THEN t END,
                    error = CASE WHEN c.exhausted AND NOT c.timed_out
                                 THEN jsonb_build_object('reason', 'lease_expired',
                                          'message', 'the lease of the last allowed attempt ran out')
                                 ELSE i.error END,
                    lease_until = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    due_at = CASE WHEN c.timed_out OR c.exhausted THEN NULL ELSE t + lease END,
                    updated_at = now(),
                    event_seq = i.event_seq + 1
                FROM c
                WHERE i.intent_id = c.intent_id
                RETURNING i.*, c.was_due
            ), e AS (
                INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
                SELECT u.intent_id, u.event_seq,
                       CASE u.status WHEN 'DELIVERED' THEN 'intent.delivered'
                                     WHEN 'FAILED' THEN 'intent.dead_lettered'
                                     ELSE 'intent.timed_out' END,
                       u.status, axme._caller(),   -- sec: the caller, not the definer
                       CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                                     WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                           'error', u.error)
                                     ELSE jsonb_build_object('deadline_at', u.deadline_at) END
                FROM u
            )
            SELECT u.* FROM u ORDER BY u.priority DESC, u.was_due
        LOOP
            seen := seen + 1;
            IF r.status = 'DELIVERED' THEN
                claimed := claimed + 1;
                intent_id := r.intent_id;
                intent_type := r.intent_type;
                payload := r.payload;
                from_agent := r.from_agent;
                correlation_id := r.correlation_id;
                attempt := r.attempt;
                lease_until := r.lease_until;
                traceparent := r.traceparent;
                RETURN NEXT;
            ELSE
                PERFORM axme._wake_waiters(r.intent_id);
            END IF;
        END LOOP;
        EXIT WHEN seen = 0 OR claimed >= max_count;
    END LOOP;
    RETURN;
END $$;
COMMENT ON FUNCTION axme.poll(text, integer, interval) IS
    'Claim up to max_count (1..10000) due intents of a poll or stream agent, oldest due first, '
    'with a lease (1 second .. 12 hours) during which nobody else gets them (FOR UPDATE SKIP '
    'LOCKED). Each returned row carries attempt: the receipt to pass to ack/extend_lease/complete/'
    'fail. A lease that runs out makes the intent due again; the last allowed one dead-letters it. '
    'Only the agent''s receiver role (option db_role) and admins may poll. traceparent: the '
    'sender''s W3C trace context, NULL when it gave none. '
    'Returns no rows while the agent is paused (axme.pause_agent) or disabled. '
    'Errors: 22023 invalid argument, P0002 agent not registered, 42501 not its receiver, 55000 agent of another mode.';

CREATE FUNCTION axme.ack(intent_id uuid, attempt integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_receipt(intent_id, attempt, 'ack');
BEGIN
    IF i.status <> 'DELIVERED' THEN
        RAISE EXCEPTION 'intent % cannot be acknowledged in status %', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'ack applies to a DELIVERED intent.';
    END IF;
    PERFORM axme._transition(i, 'ACKNOWLEDGED', 'intent.acknowledged', jsonb_build_object('attempt', i.attempt));
END $$;
COMMENT ON FUNCTION axme.ack(uuid, integer) IS
    'Acknowledge a DELIVERED intent (-> ACKNOWLEDGED); its lease keeps running. attempt: the '
    'receipt from poll, required for a poll or stream hand-out (see axme.require_receipts). '
    'Errors: 22023 NULL, P0002 unknown intent, 55000 not DELIVERED, stale or missing receipt.';

CREATE FUNCTION axme.progress(intent_id uuid, details jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_receipt(intent_id, attempt, 'progress');
BEGIN
    IF details IS NULL THEN
        RAISE EXCEPTION 'argument "details" must not be null' USING ERRCODE = '22023';
    END IF;
    IF i.status = 'IN_PROGRESS' THEN
        RAISE EXCEPTION 'intent % is already IN_PROGRESS', i.intent_id USING ERRCODE = '55000';
    END IF;
    PERFORM axme._transition(i, 'IN_PROGRESS', 'intent.in_progress',
        jsonb_build_object('attempt', i.attempt, 'progress', details));
END $$;
COMMENT ON FUNCTION axme.progress(uuid, jsonb, integer) IS
    'Report that work on a handed-out intent has started (-> IN_PROGRESS); details are kept in the '
    'event. attempt: the receipt from poll, required for a poll or stream hand-out (see '
    'axme.require_receipts). Errors: 22023 NULL, P0002 unknown intent, 55000 transition not allowed, '
    'stale or missing receipt.';

CREATE FUNCTION axme.extend_lease(intent_id uuid, lease interval, attempt integer DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    i := axme._lock_receipt(intent_id, attempt, 'extend_lease');
    IF i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
        RAISE EXCEPTION 'intent % holds no lease in status %', i.intent_id, i.status
            USING ERRCODE = '55000';
    END IF;
    -- from the clock, not the transaction start: a lease extended late in a long transaction
    -- must still lie in the future
    i.lease_until := clock_timestamp() + lease;
    UPDATE axme.intents SET lease_until = i.lease_until, due_at = i.lease_until, updated_at = now()
    WHERE intents.intent_id = i.intent_id;
    RETURN i.lease_until;
END $$;
COMMENT ON FUNCTION axme.extend_lease(uuid, interval, integer) IS
    'Set the lease of a handed-out intent to clock_timestamp() + lease (1 second .. 12 hours) and return the '
    'new lease end. attempt: the receipt from poll, required (see axme.require_receipts). '
    'Errors: 22023 invalid argument, P0002 unknown intent, 55000 not handed out, stale or missing receipt.';

-- complete: the fast path is one statement (complete_many's rule for one id): the UPDATE to
-- COMPLETED with the receiver's role check and the receipt check in its WHERE, the event INSERT
-- and the wait_for wake-up in the same CTE.  When it matches no row, the slow path takes the
-- same checks one at a time (_lock_intent, _transition) and raises the one that failed (22023,
-- P0002, 42501, 55000), so the errors are those of every other receipt call.
CREATE FUNCTION axme.complete(intent_id uuid, result jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
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
          -- the receipt: given and current, or not required here (the slow path checks the agent's
          -- option and raises 55000 when a required receipt is missing)
          AND (x.attempt = complete.attempt OR (complete.attempt IS NULL AND NOT axme._receipts_required()))
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
    i := axme._lock_receipt(intent_id, attempt, 'complete');
    i.result := result;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed', jsonb_build_object('attempt', i.attempt));
END $$;
COMMENT ON FUNCTION axme.complete(uuid, jsonb, integer) IS
    'Finish an intent successfully (-> COMPLETED) with a result. attempt: the receipt from poll, '
    'required for a poll or stream hand-out unless axme.require_receipts is off or the agent option '
    'require_receipts is false. Errors: 22023 NULL intent_id, P0002 unknown intent, 55000 already '
    'terminal, stale or missing receipt.';

CREATE OR REPLACE FUNCTION axme.complete_many(intent_ids uuid[], attempts integer[] DEFAULT NULL,
                                   results jsonb[] DEFAULT NULL)
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(intent_ids);
    -- sec: intents of agents the caller does not receive for are skipped, like unknown ones
    v_admin boolean := axme._is_admin();
    v_agents bigint[] := CASE WHEN NOT axme._is_admin() THEN ARRAY(
        SELECT a.agent_id FROM axme.agents a WHERE axme._caller_has(a.db_role)) END;
    v_missing uuid;
    v_attempt integer;
BEGIN
    IF intent_ids IS NULL THEN
        RAISE EXCEPTION 'argument "intent_ids" must not be null' USING ERRCODE = '22023';
    END IF;
    IF n > 10000 THEN
        RAISE EXCEPTION 'argument "intent_ids" must have at most 10000 elements, got %', n
            USING ERRCODE = '22023';
    END IF;
    IF attempts IS NOT NULL AND cardinality(attempts) <> n THEN
        RAISE EXCEPTION 'argument "attempts" must have as many elements as "intent_ids" (%), got %', n, cardinality(attempts)
            USING ERRCODE = '22023';
    END IF;
    IF results IS NOT NULL AND cardinality(results) <> n THEN
        RAISE EXCEPTION 'argument "results" must have as many elements as "intent_ids" (%), got %', n, cardinality(results)
            USING ERRCODE = '22023';
    END IF;
    -- A missing receipt where one is required refuses the call, as complete() does (only for
    -- the intents the caller receives for: the others are skipped below, like unknown ones).
    IF (attempts IS NULL OR array_position(attempts, NULL) IS NOT NULL) AND axme._receipts_required() THEN
        SELECT i.intent_id, i.attempt INTO v_missing, v_attempt
        FROM unnest(intent_ids, coalesce(attempts, array_fill(NULL::integer, ARRAY[n]))) AS r(id, att)
        JOIN axme.intents i ON i.intent_id = r.id
        WHERE r.att IS NULL AND i.attempt > 0 AND (v_admin OR i.agent_id = ANY (v_agents))
          AND axme._needs_receipt(i)
        LIMIT 1;
        IF v_missing IS NOT NULL THEN
            RAISE EXCEPTION 'complete_many of intent % needs its receipt', v_missing
                USING ERRCODE = '55000',
                      DETAIL = 'The intent was handed out by poll (attempt ' || v_attempt || '); a call '
                               'without the receipt could overwrite the work of a receiver that holds it now.',
                      HINT = 'Pass the attempts that poll returned (attempts => ARRAY[...]), in the order '
                             'of intent_ids; SET axme.require_receipts = off or the agent option '
                             '"require_receipts": false turn the check off.';
        END IF;
    END IF;
    -- The set-based form of complete(): the same rule (any non-terminal -> COMPLETED, receipt
    -- checked when given) in one UPDATE and one INSERT of events.
    RETURN QUERY
        WITH req AS (
            SELECT r.id, r.att, r.res
            FROM unnest(intent_ids,
                        coalesce(attempts, array_fill(NULL::integer, ARRAY[n])),
                        coalesce(results, array_fill('{}'::jsonb, ARRAY[n]))) AS r(id, att, res)
            WHERE r.id IS NOT NULL
        ), u AS (
            UPDATE axme.intents i SET
                status = 'COMPLETED', result = req.res, due_at = NULL, lease_until = NULL,
                updated_at = now(), event_seq = i.event_seq + 1
            FROM req
            WHERE i.intent_id = req.id
              AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
              AND (req.att IS NULL OR req.att = i.attempt)
              AND (v_admin OR i.agent_id = ANY (v_agents))
            RETURNING i.intent_id, i.event_seq, i.attempt
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', axme._caller(),
                   jsonb_build_object('attempt', u.attempt)
            FROM u
        )
        SELECT u.intent_id FROM u CROSS JOIN LATERAL axme._wake_waiters(u.intent_id) w;
END $$;
-- A custom plan per call costs more than the statement itself (the array parameters make the
-- planner keep re-planning): measured 129 us vs 31 us for a one-element call.
ALTER FUNCTION axme.complete_many(uuid[], integer[], jsonb[]) SET plan_cache_mode = force_generic_plan;
COMMENT ON FUNCTION axme.complete_many(uuid[], integer[], jsonb[]) IS
    'Complete many intents at once (at most 10000): intent_ids with, optionally, the receipts '
    '(attempts) and results at the same positions. Returns the ids it completed; an id that is '
    'unknown, already terminal, whose receipt is stale, or whose agent the caller does not receive '
    'for is skipped, not an error; a missing receipt where one is required (see '
    'axme.require_receipts) is an error, 55000. '
    'Errors: 22023 NULL intent_ids, arrays of different lengths, more than 10000 ids.';

CREATE FUNCTION axme.fail(intent_id uuid, error jsonb DEFAULT '{}', retry boolean DEFAULT false,
                          attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    IF retry IS NULL OR error IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', CASE WHEN retry IS NULL THEN 'retry' ELSE 'error' END
            USING ERRCODE = '22023';
    END IF;
    i := axme._lock_receipt(intent_id, attempt, 'fail');
    IF retry THEN
        IF i.status NOT IN ('DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS') THEN
            RAISE EXCEPTION 'intent % cannot be retried in status %', i.intent_id, i.status
                USING ERRCODE = '55000', HINT = 'fail(..., retry => true) applies to a handed-out intent.';
        END IF;
        PERFORM axme._retry_or_dead_letter(i, error);
    ELSE
        i.error := error;
        PERFORM axme._transition(i, 'FAILED', 'intent.failed', jsonb_build_object('attempt', i.attempt, 'error', i.error));
    END IF;
END $$;
COMMENT ON FUNCTION axme.fail(uuid, jsonb, boolean, integer) IS
    'Report a failure. retry => false: the intent ends FAILED (a business outcome, not a dead '
    'letter). retry => true: a failed attempt; the intent goes back to SUBMITTED after an exponential '
    'backoff with jitter, or is dead-lettered (reason exhausted) when its budget is spent. '
    'attempt: the receipt from poll, required for a poll or stream hand-out (see '
    'axme.require_receipts). Errors: 22023 NULL, P0002 unknown intent, 55000 not allowed in this '
    'status, stale or missing receipt.';

CREATE FUNCTION axme.resolve(intent_id uuid, status text, result jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    IF status IS NULL OR status NOT IN ('COMPLETED', 'FAILED', 'CANCELED') THEN
        RAISE EXCEPTION 'invalid status "%" for resolve', coalesce(status, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use COMPLETED, FAILED or CANCELED.';
    END IF;
    i := axme._lock_intent(intent_id, NULL);
    IF status = 'FAILED' THEN
        i.error := result;
    ELSE
        i.result := result;
    END IF;
    PERFORM axme._transition(i, status, 'intent.' || lower(status), jsonb_build_object('resolved', true));
END $$;
COMMENT ON FUNCTION axme.resolve(uuid, text, jsonb) IS
    'End a non-terminal intent with COMPLETED, FAILED or CANCELED, whoever holds it; result is '
    'stored as the result (as the error for FAILED). Errors: 22023 NULL or invalid status, '
    'P0002 unknown intent, 55000 already terminal.';

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

-- When an intent becomes terminal, by whatever path (_transition, poll's timeouts, complete_many,
-- the http recorder): its timers go, its open task thread closes, and with reply_to a completion
-- thread lands in the reply_to agent's inbox, in the same transaction.
CREATE FUNCTION axme._intent_terminal_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
    r axme.agents;
    v_out jsonb;
BEGIN
    IF NEW.deadline_at IS NOT NULL OR NEW.remind_after_seconds IS NOT NULL THEN
        DELETE FROM axme.timers WHERE intent_id = NEW.intent_id;
    END IF;
    v_out := jsonb_build_object('status', NEW.status, 'result', NEW.result, 'error', NEW.error,
                                  'dead_letter_reason', NEW.dead_letter_reason);
    IF NEW.human_task IS NOT NULL THEN
        t := axme._task_thread(NEW.intent_id);
        IF t.thread_id IS NOT NULL THEN
            UPDATE axme.threads SET status = 'done', updated_at = now(), closed_at = now(), outcome = v_out
            WHERE thread_id = t.thread_id;
            PERFORM axme._thread_message(t.thread_id, 'closed', NULL, NULL, v_out);
            PERFORM axme._thread_changed(t.thread_id, NEW.intent_id, ARRAY[t.owner_id]);
        END IF;
    END IF;
    IF NEW.reply_to IS NOT NULL THEN
        SELECT * INTO r FROM axme.agents WHERE address = NEW.reply_to;
        IF FOUND THEN
            PERFORM axme._open_thread(NEW, r.agent_id, r.address, 'completion', NULL,
                v_out || jsonb_build_object('intent_type', NEW.intent_type, 'to_agent', NEW.to_agent,
                                              'correlation_id', NEW.correlation_id));
        END IF;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._intent_terminal_trigger() IS
    'Private trigger: when an intent becomes terminal, delete its timers, close its open task thread '
    'and, with reply_to, open a completion thread in the reply_to agent''s inbox.';

CREATE TRIGGER intents_terminal AFTER UPDATE OF status ON axme.intents
    FOR EACH ROW
    WHEN (NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND (NEW.reply_to IS NOT NULL OR NEW.human_task IS NOT NULL
               OR NEW.deadline_at IS NOT NULL OR NEW.remind_after_seconds IS NOT NULL))
    EXECUTE FUNCTION axme._intent_terminal_trigger();
COMMENT ON TRIGGER intents_terminal ON axme.intents IS
    'When an intent becomes terminal: delete its timers, close its task thread, open the reply_to '
    'completion thread (axme._intent_terminal_trigger).';
