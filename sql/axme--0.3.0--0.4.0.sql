/* axme 0.3.0 -> 0.4.0.
 *
 * From 0.4.0 on, the current definition of every object is in the concern files under sql/src/ and the fresh install
 * script sql/axme--0.4.0.sql is built from those files.  This script holds only what changed
 * since 0.3.0; test_upgrade compares the result with a fresh install, object by object.
 */
\echo Use "ALTER EXTENSION axme UPDATE" to load this file. \quit

-- Comments that cited a document users do not have.
COMMENT ON FUNCTION axme._valid_address(text) IS
    'Private: true when address is a valid agent address, agent://org/workspace/name.';
COMMENT ON DOMAIN axme.intent_status IS
    'An intent status: CREATED, SUBMITTED, DELIVERED, ACKNOWLEDGED, IN_PROGRESS, WAITING, COMPLETED, FAILED, CANCELED or TIMED_OUT.';

-- axme.cancel: the sender ends its own intent (sql/src/40_lifecycle.sql).
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

-- replay_dead_letters by filter (sql/src/45_retries.sql): the two-argument form goes, an overload
-- would make replay_dead_letters('a') ambiguous (42725).
DROP FUNCTION axme.replay_dead_letters(text, timestamptz);
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

-- delivery_attempts by agent address (sql/src/50_http.sql).
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

-- The 14 task types of the AXME protocol, each stored and enforced as itself; assignees bind
-- decide and reply (sql/src/60_inbox.sql).
CREATE OR REPLACE FUNCTION axme._task_outcomes(task_type text) RETURNS jsonb
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


