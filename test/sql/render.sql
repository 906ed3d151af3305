-- render: axme.render_request (the http request as the worker sends it: url, headers, exact
-- body, signature for admins only, option header values hidden from others) and axme.ping_agent
-- (a test event of the reserved type axme.ping.v1; send_intent refuses axme.* types).  The http
-- agents are paused, so the worker posts nothing and the output does not depend on
-- shared_preload_libraries (the http suite checks the rendering against a real receiver).
\i test/include/setup.psql

SET client_min_messages = warning;
DROP ROLE IF EXISTS render_sender;
DROP ROLE IF EXISTS render_other;
DROP ROLE IF EXISTS render_owner;
RESET client_min_messages;
CREATE ROLE render_sender IN ROLE axme_sender;
CREATE ROLE render_other IN ROLE axme_sender;
CREATE ROLE render_owner IN ROLE axme_agent;
SELECT axme.register_agent('agent://myorg/prod/rhook', 'http', 'https://user@hooks.example.com:8443/in?x=1',
    '{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "headers": {"Authorization": "Bearer t0ken"}, "db_role": "render_owner"}');
SELECT axme.pause_agent('agent://myorg/prod/rhook');
SELECT axme.register_agent('agent://myorg/prod/rpoll', 'poll');

SET ROLE render_sender;
SELECT axme.send_intent('{"intent_type": "intent.render.v1", "to_agent": "agent://myorg/prod/rhook",
                          "payload": {"order": "A-1", "note": "naïve"}, "from_agent": "agent://myorg/prod/shop",
                          "correlation_id": "0190a0b0-0000-7000-8000-000000000001"}') AS rid \gset
-- the sender: everything but the signature and the option header values
SELECT r->>'method' AS method, r->>'url' AS url, r->'attempt' AS attempt, r->>'signature' AS signature,
       (r->'headers') - 'webhook-id' - 'webhook-timestamp' - 'user-agent' - 'content-length' AS headers,
       r->'headers'->>'webhook-id' = :'rid' AS id_header,
       abs((r->'headers'->>'webhook-timestamp')::bigint - extract(epoch FROM now())) < 2 AS timestamp_now,
       r->'headers'->>'user-agent' LIKE 'axme/%' AS user_agent
FROM axme.render_request(:'rid') r;
-- the body: the bytes the worker posts
SELECT (r->>'body')::jsonb - 'intent_id' - 'created_at' AS body,
       (r->>'body')::jsonb->>'intent_id' = :'rid' AS body_id,
       (r->'headers'->>'content-length')::int = octet_length(r->>'body') AS length_matches
FROM axme.render_request(:'rid') r;
SET ROLE render_other;
SELECT pg_temp.err('SELECT axme.render_request($1)', :'rid') AS other_sender;
SET ROLE render_owner;
SELECT r->>'signature' AS receiver_signature, r->'headers'->>'Authorization' AS authorization
FROM axme.render_request(:'rid') r;
RESET ROLE;
-- an admin: the signature (v1,<base64 of 32 bytes>) and the option headers; never the secret
SELECT r->>'signature' AS signature, r->'headers'->>'webhook-signature' ~ '^v1,[A-Za-z0-9+/]{43}=$' AS signature_format,
       r->'headers'->>'Authorization' AS authorization, strpos(r::text, 'MfKQ9r8G') = 0 AS no_secret
FROM axme.render_request(:'rid') r;
-- the same body whatever the session's TimeZone (created_at in UTC, as the worker sends it)
SET TimeZone = 'Asia/Kathmandu';
SELECT (SELECT r->>'body' FROM axme.render_request(:'rid') r) AS kathmandu \gset
RESET TimeZone;
SELECT (SELECT r->>'body' FROM axme.render_request(:'rid') r) = :'kathmandu' AS body_independent_of_timezone;
SELECT current_setting('TimeZone') AS timezone_restored;
-- errors
SELECT pg_temp.err('SELECT axme.render_request(NULL)') AS null_id;
SELECT pg_temp.err('SELECT axme.render_request(''00000000-0000-0000-0000-000000000000'')') AS unknown;
SELECT pg_temp.err('SELECT axme.render_request($1)',
    axme.send_intent('{"intent_type": "intent.render.v1", "to_agent": "agent://myorg/prod/rpoll", "payload": {}}'), true) AS poll_agent;

-- ping_agent: an ordinary intent of the reserved type, one attempt
SET ROLE render_owner;
SELECT axme.ping_agent('agent://myorg/prod/rhook') AS pid \gset
SELECT d->>'intent_type' AS intent_type, d->>'status' AS status, d->'max_delivery_attempts' AS max_attempts,
       d->>'sender_role' AS sender_role, d->'payload'->'ping' AS ping
FROM axme.get_intent(:'pid') d;
SELECT (r->>'body')::jsonb->>'intent_type' AS rendered_type FROM axme.render_request(:'pid') r;
SET ROLE render_sender;
SELECT pg_temp.err('SELECT axme.ping_agent(''agent://myorg/prod/rhook'')') AS sender_may_not;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "axme.ping.v1", "to_agent": "agent://myorg/prod/rhook", "payload": {}}')$$) AS reserved_type;
RESET ROLE;
SELECT pg_temp.err($$SELECT axme.send_intent('{"intent_type": "axme.anything.v1", "to_agent": "agent://myorg/prod/rhook", "payload": {}}')$$) AS reserved_for_admins_too;
SELECT pg_temp.err('SELECT axme.ping_agent(''agent://myorg/prod/rpoll'')', NULL, true) AS ping_poll_agent;
SELECT pg_temp.err('SELECT axme.ping_agent(''agent://myorg/prod/nobody'')') AS ping_unknown;

SELECT axme.unregister_agent('agent://myorg/prod/rhook', true);
SELECT axme.unregister_agent('agent://myorg/prod/rpoll', true);
DROP ROLE render_sender;
DROP ROLE render_other;
DROP ROLE render_owner;
