-- Fan-out: agents subscribe to intent types (dotted, with AMQP wildcards) and an optional
-- payload filter; axme.publish sends one intent per matching subscription, in the sender's
-- transaction, each an ordinary intent (its own lifecycle, retries, dead letters) sharing the
-- correlation id and a fanout_id.  Every intent goes through send_intent's own parse and store.

CREATE SEQUENCE axme.subscriptions_subscription_id_seq;
SELECT pg_catalog.pg_extension_config_dump('axme.subscriptions_subscription_id_seq', '');
CREATE TABLE axme.subscriptions (
    subscription_id     bigint PRIMARY KEY DEFAULT nextval('axme.subscriptions_subscription_id_seq'),
    agent_id            bigint NOT NULL REFERENCES axme.agents ON DELETE CASCADE,
    intent_type_pattern text NOT NULL,
    filter              jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text NOT NULL
);
ALTER SEQUENCE axme.subscriptions_subscription_id_seq OWNED BY axme.subscriptions.subscription_id;
COMMENT ON TABLE axme.subscriptions IS
    'Fan-out subscriptions: the agent receives a copy of every published intent whose type matches '
    'intent_type_pattern (* one segment, # zero or more) and whose payload contains filter.';
CREATE INDEX subscriptions_agent_idx ON axme.subscriptions (agent_id);
SELECT pg_catalog.pg_extension_config_dump('axme.subscriptions', '');