CREATE OR REPLACE FUNCTION axme._task_type(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE name
        -- not an AXME type: the structured input of axme before 0.4.0, now provide_data
        WHEN 'form' THEN 'provide_data'
        ELSE CASE WHEN axme._task_outcomes(name) IS NOT NULL THEN name END
    END
$$;
COMMENT ON FUNCTION axme._task_type(text) IS
    'Private: the task type of a type name (form, accepted from before 0.4.0, is provide_data), NULL when unknown.';


CREATE OR REPLACE FUNCTION axme._check_human_task(task jsonb) RETURNS jsonb
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


CREATE OR REPLACE FUNCTION axme._check_assignee(t axme.threads, sent_to bigint, actor text, what text) RETURNS void
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


CREATE OR REPLACE FUNCTION axme.decide(intent_id uuid, outcome text, comment text DEFAULT NULL, data jsonb DEFAULT '{}',
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


CREATE OR REPLACE FUNCTION axme.reply(thread_id uuid, message text, actor text DEFAULT NULL) RETURNS void
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



-- Tasks sent before 0.4.0 under a type that was folded into another (provide_data, attach_file
-- and form into form, validate_* into confirmation, delegation and reroute into assignment,
-- escalate into approval) get the type they were sent as (form: provide_data); their stored
-- outcomes, comment and evidence rules stay as they were.
UPDATE axme.threads SET
    task = task || jsonb_build_object('task_type', axme._task_type(task->>'type_name')),
    task_type = axme._task_type(task->>'type_name')
WHERE kind = 'task' AND axme._task_type(task->>'type_name') IS NOT NULL
  AND axme._task_type(task->>'type_name') IS DISTINCT FROM task->>'task_type';
-- A task not assigned yet (not_before in the future) is normalised when it is assigned: an
-- attach_file sent before 0.4.0 keeps evidence optional, as it was when sent.
UPDATE axme.intents SET human_task = human_task || '{"evidence_required": false}'
WHERE human_task->>'task_type' = 'attach_file' AND status = 'SUBMITTED'
  AND jsonb_typeof(human_task->'evidence_required') IS DISTINCT FROM 'boolean';

-- render_request and ping_agent (sql/src/50_http.sql).
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
-- created_at is formatted in the server's TimeZone (the worker's), whatever the session's is.
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

-- W3C Trace Context (sql/src/30_send.sql, 40_lifecycle.sql, 50_http.sql): traceparent and tracestate
-- are stored, shown by get_intent, returned by poll and sent as webhook headers.
ALTER TABLE axme.intents ADD COLUMN traceparent text, ADD COLUMN tracestate text;
COMMENT ON COLUMN axme.intents.traceparent IS
    'W3C traceparent the sender gave (validated at send; none is generated when absent): sent as a header on every webhook attempt, returned by poll.';
COMMENT ON COLUMN axme.intents.tracestate IS
    'W3C tracestate the sender gave with its traceparent: sent as a header on every webhook attempt.';

CREATE OR REPLACE FUNCTION axme._document(i axme.intents) RETURNS jsonb
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

-- poll returns traceparent as its last column: its RETURNS TABLE changes, so DROP and CREATE (a
-- user view over poll blocks this update; positional unpacking of poll's rows sees one more column).
DROP FUNCTION axme.poll(text, integer, interval);
CREATE FUNCTION axme.poll(agent text, max_count integer DEFAULT 1, lease interval DEFAULT '30 seconds')
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
                       u.status, axme._caller(),   -- sec: the caller, not the definer
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



CREATE OR REPLACE FUNCTION axme._http_claim(max_total integer, busy_agents bigint[], busy_counts integer[])
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



-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'get_intent', 'intent_events', 'wait_for', 'channel', 'cancel',
                               'render_request',
                               'inbox_thread'];   -- the thread of a human task it sent
    agent_fns text[] := ARRAY['poll', 'ack', 'progress', 'extend_lease', 'complete', 'complete_many',
                              'fail', 'resolve', 'replay', 'replay_dead_letters', 'channel',
                              'get_intent', 'intent_events', 'wait_for', 'render_request', 'ping_agent',
                              -- inbox and human tasks
                              'decide', 'reply', 'delegate', 'inbox', 'inbox_thread', 'inbox_changes'];
    -- monitoring: also for pg_monitor (the role exporters run as), checked by _check_monitor
    monitor_fns text[] := ARRAY['metrics'];
    -- public functions that stay SECURITY INVOKER so that the planner can inline them (it never
    -- inlines a SECURITY DEFINER function or one with SET): their caller check is a private
    -- SECURITY DEFINER helper below, and row-level security binds what they read
    invoker_fns text[] := ARRAY['inbox'];
    -- private helpers those call: SECURITY DEFINER with the pinned search_path, EXECUTE for the
    -- roles that may call the public function
    definer_private_fns text[] := ARRAY['_inbox_reader'];
    roles text := 'axme_admin, axme_sender, axme_agent';
    f record;
    t record;
    pol text;   -- (SELECT f()) of a constant: an InitPlan, evaluated once per query, not per row
    what text;
    cols text;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA axme TO ' || roles || ', pg_monitor';

    -- Functions
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname, p.prosecdef, p.proconfig
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind IN ('f', 'p')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, pg_monitor, %s', f.sig, roles);
        IF f.proname = ANY (definer_private_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin, axme_agent', f.sig);
        END IF;
        CONTINUE WHEN left(f.proname, 1) = '_';
        CONTINUE WHEN (SELECT p.prorettype IN ('trigger'::regtype, 'event_trigger'::regtype)
                       FROM pg_catalog.pg_proc p WHERE p.oid = f.sig);
        IF f.proname = ANY (invoker_fns) THEN
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER RESET ALL', f.sig);
        ELSE
            EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, axme, pg_temp', f.sig);
        END IF;
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        IF f.proname = ANY (sender_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_sender', f.sig);
        END IF;
        IF f.proname = ANY (agent_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_agent', f.sig);
        END IF;
        IF f.proname = ANY (monitor_fns) THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO pg_monitor', f.sig);
        END IF;
    END LOOP;
    -- row-level security policies call this one as the reader
    EXECUTE 'GRANT EXECUTE ON FUNCTION axme._user_has(text) TO ' || roles;

    -- Tables.  The policy of a table other than agents and intents is the OR of the rules its
    -- columns allow: intent_id uuid (rows of the intents the reader may read), thread_id uuid
    -- (rows of the threads it may read, when axme.threads exists), agent_id or owner_id integer
    -- (rows of the agents it receives for); none of them, or a name containing "secret": admins.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'intent_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped) AS has_intent,
               EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'thread_id'
                       AND a.atttypid = 'uuid'::regtype AND NOT a.attisdropped)
                   AND c.relname <> 'threads' AND pg_catalog.to_regclass('axme.threads') IS NOT NULL AS has_thread,
               (SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname IN ('agent_id', 'owner_id') AND NOT a.attisdropped
                  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                ORDER BY a.attname LIMIT 1) AS agent_col
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('r', 'p')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        IF EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.rel AND p.polname = 'axme_read') THEN
            EXECUTE pg_catalog.format('DROP POLICY axme_read ON %s', t.rel);
        END IF;
        IF t.relname LIKE '%secret%' THEN
            pol := NULL;
        ELSIF t.relname = 'agents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'') OR axme._user_has(''axme_sender'') OR axme._user_has(''axme_agent''))';
            what := 'Every agent, for axme_admin, axme_sender and axme_agent members.';
        ELSIF t.relname = 'intents' THEN
            pol := '(SELECT axme._user_has(''axme_admin'')) OR axme._user_has(sender_role) OR agent_id IN '
                   '(SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))';
            what := 'Intents whose sending role or whose agent''s db_role the reader has; all for axme_admin members.';
        ELSE
            pol := '';
            what := 'Rows';
            IF t.has_intent THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.intents i WHERE i.intent_id = %s.intent_id)', t.rel);
                what := what || ' of the intents the reader may read,';
            END IF;
            IF t.has_thread THEN
                pol := pol || pg_catalog.format(' OR EXISTS (SELECT FROM axme.threads th WHERE th.thread_id = %s.thread_id)', t.rel);
                what := what || ' of the threads the reader may read,';
            END IF;
            IF t.agent_col IS NOT NULL THEN
                -- first after the admin test: OR stops at the first true part, and this one is a
                -- small hashed list of agents (a receiver listing its inbox never probes intents)
                pol := pg_catalog.format(' OR %s.%I IN (SELECT a.agent_id FROM axme.agents a WHERE axme._user_has(a.db_role))',
                                         t.rel, t.agent_col) || pol;
                what := what || pg_catalog.format(' of the agents (%s) whose db_role the reader has,', t.agent_col);
            END IF;
            IF pol = '' THEN
                pol := NULL;
            ELSE
                pol := '(SELECT axme._user_has(''axme_admin''))' || pol;
                what := rtrim(what, ',') || '; all for axme_admin members.';
            END IF;
        END IF;
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        IF pol IS NULL THEN
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING ((SELECT axme._user_has(''axme_admin'')))', t.rel);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel,
                'Rows readable by members of axme_admin only (superusers bypass row-level security).');
        ELSE
            EXECUTE pg_catalog.format('CREATE POLICY axme_read ON %s FOR SELECT USING (%s)', t.rel, pol);
            EXECUTE pg_catalog.format('COMMENT ON POLICY axme_read ON %s IS %L', t.rel, what);
            IF t.relname = 'agents' THEN
                SELECT string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
                FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = t.rel AND a.attnum > 0 AND NOT a.attisdropped
                  AND a.attname NOT IN ('options', 'endpoint_url');
                EXECUTE pg_catalog.format('GRANT SELECT (%s) ON TABLE %s TO axme_sender, axme_agent', cols, t.rel);
            ELSE
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Views: evaluated with the reader's rights (security_invoker), so the policies above apply.
    -- A view is for admins only when it reads something a sender may not (a column such as
    -- agents.options, an admin-only table or view, a private function: those get EXECUTE for
    -- axme_admin) or when its name contains "secret".  Materialized views have no row-level
    -- security: admins only.  In creation order, so a view over a view sees its grants.
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname, c.relkind FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('v', 'm')
        ORDER BY c.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC, %s', t.rel, roles);
        EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_admin', t.rel);
        FOR f IN
            SELECT DISTINCT d.refobjid::regprocedure AS sig, NULL::text AS proname, NULL::boolean AS prosecdef,
                   NULL::text[] AS proconfig
            FROM pg_catalog.pg_rewrite rw
            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
            JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
            WHERE rw.ev_class = t.rel AND p.pronamespace = 'axme'::regnamespace AND left(p.proname, 1) = '_'
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO axme_admin', f.sig);
        END LOOP;
        IF t.relkind = 'v' THEN
            EXECUTE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true)', t.rel);
            IF t.relname NOT LIKE '%secret%' AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_rewrite rw
                JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                WHERE rw.ev_class = t.rel
                  AND CASE WHEN d.refclassid = 'pg_class'::regclass AND d.refobjid <> t.rel THEN
                           CASE WHEN d.refobjsubid > 0
                                THEN NOT pg_catalog.has_column_privilege('axme_sender', d.refobjid, d.refobjsubid::smallint, 'SELECT')
                                ELSE NOT pg_catalog.has_table_privilege('axme_sender', d.refobjid, 'SELECT') END
                           WHEN d.refclassid = 'pg_proc'::regclass THEN
                                NOT pg_catalog.has_function_privilege('axme_sender', d.refobjid, 'EXECUTE')
                           ELSE false END) THEN
                EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO axme_sender, axme_agent', t.rel);
            END IF;
        END IF;
    END LOOP;

    -- Sequences: only the functions use them.
    FOR t IN
        SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'S'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC, %s', t.rel, roles);
    END LOOP;
