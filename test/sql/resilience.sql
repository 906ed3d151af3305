-- resilience: rotate_secret, enable_agent, endpoint_health and the breaker / slow-start state
-- machine (axme._endpoint_observe fed synthetic outcomes).  No worker needed: the output must not
-- depend on shared_preload_libraries.  The http behaviour itself: test/http/test_resilience.py.
\i test/include/setup.psql

SELECT axme.register_agent('agent://resil/tests/hook', 'http', 'https://example.com/hook',
                           '{"max_in_flight": 8, "breaker": {"failure_threshold": 10, "cooldown_ms": 1000}}');
SELECT axme.register_agent('agent://resil/tests/poller');

-- rotate_secret: a new whsec_ secret, the old one valid until the grace period ends.
SELECT axme.agent_secret('agent://resil/tests/hook') AS s0 \gset
SELECT axme.rotate_secret('agent://resil/tests/hook', '1 hour') AS s1 \gset
SELECT :'s1' ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS well_formed, :'s1' <> :'s0' AS new,
       axme.agent_secret('agent://resil/tests/hook') = :'s1' AS current_is_new;
SELECT s.secret = :'s0' AS old, s.expires_at IS NOT NULL AS expires,
       s.expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS in_an_hour
FROM axme.agent_secrets s JOIN axme.agents a USING (agent_id)
WHERE a.address = 'agent://resil/tests/hook' ORDER BY s.created_at;
-- a rotation within the grace period keeps the valid ones; at most 5 stay valid
SELECT count(*) FROM (SELECT axme.rotate_secret('agent://resil/tests/hook') FROM generate_series(1, 6)) x;
SELECT count(*) AS valid FROM axme.agent_secrets s JOIN axme.agents a USING (agent_id)
WHERE a.address = 'agent://resil/tests/hook' AND (s.expires_at IS NULL OR s.expires_at > now());
-- grace 0: only the new secret is left
SELECT axme.rotate_secret('agent://resil/tests/hook', '0') AS s9 \gset
SELECT array_agg(s.secret = :'s9') FROM axme.agent_secrets s JOIN axme.agents a USING (agent_id)
WHERE a.address = 'agent://resil/tests/hook';
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/hook', '-1 second')$$);
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/hook', NULL)$$);
-- every interval argument is bounded before any arithmetic: 22023 naming it, never 22008
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/hook', '178000000 years')$$);
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/hook', '366 days')$$);
SELECT pg_temp.err($$SELECT axme.extend_lease(gen_random_uuid(), '178000000 years')$$);
SELECT pg_temp.err($$SELECT * FROM axme.poll('agent://resil/tests/poller', 1, '178000000 years')$$);
SELECT pg_temp.err($$SELECT axme.wait_for(gen_random_uuid(), '178000000 years')$$);
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/nobody')$$);
SELECT pg_temp.err($$SELECT axme.rotate_secret('not-an-address')$$);
SELECT pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/poller')$$);
CREATE ROLE resil_user;
GRANT USAGE ON SCHEMA axme TO resil_user;
GRANT EXECUTE ON FUNCTION axme.rotate_secret(text, interval) TO resil_user;
SET ROLE resil_user;
-- (only the SQLSTATE: which check refuses first depends on the grants of the private helpers)
SELECT split_part(pg_temp.err($$SELECT axme.rotate_secret('agent://resil/tests/hook')$$), ' ', 1) AS sqlstate;
RESET ROLE;
REVOKE ALL ON FUNCTION axme.rotate_secret(text, interval) FROM resil_user;
REVOKE ALL ON SCHEMA axme FROM resil_user;
DROP ROLE resil_user;

-- endpoint_health of a fresh http agent; poll agents are not listed
SELECT agent, breaker_state, consecutive_failures, success_rate_5m, attempts_5m, in_flight,
       concurrency_limit, max_in_flight, rate_limit_per_second, waiting, disabled_at
FROM axme.endpoint_health WHERE agent LIKE 'agent://resil/%';

