-- The inbox mode: human tasks (validated at send), threads and their messages, the change feed,
-- and the calls of the people who decide (inbox, inbox_thread, inbox_changes, decide, reply,
-- delegate).

-- Task types: the AXME protocol's 14, each with its outcomes and the intent status each outcome
-- leads to.  Types that behave alike keep their own names (and, where they were once folded into
-- another type, that type's outcome names, so that tasks sent before 0.4.0 keep their outcomes).
CREATE FUNCTION axme._task_outcomes(task_type text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE task_type
        WHEN 'approval'            THEN '{"approved": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'review'              THEN '{"approved": "COMPLETED", "changes_requested": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'clarification'       THEN '{"provided": "COMPLETED"}'
        WHEN 'provide_data'        THEN '{"completed": "COMPLETED"}'
        WHEN 'attach_file'         THEN '{"completed": "COMPLETED"}'
        WHEN 'manual_action'       THEN '{"completed": "COMPLETED", "failed": "FAILED"}'
        WHEN 'confirmation'        THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'validate_real_world' THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'validate_output'     THEN '{"confirmed": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'assignment'          THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'delegation'          THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'reroute'             THEN '{"assigned": "COMPLETED", "declined": "CANCELED"}'
        WHEN 'override'            THEN '{"override_approved": "COMPLETED", "rejected": "CANCELED"}'
        WHEN 'escalate'            THEN '{"approved": "COMPLETED", "rejected": "CANCELED"}'
    END::jsonb
$$;
COMMENT ON FUNCTION axme._task_outcomes(text) IS
    'Private: the outcomes of a task type (one of the 14 of the AXME protocol) as {outcome: intent status}, NULL for an unknown type.';

CREATE FUNCTION axme._task_type(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE name
        -- not an AXME type: the structured input of axme before 0.4.0, now provide_data
        WHEN 'form' THEN 'provide_data'
        ELSE CASE WHEN axme._task_outcomes(name) IS NOT NULL THEN name END
    END
$$;
COMMENT ON FUNCTION axme._task_type(text) IS
    'Private: the task type of a type name (form, accepted from before 0.4.0, is provide_data), NULL when unknown.';

-- Validate a human_task (22023 naming the field) and return it normalised: task_type one of the
-- 14 (the name sent kept as type_name), allowed_outcomes filled with the type's outcomes when
-- absent, required_comment and evidence_required as booleans with their type defaults
-- (required_comment: clarification, override; evidence_required: manual_action, attach_file).
CREATE FUNCTION axme._check_human_task(task jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    extra jsonb;
    canonical text;
    outcomes jsonb;
    allowed jsonb;
    o jsonb;
    p record;
    t jsonb;
    f text;
    n integer;
BEGIN
    IF task IS NULL OR jsonb_typeof(task) <> 'object' THEN
        RAISE EXCEPTION 'intent field "human_task" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    extra := task - ARRAY['task_type', 'title', 'description', 'allowed_outcomes', 'required_comment',
                          'evidence_required', 'form_schema', 'assignees'];
    IF extra <> '{}' THEN
        RAISE EXCEPTION 'unknown field(s) in intent field "human_task": %',
                        (SELECT string_agg(left(k, 100), ', ') FROM jsonb_object_keys(extra) k)
            USING ERRCODE = '22023',
                  HINT = 'Known fields: task_type, title, description, allowed_outcomes, required_comment, '
                         'evidence_required, form_schema, assignees.';
    END IF;
    IF jsonb_typeof(task->'task_type') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION '"human_task.task_type" is required and must be a string' USING ERRCODE = '22023';
    END IF;
    canonical := axme._task_type(task->>'task_type');
    IF canonical IS NULL THEN
        RAISE EXCEPTION '"human_task.task_type" names no known task type: "%"', left(task->>'task_type', 100)
            USING ERRCODE = '22023',
                  HINT = 'Use approval, review, clarification, provide_data, attach_file, manual_action, '
                         'confirmation, validate_real_world, validate_output, assignment, delegation, '
                         'reroute, override or escalate.';
    END IF;
    outcomes := axme._task_outcomes(canonical);
    IF jsonb_typeof(task->'title') IS DISTINCT FROM 'string' OR btrim(task->>'title') = '' THEN
        RAISE EXCEPTION '"human_task.title" is required and must be a non-empty string' USING ERRCODE = '22023';
    END IF;
    IF length(task->>'title') > 255 THEN
        RAISE EXCEPTION '"human_task.title" must be at most 255 characters, got %', length(task->>'title')
            USING ERRCODE = '22023';
    END IF;
    IF task ? 'description' AND jsonb_typeof(task->'description') <> 'null' THEN
        IF jsonb_typeof(task->'description') <> 'string' THEN
            RAISE EXCEPTION '"human_task.description" must be a string' USING ERRCODE = '22023';
        END IF;
        IF length(task->>'description') > 2000 THEN
            RAISE EXCEPTION '"human_task.description" must be at most 2000 characters, got %',
                            length(task->>'description')
                USING ERRCODE = '22023';
        END IF;
    END IF;
    IF task ? 'allowed_outcomes' AND jsonb_typeof(task->'allowed_outcomes') <> 'null' THEN
        allowed := task->'allowed_outcomes';
        IF jsonb_typeof(allowed) <> 'array' THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" must be an array of outcome names' USING ERRCODE = '22023';
        END IF;
        n := jsonb_array_length(allowed);
        IF n NOT BETWEEN 1 AND 20 THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" must have 1 to 20 outcomes, got %', n
                USING ERRCODE = '22023';
        END IF;
        FOR o IN SELECT value FROM jsonb_array_elements(allowed) LOOP
            IF jsonb_typeof(o) <> 'string' OR NOT outcomes ? (o #>> '{}') THEN
                RAISE EXCEPTION '"human_task.allowed_outcomes": % is not an outcome of task type %', left(o::text, 100), canonical
                    USING ERRCODE = '22023',
                          HINT = 'Outcomes of ' || canonical || ': '
                                 || (SELECT string_agg(k, ', ') FROM jsonb_object_keys(outcomes) k) || '.';
            END IF;
        END LOOP;
        IF (SELECT count(DISTINCT value) FROM jsonb_array_elements(allowed)) <> n THEN
            RAISE EXCEPTION '"human_task.allowed_outcomes" names an outcome twice' USING ERRCODE = '22023';
        END IF;
    ELSE
        allowed := (SELECT jsonb_agg(k) FROM jsonb_object_keys(outcomes) k);
    END IF;
    FOREACH f IN ARRAY ARRAY['required_comment', 'evidence_required'] LOOP
        IF task ? f AND jsonb_typeof(task->f) NOT IN ('boolean', 'null') THEN
            RAISE EXCEPTION '"human_task.%" must be true or false', f USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF task ? 'form_schema' AND jsonb_typeof(task->'form_schema') <> 'null' THEN
        t := task->'form_schema';
        IF jsonb_typeof(t) <> 'object' THEN
            RAISE EXCEPTION '"human_task.form_schema" must be a JSON Schema object' USING ERRCODE = '22023';
        END IF;
        IF t ? 'required' AND (jsonb_typeof(t->'required') <> 'array'
                               OR EXISTS (SELECT FROM jsonb_array_elements(t->'required') r WHERE jsonb_typeof(r) <> 'string')) THEN
            RAISE EXCEPTION '"human_task.form_schema.required" must be an array of property names' USING ERRCODE = '22023';
        END IF;
        IF t ? 'properties' THEN
            IF jsonb_typeof(t->'properties') <> 'object' THEN
                RAISE EXCEPTION '"human_task.form_schema.properties" must be an object' USING ERRCODE = '22023';
            END IF;
            FOR p IN SELECT key, value FROM jsonb_each(t->'properties') LOOP
                IF jsonb_typeof(p.value) <> 'object' THEN
                    RAISE EXCEPTION '"human_task.form_schema.properties.%" must be an object', left(p.key, 100)
                        USING ERRCODE = '22023';
                END IF;
                IF p.value ? 'type' AND NOT (
                    (jsonb_typeof(p.value->'type') = 'string'
                     AND p.value->>'type' IN ('string', 'number', 'integer', 'boolean', 'object', 'array', 'null'))
                    OR (jsonb_typeof(p.value->'type') = 'array' AND jsonb_array_length(p.value->'type') > 0
                        AND NOT EXISTS (SELECT FROM jsonb_array_elements(p.value->'type') x
                                        WHERE jsonb_typeof(x) <> 'string'
                                           OR x #>> '{}' NOT IN ('string', 'number', 'integer', 'boolean', 'object', 'array', 'null')))) THEN
                    RAISE EXCEPTION '"human_task.form_schema.properties.%.type" must be a JSON Schema type '
                                    '(string, number, integer, boolean, object, array, null) or an array of them',
                                    left(p.key, 100)
                        USING ERRCODE = '22023';
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF task ? 'assignees' AND jsonb_typeof(task->'assignees') <> 'null' THEN
        IF jsonb_typeof(task->'assignees') <> 'array' OR jsonb_array_length(task->'assignees') > 100
           OR EXISTS (SELECT FROM jsonb_array_elements(task->'assignees') x
                      WHERE jsonb_typeof(x) <> 'string' OR length(x #>> '{}') NOT BETWEEN 1 AND 255) THEN
            RAISE EXCEPTION '"human_task.assignees" must be an array of at most 100 names of 1 to 255 characters'
                USING ERRCODE = '22023';
        END IF;
    END IF;
    RETURN task || jsonb_build_object(
        'task_type', canonical,
        'type_name', task->>'task_type',
        'allowed_outcomes', allowed,
        'required_comment', coalesce((task->>'required_comment')::boolean, false)
                            OR canonical IN ('clarification', 'override'),
        'evidence_required', coalesce((task->>'evidence_required')::boolean, canonical IN ('manual_action', 'attach_file')));
END $$;
COMMENT ON FUNCTION axme._check_human_task(jsonb) IS
    'Private: validate a human_task (22023 naming the field) and return it normalised (task_type '
    'one of the 14, type_name as sent, allowed_outcomes filled, required_comment, evidence_required).';

CREATE TABLE axme.threads (
    thread_id  uuid PRIMARY KEY,
    intent_id  uuid NOT NULL,
    owner_id   bigint NOT NULL,
    owner      text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('task', 'completion')),
    status     text NOT NULL CHECK (status IN ('pending', 'active', 'done')),
    task_type  text,
    title      text,
    from_agent text,
    task       jsonb,
    outcome    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    due_at     timestamptz,
    closed_at  timestamptz,
    open       boolean GENERATED ALWAYS AS (status <> 'done') STORED
);
-- The listing: one owner's open (or done) threads, newest first.
CREATE INDEX threads_owner_idx ON axme.threads (owner_id, open, created_at DESC, thread_id DESC);
-- The open task thread of an intent (decide, escalation, timeouts).
CREATE INDEX threads_intent_idx ON axme.threads (intent_id);
COMMENT ON TABLE axme.threads IS
    'Inbox threads: one per human task (kind task, in the inbox of the agent it was sent to, moved '
    'by delegate and escalation) and one per finished intent with reply_to (kind completion, in the '
    'reply_to agent''s inbox). status: pending (nobody acted), active (replies, delegation, '
    'escalation), done (decided, completed, timed out or canceled).';
COMMENT ON COLUMN axme.threads.owner_id IS 'agent_id of the owner (axme.agents).';
COMMENT ON COLUMN axme.threads.open IS 'status <> ''done'' (generated), for the listing index.';
SELECT pg_catalog.pg_extension_config_dump('axme.threads', '');

CREATE TABLE axme.thread_messages (
    thread_id  uuid NOT NULL,
    seq        integer NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind       text NOT NULL,
    actor      text NOT NULL,
    actor_name text,
    body       text,
    details    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (thread_id, seq)
);
COMMENT ON TABLE axme.thread_messages IS
    'The timeline of a thread: opened, reply, delegated, reminder, escalated, decided, closed. '
    'actor is the role that acted (the session''s role, SET ROLE honoured); actor_name the display name it gave.';
SELECT pg_catalog.pg_extension_config_dump('axme.thread_messages', '');

-- The change feed: per (owner, thread) the last change of the thread that owner saw: the
-- transaction that made it (xid) and a number from axme.inbox_change_seq.  An owner that lost a
-- thread (delegate, escalation) keeps a row, so it hears that the thread left.
CREATE SEQUENCE axme.inbox_change_seq;
COMMENT ON SEQUENCE axme.inbox_change_seq IS
    'Numbers of inbox changes (axme.inbox_feed.change_seq); roles that change threads need USAGE.';
SELECT pg_catalog.pg_extension_config_dump('axme.inbox_change_seq', '');

CREATE TABLE axme.inbox_feed (
    owner_id   bigint NOT NULL,
    thread_id  uuid NOT NULL,
    xid        xid8 NOT NULL,
    change_seq bigint NOT NULL,
    PRIMARY KEY (owner_id, thread_id)
);
CREATE INDEX inbox_feed_order_idx ON axme.inbox_feed (owner_id, xid, change_seq);
COMMENT ON TABLE axme.inbox_feed IS
    'Inbox change feed: for each owner and thread, the last change of the thread (the writing '
    'transaction''s xid and a number from axme.inbox_change_seq). Read it with axme.inbox_changes().';
SELECT pg_catalog.pg_extension_config_dump('axme.inbox_feed', '');
CREATE INDEX inbox_feed_thread_idx ON axme.inbox_feed (thread_id);

-- Record one change of a thread for each owner in owner_ids (the current one and, when it moved,
-- the previous one): point the owner's feed row at this transaction and a new number, and NOTIFY
-- the owner's channel.  Writers share no lock (only a thread's own feed row), so they neither
-- queue nor deadlock on an owner.
--
-- The NOTIFY payload is the same for every change ({"inbox": "changed"}), so PostgreSQL merges
-- them: one notification per owner per transaction however many threads it touched; the listener
-- reads what changed with axme.inbox_changes().  Called after the thread row was updated.
CREATE FUNCTION axme._thread_changed(p_thread_id uuid, p_intent_id uuid, owner_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o bigint;
BEGIN
    FOR o IN SELECT DISTINCT x FROM unnest(owner_ids) x WHERE x IS NOT NULL ORDER BY 1 LOOP
        INSERT INTO axme.inbox_feed AS f (owner_id, thread_id, xid, change_seq)
        VALUES (o, p_thread_id, pg_current_xact_id(), nextval('axme.inbox_change_seq'))
        ON CONFLICT (owner_id, thread_id) DO UPDATE SET xid = excluded.xid, change_seq = excluded.change_seq;
        PERFORM pg_notify('axme_agent_' || o, '{"inbox": "changed"}');
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._thread_changed(uuid, uuid, bigint[]) IS
    'Private: record one change of a thread for its owners in the change feed (transaction id and '
    'number) and NOTIFY each owner''s channel {"inbox": "changed"} (merged by PostgreSQL to one per '
    'owner per transaction).';

-- Append one entry to a thread's timeline.
CREATE FUNCTION axme._thread_message(p_thread_id uuid, p_kind text, p_actor_name text, p_body text,
                                     p_details jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- (plpgsql, not sql: its plan is kept across calls)
    INSERT INTO axme.thread_messages (thread_id, seq, kind, actor, actor_name, body, details)
    SELECT p_thread_id, coalesce(max(m.seq), 0) + 1, p_kind, axme._caller(), p_actor_name, p_body,   -- sec
           coalesce(p_details, '{}')
    FROM axme.thread_messages m WHERE m.thread_id = p_thread_id;
END $$;
COMMENT ON FUNCTION axme._thread_message(uuid, text, text, text, jsonb) IS
    'Private: append one entry (kind, display name, body, details) to a thread''s timeline; the '
    'actor recorded is the calling role (axme._caller(), SET ROLE honoured).';

-- Open a thread and record it as a change.  Returns its id.
CREATE FUNCTION axme._open_thread(i axme.intents, owner_id bigint, owner text, kind text, task jsonb,
                                  outcome jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    tid uuid := gen_random_uuid();
BEGIN
    INSERT INTO axme.threads (thread_id, intent_id, owner_id, owner, kind, status, task_type, title,
                              from_agent, task, outcome, due_at)
    VALUES (tid, i.intent_id, owner_id, owner, kind, 'pending', task->>'task_type',
            CASE WHEN kind = 'task' THEN task->>'title'
                 ELSE coalesce(i.human_task->>'title', i.intent_type) END,
            CASE WHEN kind = 'task' THEN i.from_agent ELSE i.to_agent END,
            task, outcome, CASE WHEN kind = 'task' THEN i.deadline_at END);
    PERFORM axme._thread_message(tid, 'opened', NULL, NULL,
        CASE WHEN kind = 'task' THEN jsonb_build_object('owner', owner, 'task_type', task->>'task_type')
             ELSE jsonb_build_object('owner', owner) || outcome END);
    PERFORM axme._thread_changed(tid, i.intent_id, ARRAY[owner_id]);
    RETURN tid;
END $$;
COMMENT ON FUNCTION axme._open_thread(axme.intents, bigint, text, text, jsonb, jsonb) IS
    'Private: open a pending thread (task or completion) for an intent in an owner''s inbox.';

-- Assign a human task: SUBMITTED -> WAITING (WAITING_FOR_HUMAN), event intent.human_task_assigned,
-- a task thread in the inbox.  i: the intent row (locked or just inserted by this transaction).
CREATE FUNCTION axme._assign_task(i axme.intents, task jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    tid uuid;
    a axme.agents;
BEGIN
    SELECT * INTO a FROM axme.agents WHERE agent_id = i.agent_id;
    tid := axme._open_thread(i, a.agent_id, a.address, 'task', task, NULL);
    i.waiting_reason := 'WAITING_FOR_HUMAN';
    i.due_at := NULL;
    PERFORM axme._transition(i, 'WAITING', 'intent.human_task_assigned',
        jsonb_build_object('waiting_reason', 'WAITING_FOR_HUMAN', 'thread_id', tid, 'owner', a.address,
                           'task_type', task->>'task_type'));
    RETURN tid;
END $$;
COMMENT ON FUNCTION axme._assign_task(axme.intents, jsonb) IS
    'Private: SUBMITTED -> WAITING (WAITING_FOR_HUMAN) with event intent.human_task_assigned and a '
    'task thread in the receiving inbox. Returns the thread id.';

-- Called by send_intent (src/send.c) in the sending transaction, right after the intent was stored,
-- when the intent has a human_task, reply_to or escalate_to or goes to an inbox agent: checks them
-- and assigns the task.  An error undoes the send with the statement.
CREATE FUNCTION axme._inbox_on_send(p_intent_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    mode text;
    task jsonb;
    other axme.agents;
BEGIN
    SELECT * INTO STRICT i FROM axme.intents WHERE intent_id = p_intent_id;
    SELECT delivery_mode INTO STRICT mode FROM axme.agents WHERE agent_id = i.agent_id;
    IF i.human_task IS NOT NULL THEN
        IF mode <> 'inbox' THEN
            RAISE EXCEPTION 'intent field "human_task" is only for inbox agents: "%" has delivery mode %', i.to_agent, mode
                USING ERRCODE = '22023', HINT = 'Send tasks for people to an agent registered as inbox.';
        END IF;
        task := axme._check_human_task(i.human_task);
    ELSIF mode = 'inbox' THEN
        RAISE EXCEPTION 'intent field "human_task" is required for inbox agent "%"', i.to_agent
            USING ERRCODE = '22023', HINT = 'An inbox is a person''s queue: send it a human_task.';
    END IF;
    IF i.reply_to IS NOT NULL AND NOT EXISTS (SELECT FROM axme.agents WHERE address = i.reply_to) THEN
        RAISE EXCEPTION 'intent field "reply_to": agent "%" is not registered', i.reply_to
            USING ERRCODE = 'P0002', HINT = 'Register it first: SELECT axme.register_agent(''' || i.reply_to || ''', ''inbox'');';
    END IF;
    IF i.escalate_to IS NOT NULL THEN
        SELECT * INTO other FROM axme.agents WHERE address = i.escalate_to;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'intent field "escalate_to": agent "%" is not registered', i.escalate_to
                USING ERRCODE = 'P0002', HINT = 'Register it first: SELECT axme.register_agent(''' || i.escalate_to || ''', ''inbox'');';
        END IF;
        IF other.delivery_mode <> 'inbox' THEN
            RAISE EXCEPTION 'intent field "escalate_to": agent "%" has delivery mode %, not inbox', i.escalate_to, other.delivery_mode
                USING ERRCODE = '22023', HINT = 'Escalation moves a task to a person: use an inbox agent.';
        END IF;
    END IF;
    -- A task with not_before in the future stays SUBMITTED until then (axme._inbox_assign_due).
    IF task IS NOT NULL AND (i.due_at IS NULL OR i.due_at <= now()) THEN
        PERFORM axme._assign_task(i, task);
    END IF;
END $$;
COMMENT ON FUNCTION axme._inbox_on_send(uuid) IS
    'Private: send-time checks of human_task, reply_to and escalate_to, and assignment of the task '
    '(called by send_intent). Errors: 22023 invalid human_task, human_task for a non-inbox agent, '
    'inbox agent without human_task, escalate_to not an inbox; P0002 reply_to or escalate_to not registered.';

-- Assign the delayed tasks (not_before) whose time has come: for the timer loop, or anyone.
-- Returns how many were assigned.  Driven from the inbox agents, each read through the claim
-- index (agent_id, due_at) up to now: the cost follows what is due, never the size of history
-- (a join on delivery_mode let the planner scan all of axme.intents once it grew).
CREATE FUNCTION axme._inbox_assign_due(max_count integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    n integer := 0;
BEGIN
    PERFORM axme._disable_roleless('inbox');   -- an inbox whose owner role is gone: disabled
    FOR i IN
        SELECT x.* FROM axme.agents a
        CROSS JOIN LATERAL (
            SELECT y.* FROM axme.intents y
            WHERE y.agent_id = a.agent_id AND y.due_at <= now() AND y.status = 'SUBMITTED'
              AND y.human_task IS NOT NULL
            ORDER BY y.priority DESC, y.due_at LIMIT max_count
            FOR UPDATE OF y SKIP LOCKED) x
        WHERE a.delivery_mode = 'inbox' AND a.disabled_at IS NULL
        ORDER BY x.due_at LIMIT max_count
    LOOP
        PERFORM axme._assign_task(i, axme._check_human_task(i.human_task));
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION axme._inbox_assign_due(integer) IS
    'Private: assign human tasks whose not_before has passed (SUBMITTED -> WAITING with a task '
    'thread), at most max_count, oldest due first. Returns the number assigned.';

-- The open task thread of an intent, locked, or NULL.
CREATE FUNCTION axme._task_thread(p_intent_id uuid) RETURNS axme.threads
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
BEGIN
    SELECT * INTO t FROM axme.threads
    WHERE intent_id = p_intent_id AND kind = 'task' AND status <> 'done'
    ORDER BY created_at DESC LIMIT 1
    FOR UPDATE;
    RETURN t;
END $$;
COMMENT ON FUNCTION axme._task_thread(uuid) IS
    'Private: the open task thread of an intent, locked FOR UPDATE (all fields NULL when none).';

-- The agent_id of a registered agent address used as an inbox owner (any mode: reply_to
-- completions land in any agent's inbox), checking the listing's status filter.
CREATE FUNCTION axme._inbox_owner(owner text, status text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF status IS NOT NULL AND status NOT IN ('pending', 'active', 'done') THEN
        RAISE EXCEPTION 'argument "status" must be pending, active, done or NULL (open threads), got "%"', left(status, 100)
            USING ERRCODE = '22023';
    END IF;
    RETURN (axme._agent(owner, 'owner')).agent_id;
END $$;
COMMENT ON FUNCTION axme._inbox_owner(text, text) IS
    'Private: the agent_id of an inbox owner; 22023 invalid address or status, P0002 not registered.';

-- sec: the owner of axme.inbox after the caller check (42501 unless the caller receives for it).
-- SECURITY DEFINER (set by axme._secure(), which grants it to axme_agent) so that axme.inbox
-- itself can stay SECURITY INVOKER and inlinable; row-level security on axme.threads then binds
-- what axme.inbox reads as well.
CREATE FUNCTION axme._inbox_reader(owner text, status text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    o bigint := axme._inbox_owner(owner, status);
BEGIN
    PERFORM axme._check_receiver(o, 'inbox');
    RETURN o;
END $$;
COMMENT ON FUNCTION axme._inbox_reader(text, text) IS
    'Private: the agent_id of an inbox owner the caller receives for; 22023 invalid address or '
    'status, P0002 not registered, 42501 not the owner''s role (db_role) nor an admin.';

-- A plain SQL function so the planner inlines it: SELECT ... FROM axme.inbox(o) LIMIT 50 reads
-- 50 index entries, however many threads the owner has.  (sec: hence SECURITY INVOKER, unlike
-- the other public functions; the check is in axme._inbox_reader, evaluated once.)
CREATE FUNCTION axme.inbox(owner text, status text DEFAULT NULL)
RETURNS TABLE (thread_id uuid, intent_id uuid, kind text, status text, task_type text, title text,
               from_agent text, created_at timestamptz, due_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.thread_id, t.intent_id, t.kind, t.status, t.task_type, t.title, t.from_agent,
           t.created_at, t.due_at
    FROM axme.threads t
    WHERE t.owner_id = axme._inbox_reader(inbox.owner, inbox.status)   -- sec: the owner's role
      AND t.open = (inbox.status IS DISTINCT FROM 'done')
      AND (inbox.status IS NULL OR t.status = inbox.status)
    ORDER BY t.created_at DESC, t.thread_id DESC
$$;
COMMENT ON FUNCTION axme.inbox(text, text) IS
    'The threads of an inbox owner (a registered agent address), newest first. status: pending, '
    'active, done, or NULL for every open thread (pending and active). Returns thread_id, '
    'intent_id, kind (task | completion), status, task_type, title, from_agent, created_at, due_at '
    '(the intent''s deadline_at). Page with LIMIT/OFFSET. The owner''s role (option db_role) and '
    'admins only. Errors: 22023 invalid owner or status, P0002 owner not registered, 42501 not the '
    'owner''s role.';

-- The thread summary used by inbox_changes.
CREATE FUNCTION axme._thread_summary(t axme.threads) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('thread_id', t.thread_id, 'intent_id', t.intent_id, 'owner', t.owner,
        'kind', t.kind, 'status', t.status, 'task_type', t.task_type, 'title', t.title,
        'from_agent', t.from_agent, 'created_at', t.created_at, 'updated_at', t.updated_at,
        'due_at', t.due_at)
$$;
COMMENT ON FUNCTION axme._thread_summary(axme.threads) IS
    'Private: the JSON summary of a thread used by inbox_changes and inbox_thread.';

CREATE FUNCTION axme.inbox_thread(thread_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t axme.threads;
    i axme.intents;
BEGIN
    IF thread_id IS NULL THEN
        RAISE EXCEPTION 'argument "thread_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM axme.threads WHERE threads.thread_id = inbox_thread.thread_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'thread % does not exist', thread_id USING ERRCODE = 'P0002';
    END IF;
    SELECT * INTO i FROM axme.intents WHERE intents.intent_id = t.intent_id;
    -- sec: the owner's role, the intent's sending or receiving role, admins
    IF NOT (axme._can_receive(t.owner_id) OR axme._can_read_intent(i.sender_role, i.agent_id)) THEN
        RAISE EXCEPTION 'permission denied for thread %', t.thread_id
            USING ERRCODE = '42501',
                  DETAIL = 'Only the role of its owner (agent option db_role), the sending or receiving '
                           'role of its intent and members of axme_admin may read a thread.';
    END IF;
    RETURN axme._thread_summary(t) || jsonb_build_object(
        'task', t.task,
        'outcome', t.outcome,
        'closed_at', t.closed_at,
        'intent', jsonb_build_object('intent_id', i.intent_id, 'intent_type', i.intent_type,
                                     'status', i.status, 'waiting_reason', i.waiting_reason,
                                     'payload', i.payload, 'result', i.result,
                                     'correlation_id', i.correlation_id, 'deadline_at', i.deadline_at),
        'timeline', coalesce((SELECT jsonb_agg(jsonb_build_object('seq', e.seq, 'event_type', e.event_type,
                                  'status', e.status, 'at', e.at, 'actor', e.actor, 'details', e.details)
                                  ORDER BY e.seq)
                              FROM axme.events e WHERE e.intent_id = t.intent_id), '[]'),
        'messages', coalesce((SELECT jsonb_agg(jsonb_build_object('seq', m.seq, 'at', m.at, 'kind', m.kind,
                                  'actor', m.actor, 'actor_name', m.actor_name, 'body', m.body,
                                  'details', m.details) ORDER BY m.seq)
                              FROM axme.thread_messages m WHERE m.thread_id = t.thread_id), '[]'));
END $$;
COMMENT ON FUNCTION axme.inbox_thread(uuid) IS
    'One thread as JSON: thread_id, intent_id, owner, kind, status, task_type, title, from_agent, '
    'created_at, updated_at, due_at, closed_at, task (the normalised human_task), outcome '
    '(completion threads and closed tasks: status, result, error), intent (status, payload, '
    'result, ...), timeline (the intent''s events) and messages (the thread''s entries: opened, '
    'reply, delegated, reminder, escalated, decided, closed). Readable by the owner''s role, the '
    'intent''s sending and receiving roles and admins. Errors: 22023 NULL, P0002 unknown thread, '
    '42501 not allowed to read it.';

-- The task's assignees (AXME: the people who may respond) bind decide and reply while the task
-- is in the inbox it was sent to: the actor named (or the calling role's name) must be one of
-- them.  Once delegated or escalated, the thread's new owner decides who acts.
CREATE FUNCTION axme._check_assignee(t axme.threads, sent_to bigint, actor text, what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF t.kind = 'task' AND t.owner_id = sent_to AND jsonb_typeof(t.task->'assignees') = 'array'
       AND jsonb_array_length(t.task->'assignees') > 0
       AND NOT (t.task->'assignees' ? coalesce(actor, '') OR t.task->'assignees' ? axme._caller()) THEN
        RAISE EXCEPTION 'permission denied for %: "%" is not an assignee of this task', what,
                        left(coalesce(actor, axme._caller()), 255)
            USING ERRCODE = '42501',
                  DETAIL = 'Assignees: ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(t.task->'assignees') x) || '.',
                  HINT = 'Pass actor => one of the assignees, or delegate the thread to another inbox.';
    END IF;
END $$;
COMMENT ON FUNCTION axme._check_assignee(axme.threads, bigint, text, text) IS
    'Private: 42501 when the task thread has assignees, is still in the inbox it was sent to '
    '(sent_to), and neither actor nor the calling role''s name is one of them.';

CREATE FUNCTION axme.decide(intent_id uuid, outcome text, comment text DEFAULT NULL, data jsonb DEFAULT '{}',
                            actor text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents;
    t axme.threads;
    task jsonb;
    new_status text;
    schema jsonb;
    p record;
    req text;
    types jsonb;
    decision jsonb;
BEGIN
    -- sec: locked here rather than by _lock_intent, whose check is the intent's agent: a task is
    -- decided by its thread's current owner (after delegation or escalation, another inbox)
    IF intent_id IS NULL THEN
        RAISE EXCEPTION 'argument "intent_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO i FROM axme.intents x WHERE x.intent_id = decide.intent_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'intent % does not exist', intent_id USING ERRCODE = 'P0002';
    END IF;
    IF i.human_task IS NULL THEN
        PERFORM axme._check_receiver(i.agent_id, 'decide');   -- sec

        RAISE EXCEPTION 'intent % is not a human task', i.intent_id USING ERRCODE = '55000';
    END IF;
    IF i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') THEN
        RAISE EXCEPTION 'the task of intent % is finished (status %)', i.intent_id, i.status
            USING ERRCODE = '55000', HINT = 'A task is decided once.';
    END IF;
    t := axme._task_thread(i.intent_id);
    IF t.thread_id IS NULL THEN
        PERFORM axme._check_receiver(i.agent_id, 'decide');   -- sec
        RAISE EXCEPTION 'the task of intent % is not assigned yet (status %)', i.intent_id, i.status
            USING ERRCODE = '55000';
    END IF;
    PERFORM axme._check_receiver(t.owner_id, 'decide');   -- sec: the thread's current owner
    PERFORM axme._check_assignee(t, i.agent_id, actor, 'decide');
    task := t.task;
    IF outcome IS NULL THEN
        RAISE EXCEPTION 'argument "outcome" must not be null' USING ERRCODE = '22023';
    END IF;
    IF NOT (task->'allowed_outcomes') ? outcome THEN
        RAISE EXCEPTION 'argument "outcome": "%" is not an allowed outcome of this % task', left(outcome, 100), task->>'task_type'
            USING ERRCODE = '22023',
                  HINT = 'Allowed: ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(task->'allowed_outcomes') x) || '.';
    END IF;
    IF data IS NULL OR jsonb_typeof(data) <> 'object' THEN
        RAISE EXCEPTION 'argument "data" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF (task->>'required_comment')::boolean AND btrim(coalesce(comment, '')) = '' THEN
        RAISE EXCEPTION 'argument "comment" is required for this % task', task->>'task_type'
            USING ERRCODE = '22023';
    END IF;
    IF length(comment) > 10000 THEN
        RAISE EXCEPTION 'argument "comment" must be at most 10000 characters, got %', length(comment)
            USING ERRCODE = '22023';
    END IF;
    IF length(actor) > 255 THEN
        RAISE EXCEPTION 'argument "actor" must be at most 255 characters, got %', length(actor)
            USING ERRCODE = '22023';
    END IF;
    IF (task->>'evidence_required')::boolean
       AND (NOT data ? 'evidence' OR jsonb_typeof(data->'evidence') = 'null'
            OR data->'evidence' IN ('""', '[]', '{}')) THEN
        RAISE EXCEPTION 'argument "data": "evidence" is required for this % task', task->>'task_type'
            USING ERRCODE = '22023', HINT = 'Pass data => ''{"evidence": ...}'' (a photo URL, a reference, a note).';
    END IF;
    schema := task->'form_schema';
    IF jsonb_typeof(schema) = 'object' THEN
        FOR req IN SELECT jsonb_array_elements_text(coalesce(schema->'required', '[]')) LOOP
            IF NOT data ? req THEN
                RAISE EXCEPTION 'argument "data": required field "%" is missing', left(req, 100)
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
        FOR p IN SELECT key, value FROM jsonb_each(coalesce(schema->'properties', '{}')) LOOP
            CONTINUE WHEN NOT data ? p.key OR NOT p.value ? 'type';
            types := CASE WHEN jsonb_typeof(p.value->'type') = 'array' THEN p.value->'type'
                          ELSE jsonb_build_array(p.value->'type') END;
            IF NOT EXISTS (SELECT FROM jsonb_array_elements_text(types) x WHERE axme._json_has_type(data->p.key, x)) THEN
                RAISE EXCEPTION 'argument "data": field "%" must be of type %, got %', left(p.key, 100),
                                CASE WHEN jsonb_array_length(types) = 1 THEN types->>0 ELSE types::text END,
                                jsonb_typeof(data->p.key)
                    USING ERRCODE = '22023';
            END IF;
        END LOOP;
    END IF;
    new_status := axme._task_outcomes(task->>'task_type')->>outcome;
    decision := jsonb_build_object('outcome', outcome, 'comment', comment, 'data', data,
                                   'actor', axme._caller(), 'actor_name', actor,   -- sec
                                   'decided_at', clock_timestamp());
    PERFORM axme._thread_message(t.thread_id, 'decided', actor, comment,
        jsonb_build_object('outcome', outcome, 'data', data, 'status', new_status));
    i.result := decision;
    IF new_status = 'FAILED' THEN
        i.error := decision;
    END IF;
    i.waiting_reason := NULL;
    -- the trigger on axme.intents closes the thread (and sends the reply_to completion)
    PERFORM axme._transition(i, new_status, 'intent.' || lower(new_status),
        jsonb_build_object('outcome', outcome, 'actor', axme._caller(), 'actor_name', actor,   -- sec
                           'thread_id', t.thread_id));
END $$;
COMMENT ON FUNCTION axme.decide(uuid, text, text, jsonb, text) IS
    'Decide a human task. outcome: one of the task''s allowed_outcomes; comment: required when the '
    'task says required_comment and always for clarification and override (at most 10000 '
    'characters); data: a JSON object, must hold "evidence" when evidence is required (default for '
    'manual_action and attach_file) and satisfy the form_schema''s required fields and basic types; '
    'actor: a display name (at most 255 characters) kept beside the recorded actor, which is always '
    'the current role (SET ROLE honoured); when the task has assignees and is still in the inbox it '
    'was sent to, actor (or the role''s name) must be one of them. The intent takes the status of '
    'the outcome (approved/confirmed/assigned/completed/provided/changes_requested/'
    'override_approved -> COMPLETED, rejected/declined -> CANCELED, failed -> FAILED) with result '
    '{outcome, comment, data, actor, actor_name, decided_at}. '
    'Only the role of the task thread''s current owner (option db_role of that inbox) and admins may '
    'decide. Errors: 22023 NULL or invalid argument, P0002 unknown intent, 42501 not the owner''s '
    'role or not an assignee, 55000 not a human task, not assigned yet, or already finished '
    '(deciding twice).';

-- The thread row locked, or P0002.
CREATE FUNCTION axme._lock_thread(p_thread_id uuid) RETURNS axme.threads
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
BEGIN
    IF p_thread_id IS NULL THEN
        RAISE EXCEPTION 'argument "thread_id" must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO t FROM axme.threads WHERE thread_id = p_thread_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'thread % does not exist', p_thread_id USING ERRCODE = 'P0002';
    END IF;
    RETURN t;
END $$;
COMMENT ON FUNCTION axme._lock_thread(uuid) IS
    'Private: the thread row locked FOR UPDATE; 22023 NULL, P0002 unknown thread.';

CREATE FUNCTION axme.reply(thread_id uuid, message text, actor text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
BEGIN
    IF message IS NULL OR btrim(message) = '' OR length(message) > 10000 THEN
        RAISE EXCEPTION 'argument "message" must be a non-empty text of at most 10000 characters'
            USING ERRCODE = '22023';
    END IF;
    IF length(actor) > 255 THEN
        RAISE EXCEPTION 'argument "actor" must be at most 255 characters, got %', length(actor)
            USING ERRCODE = '22023';
    END IF;
    t := axme._lock_thread(thread_id);
    PERFORM axme._check_receiver(t.owner_id, 'reply');   -- sec: the thread's owner
    IF t.status = 'done' THEN
        RAISE EXCEPTION 'thread % is done', t.thread_id USING ERRCODE = '55000';
    END IF;
    PERFORM axme._check_assignee(t, (SELECT x.agent_id FROM axme.intents x WHERE x.intent_id = t.intent_id),
                                 actor, 'reply');
    PERFORM axme._thread_message(t.thread_id, 'reply', actor, message);
    UPDATE axme.threads SET status = 'active', updated_at = now() WHERE threads.thread_id = t.thread_id;
    PERFORM axme._thread_changed(t.thread_id, t.intent_id, ARRAY[t.owner_id]);
END $$;
COMMENT ON FUNCTION axme.reply(uuid, text, text) IS
    'Add a message (1..10000 characters) to an open thread; the thread becomes active. actor: a '
    'display name kept beside the recorded role (the caller, SET ROLE honoured); on a task with '
    'assignees still in the inbox it was sent to, actor (or the role''s name) must be one of them. '
    'The owner''s role and admins only. Errors: 22023 NULL or invalid argument, P0002 unknown '
    'thread, 42501 not the owner''s role or not an assignee, 55000 thread done.';

CREATE FUNCTION axme.delegate(thread_id uuid, to_owner text, note text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t axme.threads;
    a axme.agents;
BEGIN
    a := axme._agent(to_owner, 'to_owner');
    IF a.delivery_mode <> 'inbox' THEN
        RAISE EXCEPTION 'argument "to_owner": agent "%" has delivery mode %, not inbox', a.address, a.delivery_mode
            USING ERRCODE = '22023';
    END IF;
    IF length(note) > 10000 THEN
        RAISE EXCEPTION 'argument "note" must be at most 10000 characters, got %', length(note)
            USING ERRCODE = '22023';
    END IF;
    t := axme._lock_thread(thread_id);
    PERFORM axme._check_receiver(t.owner_id, 'delegate');   -- sec: the thread's owner
    IF t.kind <> 'task' THEN
        RAISE EXCEPTION 'thread % is a completion thread: only task threads can be delegated', t.thread_id
            USING ERRCODE = '55000';
    END IF;
    IF t.status = 'done' THEN
        RAISE EXCEPTION 'thread % is done', t.thread_id USING ERRCODE = '55000';
    END IF;
    IF a.agent_id = t.owner_id THEN
        RAISE EXCEPTION 'argument "to_owner": the thread is already in the inbox of "%"', a.address
            USING ERRCODE = '22023';
    END IF;
    PERFORM axme._thread_message(t.thread_id, 'delegated', NULL, note,
        jsonb_build_object('from', t.owner, 'to', a.address));
    UPDATE axme.threads SET owner_id = a.agent_id, owner = a.address, status = 'active', updated_at = now()
    WHERE threads.thread_id = t.thread_id;
    PERFORM axme._thread_changed(t.thread_id, t.intent_id, ARRAY[t.owner_id, a.agent_id]);
END $$;
COMMENT ON FUNCTION axme.delegate(uuid, text, text) IS
    'Move an open task thread to another inbox (a registered agent of mode inbox); the thread '
    'becomes active and both owners are notified; note (at most 10000 characters) goes into the '
    'timeline. The current owner''s role and admins only. Errors: 22023 invalid argument, to_owner '
    'not an inbox or already the owner, P0002 unknown thread or to_owner not registered, 42501 not '
    'the owner''s role, 55000 thread done or a completion thread.';

CREATE FUNCTION axme.inbox_changes(owner text, cursor text DEFAULT NULL, max_count integer DEFAULT 50)
RETURNS TABLE (changes jsonb, next_cursor text, has_more boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    o bigint := axme._inbox_owner(owner, NULL);
    since_xid xid8 := '0';
    since_seq bigint := 0;
    bound xid8 := pg_snapshot_xmin(pg_current_snapshot());
    last_xid xid8;
    last_seq bigint;
BEGIN
    PERFORM axme._check_receiver(o, 'inbox_changes');   -- sec: the owner's role
    IF cursor IS NOT NULL AND cursor <> '' THEN
        IF cursor !~ '^[0-9]{1,19}:[0-9]{1,19}$' THEN
            RAISE EXCEPTION 'argument "cursor" is not a cursor returned by inbox_changes: "%"', left(cursor, 100)
                USING ERRCODE = '22023';
        END IF;
        BEGIN
            since_xid := split_part(cursor, ':', 1)::xid8;
            since_seq := split_part(cursor, ':', 2)::bigint;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'argument "cursor" is not a cursor returned by inbox_changes: "%"', left(cursor, 100)
                USING ERRCODE = '22023';
        END;
    END IF;
    IF max_count IS NULL OR max_count NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'argument "max_count" must be between 1 and 1000, got %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    -- Only changes of transactions below the snapshot's xmin: every one of those has ended, and
    -- every transaction still to commit has a larger id, so nothing can appear behind the cursor.
    SELECT coalesce(jsonb_agg(jsonb_build_object('cursor', f.xid::text || ':' || f.change_seq,
                                                 'thread', axme._thread_summary(t))
                              ORDER BY f.xid, f.change_seq), '[]'),
           (array_agg(f.xid ORDER BY f.xid DESC, f.change_seq DESC))[1],
           (array_agg(f.change_seq ORDER BY f.xid DESC, f.change_seq DESC))[1]
    INTO changes, last_xid, last_seq
    FROM (SELECT * FROM axme.inbox_feed x
          WHERE x.owner_id = o AND (x.xid, x.change_seq) > (since_xid, since_seq) AND x.xid < bound
          ORDER BY x.xid, x.change_seq LIMIT max_count) f
    JOIN axme.threads t ON t.thread_id = f.thread_id;
    IF last_xid IS NULL THEN
        last_xid := since_xid;
        last_seq := since_seq;
    END IF;
    next_cursor := last_xid::text || ':' || last_seq;
    has_more := EXISTS (SELECT FROM axme.inbox_feed x
                        WHERE x.owner_id = o AND (x.xid, x.change_seq) > (last_xid, last_seq) AND x.xid < bound);
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION axme.inbox_changes(text, text, integer) IS
    'Changes to an owner''s threads after cursor (NULL: from the beginning), in commit-safe order, '
    'at most max_count (1..1000): exactly one row with changes = [{cursor, thread}, ...] (thread: '
    'the thread''s current summary; a thread that moved to another owner is reported to the old '
    'owner once more with its new owner), next_cursor to pass next time (the same cursor when '
    'nothing is new), and has_more. A thread changed several times since cursor appears once, at its '
    'last change. Never misses a change, even when transactions commit out of order: a change is '
    'reported once every transaction that was writing when it was made has ended (bounded by '
    'pg_snapshot_xmin), so a long-running writing transaction delays it. '
    'The owner''s role and admins only. '
    'Errors: 22023 invalid owner, cursor or max_count, P0002 owner not registered, 42501 not the owner''s role.';

-- The current owner of an intent's work: its open task thread's owner, else the receiving agent.
CREATE FUNCTION axme._current_owner(i axme.intents, OUT owner_id bigint, OUT owner text, OUT t axme.threads)
LANGUAGE plpgsql AS $$
BEGIN
    t := axme._task_thread(i.intent_id);
    IF t.thread_id IS NOT NULL THEN
        owner_id := t.owner_id;
        owner := t.owner;
    ELSE
        owner_id := i.agent_id;
        owner := i.to_agent;
    END IF;
END $$;
COMMENT ON FUNCTION axme._current_owner(axme.intents) IS
    'Private: the current owner of an intent''s work: its open task thread''s owner (and the thread, locked), else the receiving agent.';