END $$;
COMMENT ON FUNCTION axme._secure() IS
    'Private: apply the security model (SECURITY DEFINER with a pinned search_path, EXECUTE grants, '
    'row-level security, security_invoker views) to everything in schema axme. Idempotent; the last '
    'step of every upgrade script.';

-- Comments that named the processes by their old names: the delivery worker (formerly "the http
-- worker", backend_type 'axme worker') and the handler worker (formerly "the internal worker").
-- send_intent's errors: 40001 when the conflicting idempotency key is gone when read back; its
-- trace context fields (traceparent, tracestate).
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
COMMENT ON FUNCTION axme.pause_agent(text) IS
    'Pause an agent: from the commit on, nothing more is handed out to it (poll returns no rows, '
    'the delivery and handler workers skip it); its intents wait and are not charged attempts. '
    'Intents already handed out keep their leases. Idempotent. Admins only. Errors: 42501 not an '
    'admin, 22023 invalid address, P0002 agent not registered.';
COMMENT ON FUNCTION axme._wake_http() IS
    'Private: wake this database''s delivery worker when the current transaction commits (or have the '
    'launcher start one).';
COMMENT ON FUNCTION axme._http_wake_trigger() IS
    'Private: row trigger on axme.intents; an intent became due, wake the delivery worker at commit.';
COMMENT ON FUNCTION axme._http_claim(integer, bigint[], integer[]) IS
    'Private (delivery worker): claim due intents of http agents within the worker''s and each agent''s '
    'limits (max_in_flight, slow start, breaker, rate limit, paused / disabled agents) and return '
    'what to send. Moves half-open breakers and spends rate-limit tokens.';
COMMENT ON FUNCTION axme._http_next_due(bigint[], integer[]) IS
    'Private (delivery worker): when an http agent can next be handed something (NULL: nothing due).';
COMMENT ON FUNCTION axme._http_record_batch(uuid[], integer[], bigint[], timestamptz[], double precision[],
                                            integer[], text[], text[], text[], text[], bigint[]) IS
    'Private (delivery worker): record finished attempts and move their intents on, then update the '
    'endpoints'' breaker, slow start and health (axme._endpoint_observe).';
COMMENT ON FUNCTION axme._internal_claim() IS
    'Private: hand the oldest due intent of an internal agent to the handler worker (DELIVERED).';
COMMENT ON VIEW axme.worker_status IS
    'The running axme workers of the cluster (shared memory): kind (delivery worker), database, pid, state '
    '(idle, delivering, cleanup, waiting for ALTER EXTENSION axme UPDATE, ...), in_flight requests, '
    'deliveries_per_second (outcomes recorded over the last 10 s), deliveries_total, last_error and '
    'when, started_at. Needs shared_preload_libraries = axme (empty otherwise).';

-- The database's delivery worker, waiting for this update, resumes at commit.
SELECT axme._wake_http();

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
