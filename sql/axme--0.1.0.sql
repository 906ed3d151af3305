/* axme 0.1.0: intents, their lifecycle, poll and stream receivers, wait_for.
 *
 * Everything lives in schema axme.  Tables are private state that users may read; all writes go
 * through the functions below, which keep the lifecycle rules (REFERENCE.md section 2): every
 * transition appends exactly one event, attempt budgets end in a dead letter, receipts (the
 * attempt number poll hands out) refuse stale writers.
 */
\echo Use "CREATE EXTENSION axme" to load this file. \quit

-------------------------------------------------------------------------------------------------
-- C helpers (src/).  Loaded on first use; GUCs are defined when the library loads.
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme._notify_agent(agent_id bigint, intent_id uuid) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_notify_agent';
COMMENT ON FUNCTION axme._notify_agent(bigint, uuid) IS
    'Private: queue one wake-up NOTIFY for a stream agent, sent once per agent at commit.';

CREATE FUNCTION axme._wake_waiters(intent_id uuid) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_wake_waiters';
COMMENT ON FUNCTION axme._wake_waiters(uuid) IS
    'Private: wake wait_for() callers of this intent when the current transaction commits.';

CREATE FUNCTION axme._valid_address(address text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'axme_valid_address';
COMMENT ON FUNCTION axme._valid_address(text) IS
    'Private: true when address is agent://org/workspace/name (REFERENCE.md section 1).';

CREATE FUNCTION axme._backoff_ms(base_ms bigint, max_ms bigint, failures integer) RETURNS bigint
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_backoff_ms';
COMMENT ON FUNCTION axme._backoff_ms(bigint, bigint, integer) IS
    'Private: retry delay in milliseconds after the given number of failed attempts: '
    'exponential from base_ms, capped at max_ms, with jitter in the upper half.';

-------------------------------------------------------------------------------------------------
-- Tables
-------------------------------------------------------------------------------------------------

CREATE SEQUENCE axme.agents_agent_id_seq;

CREATE TABLE axme.agents (
    agent_id      bigint PRIMARY KEY DEFAULT nextval('axme.agents_agent_id_seq'),
    address       text NOT NULL UNIQUE,
    delivery_mode text NOT NULL
                  CHECK (delivery_mode IN ('stream', 'poll', 'http', 'inbox', 'internal')),
    endpoint_url  text,
    options       jsonb NOT NULL DEFAULT '{}',
    registered_by text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE axme.agents_agent_id_seq OWNED BY axme.agents.agent_id;
COMMENT ON TABLE axme.agents IS
    'Registered agents (receivers): address, delivery mode, endpoint and options. '
    'Write it with axme.register_agent().';

-- Statuses and waiting reasons as domains rather than table CHECKs: a domain's check is compiled
-- once per session, a table CHECK is re-parsed at the start of every INSERT (measured: 15 % of the
-- cost of send_intent).
CREATE DOMAIN axme.intent_status AS text
    CHECK (VALUE IN ('CREATED', 'SUBMITTED', 'DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS', 'WAITING',
                     'COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'));
COMMENT ON DOMAIN axme.intent_status IS 'An intent status (REFERENCE.md section 2).';
CREATE DOMAIN axme.waiting_reason AS text
    CHECK (VALUE IN ('WAITING_FOR_HUMAN', 'WAITING_FOR_TOOL', 'WAITING_FOR_AGENT', 'WAITING_FOR_TIME'));
COMMENT ON DOMAIN axme.waiting_reason IS 'Why a WAITING intent waits.';

CREATE TABLE axme.intents (
    intent_id             uuid PRIMARY KEY,
    agent_id              bigint NOT NULL,
    intent_type           text NOT NULL,
    from_agent            text,
    to_agent              text NOT NULL,
    sender_role           text NOT NULL,
    correlation_id        uuid NOT NULL,
    reply_to              text,
    payload               jsonb NOT NULL,
    status                axme.intent_status NOT NULL,
    waiting_reason        axme.waiting_reason,
    attempt               integer NOT NULL DEFAULT 0,
    attempt_base          integer NOT NULL DEFAULT 0,
    max_delivery_attempts integer NOT NULL,
    result                jsonb,
    error                 jsonb,
    dead_letter_reason    text,
    dead_lettered_at      timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deadline_at           timestamptz,
    not_before            timestamptz,
    due_at                timestamptz,
    lease_until           timestamptz,
    remind_after_seconds    integer,
    remind_interval_seconds integer,
    max_reminders           integer,
    escalate_to           text,
    human_task            jsonb,
    idempotency_key       text,
    event_seq             integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE axme.intents IS
    'One row per intent: its current status, attempt counter, due time and lease. '
    'attempt counts hand-outs over the intent''s life; attempt - attempt_base is what counts '
    'against max_delivery_attempts (replay moves attempt_base). due_at is when the intent can next '
    'be handed out (SUBMITTED) or when its lease runs out (handed out); NULL when nothing is due.';
COMMENT ON COLUMN axme.intents.due_at IS
    'When the intent can next be handed out (SUBMITTED) or when its lease runs out; NULL otherwise.';

-- The claim path: due intents of one agent, oldest due first.
CREATE INDEX intents_agent_due_idx ON axme.intents (agent_id, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX intents_dead_letter_idx ON axme.intents (dead_lettered_at)
    WHERE dead_letter_reason IS NOT NULL;

CREATE TABLE axme.events (
    intent_id  uuid NOT NULL,
    seq        integer NOT NULL,
    event_type text NOT NULL,
    status     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text,
    details    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (intent_id, seq)
);
COMMENT ON TABLE axme.events IS
    'Append-only lifecycle log: one row per transition of an intent, seq 1, 2, 3 ... in commit '
    'order. Read it with axme.intent_events().';

CREATE TABLE axme.idempotency_keys (
    sender       text NOT NULL,
    key          text NOT NULL,
    intent_id    uuid NOT NULL,
    request_hash text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, key)
);
COMMENT ON TABLE axme.idempotency_keys IS
    'Idempotency keys: (coalesce(from_agent, sender_role), key) -> the intent it created, and a '
    'hash of the intent document it was used with.';

-- pg_dump / pg_restore keep the data of every table and the agent id sequence.
SELECT pg_catalog.pg_extension_config_dump('axme.agents', '');
SELECT pg_catalog.pg_extension_config_dump('axme.agents_agent_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('axme.intents', '');
SELECT pg_catalog.pg_extension_config_dump('axme.events', '');
SELECT pg_catalog.pg_extension_config_dump('axme.idempotency_keys', '');

-------------------------------------------------------------------------------------------------
-- Private helpers
-------------------------------------------------------------------------------------------------

-- An agent address: agent://org/workspace/name (REFERENCE.md section 1).  Raises 22023.
CREATE FUNCTION axme._check_address(address text, argname text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF address IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', argname USING ERRCODE = '22023';
    END IF;
    IF NOT axme._valid_address(address) THEN
        RAISE EXCEPTION 'invalid agent address in "%": "%"', argname, left(address, 300)
            USING ERRCODE = '22023',
                  HINT = 'Use agent://org/workspace/name: org and workspace 3..63 characters of '
                         '[a-z0-9-], name 2..63 characters of [a-z0-9._-], starting and ending '
                         'with a letter or digit.';
    END IF;
    RETURN address;
END $$;

-- The registered agent of an address, or P0002 with a hint to register it.
CREATE FUNCTION axme._agent(address text, argname text) RETURNS axme.agents
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a axme.agents;
BEGIN
    PERFORM axme._check_address(address, argname);
    SELECT * INTO a FROM axme.agents WHERE agents.address = _agent.address;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent "%" is not registered', address
            USING ERRCODE = 'P0002',
                  HINT = 'Register it first: SELECT axme.register_agent(''' || address || ''', ''poll'');';
    END IF;
    RETURN a;
END $$;

-- A lease or timeout interval within [lo, hi]; raises 22023 naming the argument.
CREATE FUNCTION axme._check_interval(value interval, argname text, lo interval, hi interval)
RETURNS interval LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', argname USING ERRCODE = '22023';
    END IF;
    IF value < lo OR value > hi THEN
        RAISE EXCEPTION 'argument "%" must be between % and %, got %', argname, lo, hi, value
            USING ERRCODE = '22023';
    END IF;
    RETURN value;
END $$;

-- Integer option/field from a jsonb value, within [lo, hi]; raises 22023 naming the field.
CREATE FUNCTION axme._jsonb_int(value jsonb, field text, lo bigint, hi bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n numeric;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'number' THEN
        RAISE EXCEPTION '"%" must be an integer, got %', field, jsonb_typeof(value)
            USING ERRCODE = '22023';
    END IF;
    n := value::numeric;
    -- 3.0 is refused too: its text form is read later with ::integer, which cannot parse it
    IF value::text !~ '^-?[0-9]+$' OR n < lo OR n > hi THEN
        RAISE EXCEPTION '"%" must be an integer between % and %, got %', field, lo, hi, n
            USING ERRCODE = '22023';
    END IF;
    RETURN n::bigint;
END $$;

-- Deep merge of agent options: nested objects merge, a JSON null removes the key.
CREATE FUNCTION axme._jsonb_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, v) FILTER (WHERE v IS NOT NULL), '{}')
    FROM (
        SELECT k,
               CASE WHEN bv IS NULL THEN av
                    WHEN jsonb_typeof(bv) = 'null' THEN NULL
                    WHEN jsonb_typeof(av) = 'object' AND jsonb_typeof(bv) = 'object'
                        THEN axme._jsonb_merge(av, bv)
                    ELSE bv END AS v
        FROM (SELECT coalesce(x.key, y.key) AS k, x.value AS av, y.value AS bv
              FROM jsonb_each(a) x FULL JOIN jsonb_each(b) y ON x.key = y.key) s
    ) t
$$;

-- Validate agent options for a delivery mode.  Raises 22023 for unknown keys or bad values.
-- Later versions add keys here.
CREATE FUNCTION axme._check_agent_options(mode text, options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    extra jsonb;
BEGIN
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'argument "options" must be a JSON object, got %', jsonb_typeof(options)
            USING ERRCODE = '22023';
    END IF;
    extra := options - ARRAY['retry'];
    IF extra <> '{}' THEN
        RAISE EXCEPTION 'unknown agent option(s): %', (SELECT string_agg(k, ', ') FROM jsonb_object_keys(extra) k)
            USING ERRCODE = '22023', HINT = 'Known options: retry.';
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
        IF (options->'retry'->>'base_delay_ms')::bigint > coalesce((options->'retry'->>'max_delay_ms')::bigint, 3600000) THEN
            RAISE EXCEPTION 'option "retry.base_delay_ms" (%) is larger than "retry.max_delay_ms" (%)',
                            options->'retry'->>'base_delay_ms', coalesce(options->'retry'->>'max_delay_ms', '3600000')
                USING ERRCODE = '22023';
        END IF;
    END IF;
END $$;

-- The intent row, locked FOR UPDATE, after the receipt check.  Raises 22023 for NULL,
-- P0002 when unknown, 55000 when a receipt is given and the intent has been handed out since.
CREATE FUNCTION axme._lock_intent(intent_id uuid, receipt integer) RETURNS axme.intents
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
    IF receipt IS NOT NULL AND receipt <> i.attempt THEN
        RAISE EXCEPTION 'stale receipt for intent %: receipt % does not match its current attempt %',
                        intent_id, receipt, i.attempt
            USING ERRCODE = '55000',
                  HINT = 'The lease ran out and another receiver holds the intent now; drop this work.';
    END IF;
    RETURN i;
END $$;

-- The single place that applies a transition: checks it against the transition table, updates the
-- row, appends one event and arranges wake-ups.  `i` is the locked row as read by the caller
-- (status still the old one), with the caller's changes to other columns applied; this sets
-- status, updated_at and event_seq.
-- Raises 55000 when the transition is not allowed.
CREATE FUNCTION axme._transition(i axme.intents, new_status text, event_type text, details jsonb)
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
    VALUES (i.intent_id, i.event_seq, event_type, new_status, current_user, coalesce(details, '{}'));
    IF new_status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
        PERFORM axme._wake_waiters(i.intent_id);
    END IF;
    RETURN i;
END $$;

-- Budget left for a handed-out intent: true when another hand-out is allowed.
CREATE FUNCTION axme._has_attempts_left(i axme.intents) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT i.attempt - i.attempt_base < i.max_delivery_attempts $$;

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

-- One failed attempt of a handed-out intent: back to SUBMITTED after a backoff while the budget
-- lasts, else dead-lettered with reason 'exhausted'.  Shared by fail(retry => true) and the
-- delivery workers.
CREATE FUNCTION axme._retry_or_dead_letter(i axme.intents, error jsonb, min_delay_ms bigint DEFAULT 0)
RETURNS axme.intents LANGUAGE plpgsql AS $$
DECLARE
    retry jsonb;
    delay_ms bigint;
BEGIN
    IF NOT axme._has_attempts_left(i) THEN
        RETURN axme._dead_letter(i, 'exhausted', error);
    END IF;
    SELECT a.options->'retry' INTO retry FROM axme.agents a WHERE a.agent_id = i.agent_id;
    delay_ms := axme._backoff_ms(
        coalesce((retry->>'base_delay_ms')::bigint, 1000),
        coalesce((retry->>'max_delay_ms')::bigint, 3600000),
        i.attempt - i.attempt_base);
    delay_ms := greatest(delay_ms, coalesce(min_delay_ms, 0));
    i.error := error;
    i.lease_until := NULL;
    i.due_at := clock_timestamp() + delay_ms * interval '1 millisecond';
    RETURN axme._transition(i, 'SUBMITTED', 'intent.delivery_failed',
        jsonb_build_object('attempt', i.attempt, 'error', error, 'next_attempt_at', i.due_at));
END $$;

-------------------------------------------------------------------------------------------------
-- Agents
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme.register_agent(address text, delivery_mode text DEFAULT 'poll',
                                    endpoint_url text DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    merged jsonb;
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
    -- Merge inside the upsert, against the row as locked by it, so two concurrent registrations
    -- of one agent (the first ones included) merge one after the other; then check the result
    -- (an error undoes the upsert with the statement).
    INSERT INTO axme.agents AS a (address, delivery_mode, endpoint_url, options, registered_by)
    VALUES (address, delivery_mode, endpoint_url, axme._jsonb_merge('{}', options), current_user)
    ON CONFLICT ON CONSTRAINT agents_address_key DO UPDATE
        SET delivery_mode = excluded.delivery_mode, endpoint_url = excluded.endpoint_url,
            options = axme._jsonb_merge(a.options, register_agent.options), updated_at = now()
    RETURNING a.options INTO merged;
    PERFORM axme._check_agent_options(delivery_mode, merged);
END $$;
COMMENT ON FUNCTION axme.register_agent(text, text, text, jsonb) IS
    'Register or update an agent (upsert). address: agent://org/workspace/name; delivery_mode: '
    'stream | poll | http | inbox | internal; endpoint_url: http(s) URL, http agents only; options: '
    'merged into the stored ones (nested objects merge, null removes a key), e.g. '
    '{"retry": {"max_attempts": 8, "base_delay_ms": 1000, "max_delay_ms": 3600000}}. '
    'Errors: 22023 invalid address, mode, URL or option.';

CREATE FUNCTION axme.channel(agent text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT 'axme_agent_' || (axme._agent(agent, 'agent')).agent_id $$;
COMMENT ON FUNCTION axme.channel(text) IS
    'The LISTEN channel of a registered agent (axme_agent_<id>: lower case, at most 63 bytes). '
    'Stream agents get one NOTIFY per sending transaction with {"intent_id": first, "count": n}. '
    'Errors: 22023 invalid address, P0002 not registered.';

-------------------------------------------------------------------------------------------------
-- Sending
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme.send_intent(intent jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_send_intent';
COMMENT ON FUNCTION axme.send_intent(jsonb, text) IS
    'Store an intent and queue it for its receiver, in the caller''s transaction. intent: '
    '{"intent_type", "to_agent", "payload": {...}} plus optional from_agent, correlation_id, reply_to, '
    'deadline_at, not_before, max_delivery_attempts, remind_after_seconds, remind_interval_seconds, '
    'max_reminders, escalate_to, human_task. idempotency_key: 8..128 characters; the same key and '
    'intent return the first intent_id. Returns the intent_id. Errors: 22023 invalid field, 22P02 '
    'correlation_id not a UUID, 54000 payload over axme.max_payload_bytes, P0002 to_agent not '
    'registered, 23505 idempotency key reused with a different intent.';

-------------------------------------------------------------------------------------------------
-- Reading
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme._document(i axme.intents) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'intent_id', i.intent_id, 'intent_type', i.intent_type, 'from_agent', i.from_agent,
        'to_agent', i.to_agent, 'sender_role', i.sender_role, 'correlation_id', i.correlation_id,
        'reply_to', i.reply_to, 'payload', i.payload, 'status', i.status,
        'waiting_reason', i.waiting_reason, 'attempt', i.attempt,
        'max_delivery_attempts', i.max_delivery_attempts, 'result', i.result, 'error', i.error,
        'dead_letter_reason', i.dead_letter_reason, 'created_at', i.created_at,
        'updated_at', i.updated_at, 'deadline_at', i.deadline_at, 'not_before', i.not_before,
        'next_attempt_at', CASE WHEN i.status = 'SUBMITTED' THEN i.due_at END,
        'lease_until', i.lease_until, 'human_task', i.human_task)
$$;

CREATE FUNCTION axme.get_intent(intent_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    i axme.intents;
BEGIN
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO i FROM axme.intents WHERE intents.intent_id = get_intent.intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    RETURN axme._document(i);
END $$;
COMMENT ON FUNCTION axme.get_intent(uuid) IS
    'The intent as a JSON document (intent_id, intent_type, from_agent, to_agent, sender_role, '
    'correlation_id, reply_to, payload, status, waiting_reason, attempt, max_delivery_attempts, '
    'result, error, dead_letter_reason, created_at, updated_at, deadline_at, not_before, '
    'next_attempt_at, lease_until, human_task). Errors: 22023 NULL, P0002 unknown intent.';

CREATE FUNCTION axme.intent_events(intent_id uuid, since bigint DEFAULT 0)
RETURNS TABLE (seq bigint, event_type text, status text, at timestamptz, actor text, details jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF intent_id IS NULL OR since IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', CASE WHEN intent_id IS NULL THEN 'intent_id' ELSE 'since' END
            USING ERRCODE = '22023';
    END IF;
    IF since < 0 THEN
        RAISE EXCEPTION 'argument "since" must not be negative, got %', since USING ERRCODE = '22023';
    END IF;
    PERFORM FROM axme.intents i WHERE i.intent_id = intent_events.intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY
        SELECT e.seq::bigint, e.event_type, e.status, e.at, e.actor, e.details
        FROM axme.events e
        WHERE e.intent_id = intent_events.intent_id AND e.seq > since
        ORDER BY e.seq;
END $$;
COMMENT ON FUNCTION axme.intent_events(uuid, bigint) IS
    'Lifecycle events of an intent with seq > since (exclusive), ascending. '
    'Errors: 22023 NULL or negative since, P0002 unknown intent.';

CREATE FUNCTION axme.wait_for(intent_id uuid, timeout interval DEFAULT '30 seconds') RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wait_for';
COMMENT ON FUNCTION axme.wait_for(uuid, interval) IS
    'Block until the intent is terminal (COMPLETED, FAILED, CANCELED, TIMED_OUT) and return its '
    'get_intent document; NULL when timeout (0 .. 1 hour) passes first. Wakes on the commit of the '
    'terminal transition. Errors: 22023 NULL or timeout out of range, P0002 unknown intent, 55000 '
    'inside the transaction that sent or changed the intent, or above READ COMMITTED.';

CREATE VIEW axme.dead_letters AS
    SELECT intent_id, to_agent, dead_letter_reason AS reason, error AS last_error, attempt,
           dead_lettered_at
    FROM axme.intents
    WHERE dead_letter_reason IS NOT NULL AND status = 'FAILED';
COMMENT ON VIEW axme.dead_letters IS
    'Dead-lettered intents: FAILED after their attempt budget (or a non-retryable failure). '
    'axme.replay(intent_id) sends one again with a fresh budget.';

-------------------------------------------------------------------------------------------------
-- Receiving: poll, ack, extend_lease, complete, fail, resolve, replay
-------------------------------------------------------------------------------------------------

CREATE FUNCTION axme.poll(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (intent_id uuid, intent_type text, payload jsonb, from_agent text,
               correlation_id uuid, attempt integer, lease_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    claimed integer := 0;
    seen integer;
    r record;
    t timestamptz;
BEGIN
    a := axme._agent(agent, 'agent');
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'argument "max_count" must be between 1 and 10000, got %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    IF a.delivery_mode NOT IN ('poll', 'stream') THEN
        RAISE EXCEPTION 'agent "%" has delivery mode %, which poll does not serve', a.address, a.delivery_mode
            USING ERRCODE = '55000', HINT = 'poll serves agents registered as poll or stream.';
    END IF;
    LOOP
        seen := 0;
        -- Leases run from the claim, not from the start of the caller's transaction.
        t := clock_timestamp();
        -- Claim up to the remaining count, oldest due first.  A candidate whose deadline passed
        -- times out and one whose last allowed lease ran out is dead-lettered, instead of being
        -- handed out; then the loop claims again to fill the batch.
        FOR r IN
            WITH c AS (
                SELECT i.intent_id, i.due_at AS was_due,
                       coalesce(i.deadline_at <= t, false) AS timed_out,
                       i.status <> 'SUBMITTED' AND i.attempt - i.attempt_base >= i.max_delivery_attempts AS exhausted
                FROM axme.intents i
                WHERE i.agent_id = a.agent_id AND i.due_at <= t
                ORDER BY i.due_at
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
                       u.status, current_user,
                       CASE u.status WHEN 'DELIVERED' THEN jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until)
                                     WHEN 'FAILED' THEN jsonb_build_object('reason', 'exhausted', 'attempt', u.attempt,
                                                                           'error', u.error)
                                     ELSE jsonb_build_object('deadline_at', u.deadline_at) END
                FROM u
            )
            SELECT u.* FROM u ORDER BY u.was_due
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
    'Errors: 22023 invalid argument, P0002 agent not registered, 55000 agent of another mode.';

CREATE FUNCTION axme.ack(intent_id uuid, attempt integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, attempt);
BEGIN
    IF i.status <> 'DELIVERED' THEN
        RAISE EXCEPTION 'intent % cannot be acknowledged in status %', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'ack applies to a DELIVERED intent.';
    END IF;
    PERFORM axme._transition(i, 'ACKNOWLEDGED', 'intent.acknowledged', jsonb_build_object('attempt', i.attempt));
END $$;
COMMENT ON FUNCTION axme.ack(uuid, integer) IS
    'Acknowledge a DELIVERED intent (-> ACKNOWLEDGED); its lease keeps running. attempt: the '
    'receipt from poll. Errors: 22023 NULL, P0002 unknown intent, 55000 not DELIVERED or stale receipt.';

CREATE FUNCTION axme.progress(intent_id uuid, details jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, attempt);
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
    'event. Errors: 22023 NULL, P0002 unknown intent, 55000 transition not allowed or stale receipt.';

CREATE FUNCTION axme.extend_lease(intent_id uuid, lease interval, attempt integer DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
BEGIN
    PERFORM axme._check_interval(lease, 'lease', interval '1 second', interval '12 hours');
    i := axme._lock_intent(intent_id, attempt);
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
    'new lease end. Errors: 22023 invalid argument, P0002 unknown intent, 55000 not handed out or stale receipt.';

CREATE FUNCTION axme.complete(intent_id uuid, result jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, attempt);
BEGIN
    IF result IS NULL THEN
        RAISE EXCEPTION 'argument "result" must not be null' USING ERRCODE = '22023',
            HINT = 'Pass ''{}'' for no result.';
    END IF;
    i.result := result;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed', jsonb_build_object('attempt', i.attempt));
END $$;
COMMENT ON FUNCTION axme.complete(uuid, jsonb, integer) IS
    'Finish an intent successfully (-> COMPLETED) with a result. attempt: the receipt from poll. '
    'Errors: 22023 NULL intent_id, P0002 unknown intent, 55000 already terminal or stale receipt.';

CREATE FUNCTION axme.complete_many(intent_ids uuid[], attempts integer[] DEFAULT NULL,
                                   results jsonb[] DEFAULT NULL)
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(intent_ids);
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
            RETURNING i.intent_id, i.event_seq, i.attempt
        ), e AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
            SELECT u.intent_id, u.event_seq, 'intent.completed', 'COMPLETED', current_user,
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
    'unknown, already terminal, or whose receipt is stale is skipped, not an error. '
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
    i := axme._lock_intent(intent_id, attempt);
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
    'Errors: 22023 NULL, P0002 unknown intent, 55000 not allowed in this status or stale receipt.';

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

-------------------------------------------------------------------------------------------------
-- Privileges: nothing is granted to PUBLIC.  See README "Roles" for the grants an application needs.
-------------------------------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA axme FROM PUBLIC;
