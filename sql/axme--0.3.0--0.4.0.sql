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

-- The security model (sql/src/90_security.sql), re-created whenever its lists change.
CREATE OR REPLACE FUNCTION axme._secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sender_fns text[] := ARRAY['send_intent', 'get_intent', 'intent_events', 'wait_for', 'channel', 'cancel',
                               'inbox_thread'];   -- the thread of a human task it sent
    agent_fns text[] := ARRAY['poll', 'ack', 'progress', 'extend_lease', 'complete', 'complete_many',
                              'fail', 'resolve', 'replay', 'replay_dead_letters', 'channel',
                              'get_intent', 'intent_events', 'wait_for',
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

-- The worker waiting for this update serves the database at its commit.
SELECT axme._wake_http();

-- Last: the security model covers every object, old and new.
SELECT axme._secure();
