-- Sending: the intents, events and idempotency_keys tables and axme.send_intent (the C send path
-- in src/send.c: validation, idempotency, the intent row and its first events in one statement).

CREATE FUNCTION axme._notify_agent(agent_id bigint, intent_id uuid) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_notify_agent';
COMMENT ON FUNCTION axme._notify_agent(bigint, uuid) IS
    'Private: queue one wake-up NOTIFY for a stream agent, sent once per agent at commit.';

CREATE TABLE axme.intents (
    intent_id             uuid PRIMARY KEY,
    agent_id              bigint NOT NULL,
    intent_type           text NOT NULL,
    from_agent            text,
    to_agent              text NOT NULL,
    sender_role           regrole NOT NULL,
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
    event_seq             integer NOT NULL DEFAULT 0,
    traceparent           text,
    tracestate            text,
    priority              integer NOT NULL DEFAULT 0,
    ordering_key          text,
    ordering_seq          bigint,
    fanout_id             uuid
);
COMMENT ON TABLE axme.intents IS
    'One row per intent: its current status, attempt counter, due time and lease. '
    'attempt counts hand-outs over the intent''s life; attempt - attempt_base is what counts '
    'against max_delivery_attempts (replay moves attempt_base). due_at is when the intent can next '
    'be handed out (SUBMITTED) or when its lease runs out (handed out); NULL when nothing is due.';
COMMENT ON COLUMN axme.intents.sender_role IS
    'The role (by OID) that sent the intent; it may read the intent. A role created later under '
    'the same name is another role and may not.';
COMMENT ON COLUMN axme.intents.traceparent IS
    'W3C traceparent the sender gave (validated at send; none is generated when absent): sent as a header on every webhook attempt, returned by poll.';
COMMENT ON COLUMN axme.intents.tracestate IS
    'W3C tracestate the sender gave with its traceparent: sent as a header on every webhook attempt.';
COMMENT ON COLUMN axme.intents.priority IS
    'The sender''s priority, -100..100 (default 0): among due intents of one agent, higher priority '
    'is handed out first, FIFO by due time within a priority (a retry goes behind).';
COMMENT ON COLUMN axme.intents.ordering_key IS
    'The sender''s ordering key (at most 128 characters): intents of one agent with the same key are '
    'handed out one at a time in send order (ordering_seq); a later one waits, SUBMITTED with no '
    'due time, until every earlier one of its key is terminal.';
COMMENT ON COLUMN axme.intents.ordering_seq IS
    'Send order within an ordering key: taken from axme.ordering_seq under the (agent, key) lock.';
COMMENT ON COLUMN axme.intents.fanout_id IS
    'The publish (axme.publish) that created the intent, shared by all the intents it created; NULL for a send.';
COMMENT ON COLUMN axme.intents.due_at IS
    'When the intent can next be handed out (SUBMITTED) or when its lease runs out; NULL otherwise.';