-- The breaker state machine, fed synthetic outcomes (distinct intents, HTTP 500).
CREATE FUNCTION pg_temp.feed(n integer, cls text, st integer) RETURNS void LANGUAGE sql AS $$
    SELECT axme._endpoint_observe(array_agg(gen_random_uuid()), array_fill(1, ARRAY[n]),
                                  array_fill((SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/hook'), ARRAY[n]),
                                  array_fill(now(), ARRAY[n]), array_fill(5.0::float8, ARRAY[n]),
                                  array_fill(st, ARRAY[n]), array_fill(cls, ARRAY[n]), array_fill('boom'::text, ARRAY[n]))
    FROM generate_series(1, n)
$$;
CREATE FUNCTION pg_temp.state() RETURNS TABLE (breaker text, failures integer, conc_limit double precision,
                                               cooldown_ms bigint, reopen_count integer)
LANGUAGE sql AS $$
    SELECT es.breaker, es.consecutive_failures, es.conc_limit, es.cooldown_ms, es.reopen_count
    FROM axme.endpoint_state es JOIN axme.agents a USING (agent_id) WHERE a.address = 'agent://resil/tests/hook'
$$;
SELECT pg_temp.feed(9, 'http', 500);
SELECT * FROM pg_temp.state();          -- 9 failures: still closed, concurrency halved once
SELECT pg_temp.feed(1, 'connect', NULL);
SELECT * FROM pg_temp.state();          -- the 10th distinct failure opens it
SELECT kind, details->'consecutive_failures' AS failures, details->'cooldown_ms' AS cooldown_ms,
       details->'reopened' AS reopened
FROM axme.alerts WHERE agent = 'agent://resil/tests/hook' ORDER BY id;
SELECT breaker_state, concurrency_limit, breaker_open_until > now() AS open_until_later
FROM axme.endpoint_health WHERE agent = 'agent://resil/tests/hook';
-- cool-down over: the claim moves it to half_open; a failed probe re-opens it, twice as long
UPDATE axme.endpoint_state SET open_until = now() - interval '1 second'
WHERE agent_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/hook');
SELECT axme._breaker_half_open();
SELECT * FROM pg_temp.state();
SELECT pg_temp.feed(1, 'timeout', NULL);
SELECT * FROM pg_temp.state();
-- a 404 or a 429 is no breaker failure
UPDATE axme.endpoint_state SET open_until = now() - interval '1 second'
WHERE agent_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/hook');
SELECT axme._breaker_half_open();
SELECT pg_temp.feed(1, 'http', 404);
SELECT * FROM pg_temp.state();
-- a successful probe closes it and starts the ramp at 1; successes double it up to max_in_flight
SELECT pg_temp.feed(1, NULL, 200);
SELECT * FROM pg_temp.state();
SELECT pg_temp.feed(1, NULL, 200);
SELECT conc_limit FROM pg_temp.state();
SELECT pg_temp.feed(2, NULL, 200);
SELECT conc_limit FROM pg_temp.state();
SELECT pg_temp.feed(4, NULL, 200);
SELECT conc_limit FROM pg_temp.state();  -- NULL: the ramp reached max_in_flight (8) and ended
SELECT kind, details->'cooldown_ms' AS cooldown_ms, details->'reopened' AS reopened
FROM axme.alerts WHERE agent = 'agent://resil/tests/hook' ORDER BY id;

-- 410 Gone disables; enable_agent turns it back on (alerts endpoint_disabled / endpoint_enabled)
SELECT pg_temp.feed(1, 'http', 410);
SELECT disabled_at IS NOT NULL AS disabled, disabled_reason FROM axme.agents WHERE address = 'agent://resil/tests/hook';
SELECT breaker_state, concurrency_limit, next_attempt_at FROM axme.endpoint_health WHERE agent = 'agent://resil/tests/hook';
SELECT axme.enable_agent('agent://resil/tests/hook');
SELECT axme.enable_agent('agent://resil/tests/hook');
SELECT disabled_at, disabled_reason FROM axme.agents WHERE address = 'agent://resil/tests/hook';
SELECT kind, details->>'reason' AS reason FROM axme.alerts
WHERE agent = 'agent://resil/tests/hook' AND kind LIKE 'endpoint%' ORDER BY id;
SELECT conc_limit FROM pg_temp.state();  -- re-driven through the ramp
SELECT pg_temp.err($$SELECT axme.enable_agent('agent://resil/tests/nobody')$$);
SELECT pg_temp.err($$SELECT axme.enable_agent('bad')$$);
SELECT pg_temp.err($$SELECT axme.enable_agent(NULL)$$);

-- The cool-down doubles on every re-open but stops at 8 x cooldown_ms: an endpoint that comes back
-- after a long outage is probed within 8 cool-downs, not 10 minutes later.
SELECT axme.register_agent('agent://resil/tests/capped', 'http', 'http://127.0.0.1:9/capped',
                           '{"breaker": {"failure_threshold": 10, "cooldown_ms": 1000}}');
CREATE FUNCTION pg_temp.fail_capped(n integer) RETURNS void LANGUAGE sql AS $$
    SELECT axme._endpoint_observe(array_agg(gen_random_uuid()), array_fill(1, ARRAY[n]),
                                  array_fill((SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/capped'), ARRAY[n]),
                                  array_fill(now(), ARRAY[n]), array_fill(5.0::float8, ARRAY[n]),
                                  array_fill(NULL::integer, ARRAY[n]), array_fill('connect'::text, ARRAY[n]),
                                  array_fill('refused'::text, ARRAY[n]))
    FROM generate_series(1, n)
$$;
CREATE TEMP TABLE capped_cooldowns (reopen integer, cooldown_ms bigint);
SELECT pg_temp.fail_capped(10);
DO $$
BEGIN
    FOR n IN 1..6 LOOP
        UPDATE axme.endpoint_state SET open_until = now() - interval '1 second'
        WHERE agent_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/capped');
        PERFORM axme._breaker_half_open();
        PERFORM pg_temp.fail_capped(1);
        INSERT INTO capped_cooldowns
        SELECT n, es.cooldown_ms FROM axme.endpoint_state es
        WHERE es.agent_id = (SELECT agent_id FROM axme.agents WHERE address = 'agent://resil/tests/capped');
    END LOOP;
END $$;
SELECT reopen, cooldown_ms FROM capped_cooldowns ORDER BY reopen;   -- 2000, 4000, 8000, 8000 ...
SELECT axme.unregister_agent('agent://resil/tests/capped', true) IS NOT NULL AS unregistered;

DELETE FROM axme.alerts WHERE agent LIKE 'agent://resil/%';
DELETE FROM axme.agents WHERE address LIKE 'agent://resil/%';
