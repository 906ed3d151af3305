-- uuid7: intent ids made by send_intent are UUIDv7 (RFC 9562): version 7, variant 10, a 48-bit
-- Unix millisecond timestamp close to the clock, and strictly increasing within a session even
-- when many are made in the same millisecond (the 12-bit counter in rand_a).
\i test/include/setup.psql
LOAD 'axme';

SELECT axme.register_agent('agent://myorg/prod/uuid7');
CREATE TEMP TABLE ids (ord serial PRIMARY KEY, id uuid NOT NULL, made_after timestamptz NOT NULL,
                       made_before timestamptz);

-- 2000 sends in one transaction (many per millisecond), then 3 more transactions of 10 each
CREATE FUNCTION pg_temp.send_n(n int) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    t timestamptz;
    k int;
BEGIN
    FOR k IN 1..n LOOP
        t := clock_timestamp();
        INSERT INTO ids (id, made_after, made_before)
        VALUES (axme.send_intent('{"intent_type": "intent.uuid7.v1", "to_agent": "agent://myorg/prod/uuid7", "payload": {}}'),
                t, clock_timestamp());
    END LOOP;
END $f$;
SELECT pg_temp.send_n(2000);
SELECT pg_temp.send_n(10);
SELECT pg_temp.send_n(10);
SELECT pg_temp.send_n(10);

-- ms(id): the 48-bit timestamp of a UUIDv7 as a timestamptz
CREATE FUNCTION pg_temp.ms(id uuid) RETURNS timestamptz LANGUAGE sql AS $f$
    SELECT to_timestamp(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000.0)
$f$;

-- every id: version 7, RFC variant (8, 9, a or b), timestamp within a second of the clock when it was made
SELECT count(*) AS ids,
       count(*) FILTER (WHERE substr(id::text, 15, 1) = '7') AS version_7,
       count(*) FILTER (WHERE substr(id::text, 20, 1) IN ('8', '9', 'a', 'b')) AS variant_rfc,
       count(*) FILTER (WHERE pg_temp.ms(id) BETWEEN made_after - interval '1 second'
                                               AND made_before + interval '1 second') AS ts_near_clock,
       count(*) FILTER (WHERE pg_temp.ms(id) BETWEEN now() - interval '1 second'
                                               AND clock_timestamp() + interval '1 second') AS ts_near_now
FROM ids;

-- strictly increasing in the order they were sent (uuid order = byte order), and distinct
SELECT count(*) FILTER (WHERE id <= prev) AS not_increasing, count(DISTINCT id) = count(*) AS distinct_ids
FROM (SELECT id, lag(id) OVER (ORDER BY ord) AS prev FROM ids) s;

-- the test did exercise the counter: consecutive ids sharing one millisecond (lower bound only)
SELECT count(*) > 0 AS same_ms_pairs
FROM (SELECT id, lag(id) OVER (ORDER BY ord) AS prev FROM ids) s
WHERE substr(id::text, 1, 13) = substr(prev::text, 1, 13);

-- the ids stored are the ids returned, and the events carry them
SELECT count(*) AS intents_stored FROM ids WHERE EXISTS (SELECT 1 FROM axme.intents i WHERE i.intent_id = ids.id);
SELECT count(*) AS events_stored FROM axme.events e WHERE e.intent_id IN (SELECT id FROM ids);

-- correlation_id, when not given, is still a random (version 4) uuid, distinct from the intent id
SELECT count(*) FILTER (WHERE substr(correlation_id::text, 15, 1) = '4') AS corr_v4,
       count(*) FILTER (WHERE correlation_id = intent_id) AS corr_equals_id
FROM axme.intents WHERE intent_id IN (SELECT id FROM ids);

-- leave nothing behind for the tests that follow
DELETE FROM axme.events WHERE intent_id IN (SELECT id FROM ids);
DELETE FROM axme.intents WHERE intent_id IN (SELECT id FROM ids);
SELECT axme.unregister_agent('agent://myorg/prod/uuid7') AS canceled;
