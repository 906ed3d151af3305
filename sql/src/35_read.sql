-- Reading an intent: get_intent, intent_events, and wait_for (condition variables woken at commit,
-- src/wait.c).

CREATE FUNCTION axme._wake_waiters(intent_id uuid) RETURNS void
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_wake_waiters';
COMMENT ON FUNCTION axme._wake_waiters(uuid) IS
    'Private: wake wait_for() callers of this intent when the current transaction commits.';

CREATE OR REPLACE FUNCTION axme.get_intent(intent_id uuid) RETURNS jsonb
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
    PERFORM axme._check_read(i.sender_role, i.agent_id, i.intent_id);   -- sec
    RETURN axme._document(i);
END $$;
COMMENT ON FUNCTION axme.get_intent(uuid) IS
    'The intent as a JSON document (intent_id, intent_type, from_agent, to_agent, sender_role, '
    'correlation_id, reply_to, payload, status, waiting_reason, attempt, max_delivery_attempts, '
    'result, error, dead_letter_reason, created_at, updated_at, deadline_at, not_before, '
    'next_attempt_at, lease_until, human_task). Readable by the sending role, the receiver''s role and '
    'admins. Errors: 22023 NULL, P0002 unknown intent, 42501 not allowed to read it.';

CREATE OR REPLACE FUNCTION axme.intent_events(intent_id uuid, since bigint DEFAULT 0)
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
    PERFORM axme._check_intent_reader(intent_events.intent_id);   -- sec: 22023, P0002, 42501
    RETURN QUERY
        SELECT e.seq::bigint, e.event_type, e.status, e.at, e.actor, e.details
        FROM axme.events e
        WHERE e.intent_id = intent_events.intent_id AND e.seq > since
        ORDER BY e.seq;
END $$;
COMMENT ON FUNCTION axme.intent_events(uuid, bigint) IS
    'Lifecycle events of an intent with seq > since (exclusive), ascending. '
    'Readable by the sending role, the receiver''s role and admins. '
    'Errors: 22023 NULL or negative since, P0002 unknown intent, 42501 not allowed to read it.';

CREATE FUNCTION axme.wait_for(intent_id uuid, timeout interval DEFAULT '30 seconds') RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wait_for';
COMMENT ON FUNCTION axme.wait_for(uuid, interval) IS
    'Block until the intent is terminal (COMPLETED, FAILED, CANCELED, TIMED_OUT) and return its '
    'get_intent document; NULL when timeout (0 .. 1 hour) passes first. Wakes on the commit of the '
    'terminal transition. Errors: 22023 NULL or timeout out of range, P0002 unknown intent, 55000 '
    'inside the transaction that sent or changed the intent, or above READ COMMITTED.';
