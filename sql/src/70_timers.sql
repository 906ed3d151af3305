-- Time-driven steps: the timer queue (deadlines, reminders, escalation) fired by the delivery
-- worker, and stream wake-ups for leases and backoffs that ran out.

-- The timer queue: one row per pending time-driven step of an intent.  The worker claims due rows
-- (FOR UPDATE SKIP LOCKED, oldest first) and fires them, see axme._fire_timers().
CREATE TABLE axme.timers (
    intent_id uuid NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('deadline', 'remind', 'escalate')),
    due_at    timestamptz NOT NULL,
    PRIMARY KEY (intent_id, kind)
);
CREATE INDEX timers_due_idx ON axme.timers (due_at);
COMMENT ON TABLE axme.timers IS
    'The timer queue: one row per pending time-driven step of an intent (deadline, next reminder, '
    'escalation), fired by the worker within about a second of due_at.';
SELECT pg_catalog.pg_extension_config_dump('axme.timers', '');

-- Fired by the timer loop for a 'remind' row (the row already deleted): one reminder, then the
-- next 'remind' row or, after max_reminders, the 'escalate' row when escalate_to is set.  Reminder
-- k (1-based) is due at created_at + remind_after_seconds + (k - 1) * remind_interval_seconds and
-- the escalation one interval after the last reminder, so late firing does not shift the schedule.
-- max_reminders NULL means one reminder; remind_interval_seconds NULL means remind_after_seconds.
CREATE FUNCTION axme._timer_remind(intent_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    c record;
    k integer;
    max_n integer;
    step interval;
    first_at timestamptz;
BEGIN
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = _timer_remind.intent_id FOR UPDATE;
    IF NOT FOUND OR i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')
       OR i.remind_after_seconds IS NULL THEN
        RETURN;
    END IF;
    max_n := coalesce(i.max_reminders, 1);
    step := coalesce(i.remind_interval_seconds, i.remind_after_seconds) * interval '1 second';
    first_at := i.created_at + i.remind_after_seconds * interval '1 second';
    SELECT count(*) INTO k FROM axme.events e
    WHERE e.intent_id = i.intent_id AND e.event_type = 'intent.reminder';
    k := k + 1;
    IF k <= max_n THEN
        c := axme._current_owner(i);
        PERFORM axme._append_event(i, 'intent.reminder',
            jsonb_build_object('reminder', k, 'max_reminders', max_n, 'owner', c.owner));
        IF (c.t).thread_id IS NOT NULL THEN
            PERFORM axme._thread_message((c.t).thread_id, 'reminder', NULL, NULL,
                jsonb_build_object('reminder', k, 'max_reminders', max_n));
            PERFORM axme._thread_changed((c.t).thread_id, i.intent_id, ARRAY[c.owner_id]);
        ELSE
            PERFORM pg_notify('axme_agent_' || c.owner_id,
                jsonb_build_object('intent_id', i.intent_id, 'event', 'intent.reminder')::text);
        END IF;
    END IF;
    IF k < max_n THEN
        INSERT INTO axme.timers (intent_id, kind, due_at)
        VALUES (i.intent_id, 'remind', greatest(first_at + k * step, now()))
        ON CONFLICT ON CONSTRAINT timers_pkey DO UPDATE SET due_at = excluded.due_at;
    ELSIF i.escalate_to IS NOT NULL THEN
        INSERT INTO axme.timers (intent_id, kind, due_at)
        VALUES (i.intent_id, 'escalate', greatest(first_at + max_n * step, now()))
        ON CONFLICT ON CONSTRAINT timers_pkey DO UPDATE SET due_at = excluded.due_at;
    END IF;
END $$;
COMMENT ON FUNCTION axme._timer_remind(uuid) IS
    'Private, called by the timer loop: emit intent.reminder (details: reminder number, '
    'max_reminders, owner), NOTIFY the current owner, and queue the next reminder or, after '
    'max_reminders, the escalation one interval later when escalate_to is set. No-op for a '
    'terminal or unknown intent.';

-- Fired by the timer loop for an 'escalate' row: intent.escalated, the open task thread moves to
-- escalate_to (which is notified; the old owner hears it left); the intent stays as it is.
CREATE FUNCTION axme._timer_escalate(intent_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    c record;
    a axme.agents;
BEGIN
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = _timer_escalate.intent_id FOR UPDATE;
    IF NOT FOUND OR i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') OR i.escalate_to IS NULL THEN
        RETURN;
    END IF;
    c := axme._current_owner(i);
    SELECT * INTO a FROM axme.agents WHERE address = i.escalate_to;
    PERFORM axme._append_event(i, 'intent.escalated',
        jsonb_build_object('from', c.owner, 'to', i.escalate_to, 'thread_id', (c.t).thread_id)
        || CASE WHEN a.agent_id IS NULL THEN '{"error": "escalate_to is no longer registered"}'::jsonb ELSE '{}' END);
    IF a.agent_id IS NULL THEN
        RETURN;
    END IF;
    IF (c.t).thread_id IS NOT NULL THEN
        IF (c.t).owner_id <> a.agent_id THEN
            PERFORM axme._thread_message((c.t).thread_id, 'escalated', NULL, NULL,
                jsonb_build_object('from', c.owner, 'to', a.address));
            UPDATE axme.threads SET owner_id = a.agent_id, owner = a.address, status = 'active', updated_at = now()
            WHERE thread_id = (c.t).thread_id;
            PERFORM axme._thread_changed((c.t).thread_id, i.intent_id, ARRAY[c.owner_id, a.agent_id]);
        END IF;
    ELSE
        PERFORM pg_notify('axme_agent_' || a.agent_id,
            jsonb_build_object('intent_id', i.intent_id, 'event', 'intent.escalated')::text);
    END IF;
END $$;
COMMENT ON FUNCTION axme._timer_escalate(uuid) IS
    'Private, called by the timer loop: emit intent.escalated (details: from, to, thread_id), move '
    'the open task thread to escalate_to and notify both owners; an intent without a task thread '
    'only notifies escalate_to. The intent''s status is unchanged. No-op for a terminal intent.';

CREATE FUNCTION axme._wake_timers() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'axme_wake_timers_sql';
COMMENT ON FUNCTION axme._wake_timers() IS
    'Private: at commit, wake the worker that fires timers to look at the queue now (writes to '
    'axme.timers do this by themselves, through the trigger timers_wake).';

CREATE FUNCTION axme._timers_wake_trigger() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'axme_timers_wake_trigger';
COMMENT ON FUNCTION axme._timers_wake_trigger() IS
    'Private: row trigger on axme.timers: at commit, wake the worker when a timer is due sooner '
    'than it planned to look.';

-- Whoever writes a timer row (send, reminders, escalations), the worker hears of it at commit.
CREATE TRIGGER timers_wake AFTER INSERT OR UPDATE OF due_at ON axme.timers
    FOR EACH ROW EXECUTE FUNCTION axme._timers_wake_trigger();

-- Fire up to max_count due timers, oldest due first, in one transaction (the caller's).  Each
-- claimed row is deleted; a timer of a terminal intent is dropped; a timer of an intent locked by
-- another session comes back 100 ms later; deadline -> TIMED_OUT (every mode, handed out or not),
-- remind -> axme._timer_remind(), escalate -> axme._timer_escalate().  An error in a reminder or
-- escalation is reported as a WARNING and the timer is tried again one minute later.
-- Returns the number of timer rows claimed.
CREATE FUNCTION axme._fire_timers(max_count integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    i axme.intents;
    n integer := 0;
    msg text;
    st text;
    -- a value, not clock_timestamp() in the query: a volatile bound is no index condition, and
    -- the scan would then walk every pending timer when none is due
    v_now timestamptz := clock_timestamp();
BEGIN
    FOR t IN
        WITH c AS (
            SELECT tm.intent_id, tm.kind
            FROM axme.timers tm
            WHERE tm.due_at <= v_now
            ORDER BY tm.due_at
            LIMIT max_count
            FOR UPDATE SKIP LOCKED
        ), d AS (
            DELETE FROM axme.timers tm USING c
            WHERE tm.intent_id = c.intent_id AND tm.kind = c.kind
            RETURNING tm.intent_id, tm.kind, tm.due_at
        )
        SELECT d.intent_id, d.kind, d.due_at FROM d ORDER BY d.due_at
    LOOP
        n := n + 1;
        SELECT * INTO i FROM axme.intents it WHERE it.intent_id = t.intent_id FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF EXISTS (SELECT FROM axme.intents it WHERE it.intent_id = t.intent_id) THEN
                -- a session holds the intent: try again shortly instead of waiting for it
                INSERT INTO axme.timers (intent_id, kind, due_at)
                VALUES (t.intent_id, t.kind, clock_timestamp() + interval '100 milliseconds')
                ON CONFLICT DO NOTHING;
            END IF;
            CONTINUE;
        END IF;
        CONTINUE WHEN i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT');
        IF t.kind = 'deadline' THEN
            i.waiting_reason := NULL;
            PERFORM axme._transition(i, 'TIMED_OUT', 'intent.timed_out',
                jsonb_build_object('deadline_at', i.deadline_at));
        ELSE
            BEGIN
                IF t.kind = 'remind' THEN
                    PERFORM axme._timer_remind(t.intent_id);
                ELSE
                    PERFORM axme._timer_escalate(t.intent_id);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                RAISE WARNING 'axme: % timer of intent % failed, trying again in a minute: % %',
                              t.kind, t.intent_id, st, left(msg, 1000);
                INSERT INTO axme.timers (intent_id, kind, due_at)
                VALUES (t.intent_id, t.kind, clock_timestamp() + interval '1 minute')
                ON CONFLICT DO NOTHING;
            END;
        END IF;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme._fire_timers(integer) IS
    'Private: fire up to max_count due rows of axme.timers, oldest first (the worker''s timer loop).';

-- Stream wake-ups for what became due by itself: a delayed intent (not_before), a retry backoff,
-- a lease that ran out (due_at later than the last change of the row, so fresh sends, which
-- notified at their own commit, are left out).  One NOTIFY per stream agent with intents that
-- became due in (since, upto], payload {"intent_id": first, "count": n} (queued for commit).
-- Returns when the next one becomes due (NULL: nothing pending).
CREATE FUNCTION axme._wake_streams(since timestamptz, upto timestamptz) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    nxt timestamptz;
BEGIN
    FOR r IN
        SELECT ag.agent_id, w.first_id, w.n, axme._agent_next_due(ag.agent_id, upto) AS later
        FROM axme.agents ag
        CROSS JOIN LATERAL (
            SELECT (array_agg(i.intent_id ORDER BY i.due_at))[1] AS first_id, count(*) AS n
            FROM axme._agent_priorities(ag.agent_id) AS p(pr)
            JOIN axme.intents i ON i.agent_id = ag.agent_id AND i.priority = p.pr
            WHERE i.due_at > since AND i.due_at <= upto
              AND i.due_at > i.updated_at
        ) w
        WHERE ag.delivery_mode = 'stream' AND ag.paused_at IS NULL AND ag.disabled_at IS NULL
    LOOP
        IF r.n > 0 THEN
            PERFORM axme._notify_agent_n(r.agent_id, r.first_id, r.n);
        END IF;
        IF r.later IS NOT NULL AND (nxt IS NULL OR r.later < nxt) THEN
            nxt := r.later;
        END IF;
    END LOOP;
    RETURN nxt;
END $$;
COMMENT ON FUNCTION axme._wake_streams(timestamptz, timestamptz) IS
    'Private: NOTIFY each stream agent whose delayed, backed-off or lease-expired intents became '
    'due in (since, upto]; returns the next such due time.';

-- One turn of the delivery worker's time-driven steps besides firing timers (src/timers.c): stream
-- wake-ups, delayed inbox tasks whose not_before came (axme._inbox_assign_due, when the inbox
-- feature is installed), and when to look next: the earliest timer, delayed stream or inbox
-- intent; within a second while stream agents exist (their leases and backoffs end unannounced).
-- internal_agents: whether the handler worker is needed.  Every query goes through an index
-- that holds only due or pending rows (timers_due_idx, the claim index), per agent of the mode it
-- serves, and a mode no agent uses costs one look at axme.agents: a turn stays the same with
-- millions of finished intents in history (bench/background).
CREATE FUNCTION axme._timers_turn(since timestamptz, upto timestamptz,
                                  OUT next_due timestamptz, OUT internal_agents boolean)
LANGUAGE plpgsql AS $$
DECLARE
    modes text[] := ARRAY(SELECT DISTINCT a.delivery_mode::text FROM axme.agents a);
BEGIN
    next_due := (SELECT min(t.due_at) FROM axme.timers t);
    IF 'stream' = ANY (modes) THEN
        next_due := least(axme._wake_streams(since, upto), next_due, upto + interval '1 second');
    END IF;
    IF 'inbox' = ANY (modes)
       AND pg_catalog.to_regprocedure('axme._inbox_assign_due(integer)') IS NOT NULL THEN
        IF axme._inbox_assign_due(1000) >= 1000 THEN
            next_due := upto;       -- more to assign: at once
        END IF;
        next_due := least(next_due,
            (SELECT min(axme._agent_next_due(a.agent_id, upto)) FROM axme.agents a
             WHERE a.delivery_mode = 'inbox'));
    END IF;
    internal_agents := 'internal' = ANY (modes);
END $$;
COMMENT ON FUNCTION axme._timers_turn(timestamptz, timestamptz) IS
    'Private: stream wake-ups, due inbox tasks, and the next due time of the worker''s timer loop.';