CREATE TABLE axme.fanouts (
    fanout_id    uuid PRIMARY KEY,
    sender_role  regrole NOT NULL,
    sender       text NOT NULL,
    key          text,
    request_hash text NOT NULL,
    intent_ids   uuid[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE axme.fanouts IS
    'One row per publish with an idempotency key: (sender_role, sender, key) -> the fanout_id and '
    'the intents it created, in subscription order (none when nothing matched).';
CREATE UNIQUE INDEX fanouts_key_idx ON axme.fanouts (sender_role, sender, key);
SELECT pg_catalog.pg_extension_config_dump('axme.fanouts', '');

-- Whether a dotted intent type matches a pattern: * is one segment, # zero or more (AMQP).
CREATE FUNCTION axme._segments_match(p text[], t text[]) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF cardinality(p) = 0 THEN
        RETURN cardinality(t) = 0;
    ELSIF p[1] = '#' THEN
        RETURN axme._segments_match(p[2:], t) OR (cardinality(t) > 0 AND axme._segments_match(p, t[2:]));
    ELSIF cardinality(t) = 0 THEN
        RETURN false;
    ELSIF p[1] = '*' OR p[1] = t[1] THEN
        RETURN axme._segments_match(p[2:], t[2:]);
    END IF;
    RETURN false;
END $$;
COMMENT ON FUNCTION axme._segments_match(text[], text[]) IS
    'Private: whether type segments t match pattern segments p (* one segment, # zero or more).';
CREATE FUNCTION axme._type_matches(pattern text, intent_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT axme._segments_match(pg_catalog.string_to_array($1, '.'), pg_catalog.string_to_array($2, '.'))
$$;
COMMENT ON FUNCTION axme._type_matches(text, text) IS
    'Private: whether a dotted intent type matches a subscription pattern.';

CREATE FUNCTION axme.subscribe(agent text, intent_type_pattern text, filter jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    a axme.agents;
    id bigint;
BEGIN
    a := axme._agent(agent, 'agent');
    PERFORM axme._check_receiver(a.agent_id, 'subscribe');   -- sec
    IF intent_type_pattern IS NULL OR length(intent_type_pattern) > 255
       OR intent_type_pattern !~ '^([A-Za-z0-9_-]+|\*|#)(\.([A-Za-z0-9_-]+|\*|#))*$' THEN
        RAISE EXCEPTION 'argument "intent_type_pattern" must be dotted segments of letters, digits, _ or -, '
                        'or * (one segment) or # (zero or more), at most 255 characters, got %',
                        coalesce(pg_catalog.quote_literal(left(intent_type_pattern, 100)), 'NULL')
            USING ERRCODE = '22023', HINT = 'For example intent.order.# or intent.*.created.v1.';
    END IF;
    IF filter IS NOT NULL AND jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'argument "filter" must be a JSON object (contained in the payload), got %', jsonb_typeof(filter)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO axme.subscriptions (agent_id, intent_type_pattern, filter, created_by)
    VALUES (a.agent_id, subscribe.intent_type_pattern, subscribe.filter, axme._caller())
    RETURNING subscription_id INTO id;
    RETURN id;
END $$;
COMMENT ON FUNCTION axme.subscribe(text, text, jsonb) IS
    'Subscribe an agent to published intents whose type matches intent_type_pattern (* one '
    'segment, # zero or more) and, when filter is given, whose payload contains it (@>); returns the '
    'subscription id.  The agent''s receiver or an admin.  22023 bad pattern or filter, P0002 no such '
    'agent, 42501 not its receiver.';

CREATE FUNCTION axme.unsubscribe(subscription_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ag bigint;
BEGIN
    SELECT s.agent_id INTO ag FROM axme.subscriptions s WHERE s.subscription_id = unsubscribe.subscription_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', coalesce(subscription_id::text, 'NULL')
            USING ERRCODE = 'P0002';
    END IF;
    PERFORM axme._check_receiver(ag, 'unsubscribe');   -- sec
    DELETE FROM axme.subscriptions s WHERE s.subscription_id = unsubscribe.subscription_id;
END $$;
COMMENT ON FUNCTION axme.unsubscribe(bigint) IS
    'End a subscription (intents already published stay).  The agent''s receiver or an admin.  '
    'P0002 no such subscription, 42501 not its receiver.';

CREATE FUNCTION axme.publish(intent jsonb, idempotency_key text DEFAULT NULL) RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    fid uuid;
    old axme.fanouts;
    doc jsonb;
    s record;
    ids uuid[] := '{}';
    one uuid;
    hash text;
    who text := coalesce(intent->>'from_agent', axme._caller());
BEGIN
    IF intent IS NULL OR jsonb_typeof(intent) <> 'object' THEN
        RAISE EXCEPTION 'argument "intent" must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF intent ? 'to_agent' THEN
        RAISE EXCEPTION 'publish takes no "to_agent": the subscriptions choose the receivers'
            USING ERRCODE = '22023', HINT = 'Use send_intent to send to one agent.';
    END IF;
    IF jsonb_typeof(intent->'intent_type') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'intent field "intent_type" must be a string' USING ERRCODE = '22023';
    END IF;
    IF idempotency_key IS NOT NULL AND length(idempotency_key) NOT BETWEEN 8 AND 128 THEN
        RAISE EXCEPTION 'argument "idempotency_key" must be 8..128 characters, got %', length(idempotency_key)
            USING ERRCODE = '22023';
    END IF;
    fid := gen_random_uuid();
    hash := md5(intent::text);
    IF idempotency_key IS NOT NULL THEN
        -- the key maps to the fanout: a second publish with it waits for the first to commit
        INSERT INTO axme.fanouts (fanout_id, sender_role, sender, key, request_hash)
        VALUES (fid, axme._caller_id(), who, idempotency_key, hash)
        ON CONFLICT (sender_role, sender, key) DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO old FROM axme.fanouts f
            WHERE f.sender_role = axme._caller_id() AND f.sender = who AND f.key = idempotency_key;
            IF old.request_hash <> hash THEN
                RAISE EXCEPTION 'idempotency key "%" was already used with a different intent', idempotency_key
                    USING ERRCODE = '23505', DETAIL = format('It made fan-out %s.', old.fanout_id);
            END IF;
            RETURN QUERY SELECT x FROM unnest(old.intent_ids) WITH ORDINALITY AS u(x, n) ORDER BY n;
            RETURN;
        END IF;
    END IF;
    -- one correlation id for all of them: the sender's, or a new one (send_intent validates it)
    doc := CASE WHEN intent ? 'correlation_id' THEN intent
                ELSE intent || jsonb_build_object('correlation_id', gen_random_uuid()) END;
    -- every subscription, whoever's (the sender cannot read them: this runs as the definer)
    FOR s IN
        SELECT a.address FROM axme.subscriptions sb JOIN axme.agents a ON a.agent_id = sb.agent_id
        WHERE axme._type_matches(sb.intent_type_pattern, intent->>'intent_type')
          AND (sb.filter IS NULL OR coalesce(intent->'payload', '{}'::jsonb) @> sb.filter)
        ORDER BY sb.subscription_id
    LOOP
        one := axme.send_intent(doc || jsonb_build_object('to_agent', s.address));
        UPDATE axme.intents i SET fanout_id = fid WHERE i.intent_id = one;
        ids := ids || one;
    END LOOP;
    IF idempotency_key IS NOT NULL THEN
        UPDATE axme.fanouts f SET intent_ids = ids WHERE f.fanout_id = fid;
    END IF;
    RETURN QUERY SELECT x FROM unnest(ids) WITH ORDINALITY AS u(x, n) ORDER BY n;
END $$;
COMMENT ON FUNCTION axme.publish(jsonb, text) IS
    'Send one intent per matching subscription (send_intent''s document without to_agent), in the '
    'caller''s transaction, sharing the correlation id and a fanout_id; returns their ids in '
    'subscription order, none when nothing matches.  With idempotency_key the whole publish is '
    'idempotent (the same key returns the same set, also an empty one).  22023 bad document, '
    '23505 key reused with another document, and send_intent''s errors.';