-- The claim path: due intents of one agent, oldest due first.  Per-key ordering and priorities
-- join this index rather than add another: priority as the second column,
-- (agent_id, priority DESC, due_at), keeps "higher priority first, FIFO by due time within a
-- priority" one index range per agent; ordering keys are enforced at claim by "no earlier
-- non-terminal intent of the same (agent_id, ordering_key)", a partial index on
-- (agent_id, ordering_key, created_at) WHERE ordering_key IS NOT NULL AND the intent is not
-- terminal, so unkeyed intents pay nothing.  send_intents (src/send_batch.c) takes the new
-- fields as one more array each.
-- Built: priority is the second column.  Queries that want an agent's earliest due time whatever
-- the priority (the workers' next-due look-ups) read one range per priority through it,
-- axme._agent_next_due(), which costs two probes for an agent whose intents all have priority 0.
CREATE INDEX intents_agent_due_idx ON axme.intents (agent_id, priority DESC, due_at)
    WHERE due_at IS NOT NULL;
-- The priorities an agent has intents with a due time in, highest first: a loose scan of
-- intents_agent_due_idx, one probe per distinct priority (two for an agent that uses none).
CREATE FUNCTION axme._agent_priorities(agent_id bigint) RETURNS SETOF integer
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE p(pr) AS (
        (SELECT i.priority FROM axme.intents i
         WHERE i.agent_id = $1 AND i.due_at IS NOT NULL
         ORDER BY i.priority DESC LIMIT 1)
        UNION ALL
        SELECT (SELECT i.priority FROM axme.intents i
                WHERE i.agent_id = $1 AND i.due_at IS NOT NULL AND i.priority < p.pr
                ORDER BY i.priority DESC LIMIT 1)
        FROM p WHERE p.pr IS NOT NULL
    )
    SELECT p.pr FROM p WHERE p.pr IS NOT NULL
$$;
COMMENT ON FUNCTION axme._agent_priorities(bigint) IS
    'Private: the distinct priorities of an agent''s intents that have a due time, highest first.';
-- An agent's earliest due time after a point (NULL: any), whatever the priority.
CREATE FUNCTION axme._agent_next_due(agent_id bigint, after timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min((SELECT i.due_at FROM axme.intents i
                WHERE i.agent_id = $1 AND i.priority = p.pr AND i.due_at IS NOT NULL
                  AND i.due_at > coalesce($2, '-infinity'::timestamptz)
                ORDER BY i.due_at LIMIT 1))
    FROM axme._agent_priorities($1) AS p(pr)
$$;
COMMENT ON FUNCTION axme._agent_next_due(bigint, timestamptz) IS
    'Private: an agent''s earliest due time later than after (NULL: the earliest), any priority.';
-- Per-key ordering.  The non-terminal keyed intents of an agent by key, in send order; unkeyed
-- intents are not in it, so they pay nothing.
CREATE INDEX intents_agent_key_idx ON axme.intents (agent_id, ordering_key, ordering_seq)
    WHERE ordering_key IS NOT NULL AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT');
CREATE SEQUENCE axme.ordering_seq;
COMMENT ON SEQUENCE axme.ordering_seq IS
    'Send order of keyed intents (intents.ordering_seq), taken under the per-(agent, key) lock.';
SELECT pg_catalog.pg_extension_config_dump('axme.ordering_seq', '');
-- The transaction-scoped lock of one (agent, key): sends of the key and the release of its next
-- intent take it, so send order is lock order (commit order is not sequence order otherwise).
CREATE FUNCTION axme._lock_key(agent_id bigint, ordering_key text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1::text || '/' || $2, 7413))
$$;
COMMENT ON FUNCTION axme._lock_key(bigint, text) IS
    'Private: the transaction lock of one (agent, ordering key).';
-- At send (src/ordering.c, after the store, for intents with a key): under the key's lock, the
-- send order and, when an earlier intent of the key is not terminal, no due time (it waits).
CREATE FUNCTION axme._order_on_send(intent_id uuid, ordering_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ag bigint := (SELECT i.agent_id FROM axme.intents i WHERE i.intent_id = _order_on_send.intent_id);
BEGIN
    PERFORM axme._lock_key(ag, ordering_key);
    UPDATE axme.intents i SET
        ordering_key = _order_on_send.ordering_key,
        ordering_seq = pg_catalog.nextval('axme.ordering_seq'),
        due_at = CASE WHEN EXISTS (SELECT 1 FROM axme.intents e
                                   WHERE e.agent_id = ag AND e.ordering_key = _order_on_send.ordering_key
                                     AND e.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
                                     AND e.intent_id <> i.intent_id)
                      THEN NULL ELSE i.due_at END
    WHERE i.intent_id = _order_on_send.intent_id;
END $$;
COMMENT ON FUNCTION axme._order_on_send(uuid, text) IS
    'Private (send path): give a keyed intent its send order; it waits while an earlier one of its key is not terminal.';
-- When a keyed intent ends (any way: completed, dead-lettered, canceled, timed out), the earliest
-- non-terminal intent of its key, if it is waiting, becomes due; a stream agent is notified and
-- the handler worker rung (the delivery worker is rung by intents_http_wake).
CREATE FUNCTION axme._release_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    nxt uuid;
BEGIN
    PERFORM axme._lock_key(NEW.agent_id, NEW.ordering_key);
    UPDATE axme.intents n SET due_at = greatest(now(), n.not_before)
    WHERE n.intent_id = (SELECT e.intent_id FROM axme.intents e
                         WHERE e.agent_id = NEW.agent_id AND e.ordering_key = NEW.ordering_key
                           AND e.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
                         ORDER BY e.ordering_seq LIMIT 1)
      AND n.due_at IS NULL AND n.status = 'SUBMITTED'
    RETURNING n.intent_id INTO nxt;
    IF nxt IS NOT NULL THEN
        CASE (SELECT a.delivery_mode FROM axme.agents a WHERE a.agent_id = NEW.agent_id)
            WHEN 'stream' THEN PERFORM axme._notify_agent(NEW.agent_id, nxt);
            WHEN 'internal' THEN PERFORM axme._wake_internal();
            ELSE NULL;      -- http: rung by intents_http_wake; poll and inbox: nothing to ring
        END CASE;
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION axme._release_key() IS
    'Private trigger: when a keyed intent ends, the next intent of its key becomes due.';
CREATE TRIGGER intents_key_release AFTER UPDATE OF status ON axme.intents
    FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL
          AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
          AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'))
    EXECUTE FUNCTION axme._release_key();
COMMENT ON TRIGGER intents_key_release ON axme.intents IS
    'Per-key ordering: the end of a keyed intent releases the next one of its key (axme._release_key).';
CREATE INDEX intents_dead_letter_idx ON axme.intents (dead_lettered_at)
    WHERE dead_letter_reason IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('axme.intents', '');
-- Indexes of the operations queries, each partial so that it costs nothing on the hot path
-- except where its rows are (see README "Operations" for the plans):
-- terminal intents by the time they ended (cleanup, the 5-minute success rate);
CREATE INDEX intents_terminal_idx ON axme.intents (updated_at)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') AND dead_letter_reason IS NULL;
-- dead letters per agent (queue_depth, alerts, purge_dead_letters), index-only;
CREATE INDEX intents_agent_dead_letter_idx ON axme.intents (agent_id, dead_lettered_at)
    WHERE dead_letter_reason IS NOT NULL;
-- WAITING intents per agent (queue_depth; they have no due_at unless a deadline is set);
CREATE INDEX intents_agent_waiting_idx ON axme.intents (agent_id) WHERE status = 'WAITING';
-- recent intents (delivery_stats): created_at only grows, so inserts go to the right edge (a BRIN
-- index was tried: once rows of all ages share pages, after updates and cleanup, the planner
-- rightly prefers a sequential scan over it);
CREATE INDEX intents_created_idx ON axme.intents (created_at);

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
SELECT pg_catalog.pg_extension_config_dump('axme.events', '');

CREATE TABLE axme.idempotency_keys (
    sender       text NOT NULL,
    key          text NOT NULL,
    intent_id    uuid NOT NULL,
    request_hash text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- keys are scoped by the sending role as well as by coalesce(from_agent, sender_role): two
    -- roles sending with the same from_agent label and the same key never share it
    sender_role  regrole NOT NULL,
    PRIMARY KEY (sender_role, sender, key)
);
COMMENT ON TABLE axme.idempotency_keys IS
    'Idempotency keys: (sender_role, coalesce(from_agent, sender_role), key) -> the intent it created, '
    'and a hash of the intent document it was used with.';
SELECT pg_catalog.pg_extension_config_dump('axme.idempotency_keys', '');
-- idempotency keys by age (cleanup).
CREATE INDEX idempotency_keys_created_idx ON axme.idempotency_keys (created_at);
COMMENT ON COLUMN axme.idempotency_keys.sender_role IS
    'The role (by OID) that sent with the key (axme.intents.sender_role); keys of different roles, '
    'or of a dropped role and a later one of the same name, never meet.';

CREATE FUNCTION axme.send_intent(intent jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_send_intent';
COMMENT ON FUNCTION axme.send_intent(jsonb, text) IS
    'Store an intent and queue it for its receiver, in the caller''s transaction. intent: '
    '{"intent_type", "to_agent", "payload": {...}} plus optional from_agent, correlation_id, reply_to, '
    'deadline_at, not_before, max_delivery_attempts, remind_after_seconds, remind_interval_seconds, '
    'max_reminders, escalate_to, human_task, traceparent and tracestate (W3C Trace Context: '
    'validated, stored, sent as headers on every webhook attempt, returned by poll and get_intent; '
    'none is generated when absent). idempotency_key: 8..128 characters; the same key and '
    'intent return the first intent_id. Returns the intent_id. Errors: 22023 invalid field, 22P02 '
    'correlation_id not a UUID, 54000 payload over axme.max_payload_bytes, P0002 to_agent not '
    'registered, 23505 idempotency key reused with a different intent, 40001 the key it conflicted '
    'with was removed meanwhile (retry).';

CREATE FUNCTION axme.send_intents(intents jsonb[], idempotency_keys text[] DEFAULT NULL)
RETURNS SETOF uuid LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_send_intents';
COMMENT ON FUNCTION axme.send_intents(jsonb[], text[]) IS
    'Send many intents in one call (at most 10000), in the caller''s transaction: each element is '
    'an intent document as for send_intent; idempotency_keys, when given, holds one key (or NULL) '
    'per element. Returns the intent ids in input order; a key used before or earlier in the same '
    'call with the same document returns the first intent''s id. Written set-based (one statement '
    'for all intents and their events). Errors: those of send_intent, the message prefixed with '
    'the element''s 1-based position, "intents[N]: ", and nothing of the call written; 22023 NULL '
    'intents, a NULL element, arrays of different lengths, more than 10000 elements.';

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
        'lease_until', i.lease_until, 'human_task', i.human_task,
        'traceparent', i.traceparent, 'tracestate', i.tracestate)
$$;

-- Append an event that is not a transition (intent.reminder, intent.escalated) to a locked intent.
CREATE FUNCTION axme._append_event(i axme.intents, event_type text, details jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE axme.intents SET event_seq = event_seq + 1, updated_at = now()
    WHERE intent_id = i.intent_id
    RETURNING event_seq INTO i.event_seq;
    INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)
    VALUES (i.intent_id, i.event_seq, event_type, i.status, axme._caller(), coalesce(details, '{}'));   -- sec
END $$;
COMMENT ON FUNCTION axme._append_event(axme.intents, text, jsonb) IS
    'Private: append an event that is not a transition (intent.reminder, intent.escalated) to a locked intent, with its current status.';

CREATE FUNCTION axme._notify_agent_n(agent_id bigint, intent_id uuid, n bigint) RETURNS void
    LANGUAGE c STRICT VOLATILE AS 'MODULE_PATHNAME', 'axme_notify_agent_n';
COMMENT ON FUNCTION axme._notify_agent_n(bigint, uuid, bigint) IS
    'Private: like axme._notify_agent, counting n intents (one NOTIFY per agent at commit).';
