-- fanout: subscribe / unsubscribe / publish.  Patterns with * (one segment) and # (zero or more),
-- payload filters, one intent per matching subscription in subscription order sharing the
-- correlation id and a fanout_id, idempotency over the whole publish (an empty set included),
-- and matching that sees every agent's subscriptions while the sender reads none of them.
-- Output must not depend on shared_preload_libraries.
\i test/include/setup.psql
SET client_min_messages = warning;
DROP ROLE IF EXISTS fan_sender;
DROP ROLE IF EXISTS fan_w1;
DROP ROLE IF EXISTS fan_w2;
RESET client_min_messages;
CREATE ROLE fan_sender;
CREATE ROLE fan_w1;
CREATE ROLE fan_w2;
GRANT axme_sender TO fan_sender;
GRANT axme_agent TO fan_w1, fan_w2;

-- the pattern language
SELECT p AS pattern, t AS intent_type, axme._type_matches(p, t) AS matches
FROM (VALUES ('intent.order.#', 'intent.order'), ('intent.order.#', 'intent.order.created.v1'),
             ('intent.order.#', 'intent.orders.created'), ('intent.*.created', 'intent.order.created'),
             ('intent.*.created', 'intent.created'), ('intent.*.created', 'intent.a.b.created'),
             ('#', 'a.b.c'), ('#.v1', 'intent.order.v1'), ('#.v1', 'v1'), ('a.#.z', 'a.z'),
             ('a.#.z', 'a.b.c.z'), ('a.#.z', 'a.b.c'), ('a.b', 'a.b'), ('a.b', 'a.bc')) v(p, t);

SELECT axme.register_agent('agent://fan/prod/billing', 'poll', NULL, '{"db_role": "fan_w1"}');
SELECT axme.register_agent('agent://fan/prod/shipping', 'poll', NULL, '{"db_role": "fan_w2"}');
SELECT axme.register_agent('agent://fan/prod/audit', 'poll');

-- subscribe: the agent's receiver or an admin; bad patterns and filters are 22023
SET ROLE fan_w1;
SELECT axme.subscribe('agent://fan/prod/billing', 'intent.order.#') > 0 AS billing_subscribed;
SELECT pg_temp.err($$SELECT axme.subscribe('agent://fan/prod/shipping', 'intent.order.#')$$) AS not_its_agent;
RESET ROLE;
SELECT pattern, pg_temp.err(format('SELECT axme.subscribe(%L, %L)', 'agent://fan/prod/audit', pattern)) AS result
FROM (VALUES (''), ('intent..order'), ('intent.ord*'), ('intent.order.'), ('a b')) v(pattern);
SELECT pg_temp.err($$SELECT axme.subscribe('agent://fan/prod/audit', '#', '[1]')$$) AS filter_not_object;
SELECT pg_temp.err($$SELECT axme.subscribe('agent://fan/prod/nobody', '#')$$) AS no_agent;
SET ROLE fan_w2;
SELECT axme.subscribe('agent://fan/prod/shipping', 'intent.order.*.v1', '{"ship": true}') > 0 AS shipping_subscribed;
RESET ROLE;
SELECT axme.subscribe('agent://fan/prod/audit', '#') > 0 AS audit_subscribed;
SELECT a.address, s.intent_type_pattern, s.filter, s.created_by
FROM axme.subscriptions s JOIN axme.agents a USING (agent_id) ORDER BY s.subscription_id;
-- a receiver reads its own subscriptions, a sender none
SET ROLE fan_w1;
SELECT count(*) AS w1_sees FROM axme.subscriptions;
SET ROLE fan_sender;
SELECT count(*) AS sender_sees FROM axme.subscriptions;

-- publish as the sender: three subscriptions match, in subscription order
CREATE TEMP TABLE got (n bigserial, intent_id uuid);
INSERT INTO got (intent_id) SELECT * FROM axme.publish(
    '{"intent_type": "intent.order.created.v1", "payload": {"order": 7, "ship": true}}');
RESET ROLE;
SELECT g.n, i.to_agent, i.intent_type, i.payload, i.status, i.sender_role
FROM got g JOIN axme.intents i USING (intent_id) ORDER BY g.n;
SELECT count(DISTINCT i.correlation_id) AS correlation_ids, count(DISTINCT i.fanout_id) AS fanout_ids,
       count(i.fanout_id) AS with_fanout_id
FROM got g JOIN axme.intents i USING (intent_id);
-- the filter: without "ship" shipping gets nothing; another type only reaches audit, with the
-- sender's correlation id (a publish's own rows are read by the next statement)
SET ROLE fan_sender;
CREATE TEMP TABLE got2 AS SELECT p FROM axme.publish('{"intent_type": "intent.order.created.v1", "payload": {"order": 8}}') p;
CREATE TEMP TABLE got3 AS SELECT p FROM axme.publish('{"intent_type": "intent.user.v1", "payload": {},
    "correlation_id": "0190d7e2-0000-7000-8000-000000000001"}') p;
SELECT i.to_agent FROM got2 JOIN axme.intents i ON i.intent_id = got2.p ORDER BY i.to_agent;
SELECT i.to_agent, i.correlation_id FROM got3 JOIN axme.intents i ON i.intent_id = got3.p;
RESET ROLE;

-- refused: to_agent, no intent_type, a short key; send_intent's own errors for the rest
SELECT pg_temp.err($$SELECT axme.publish('{"intent_type": "intent.a.v1", "to_agent": "agent://fan/prod/audit", "payload": {}}')$$) AS with_to_agent;
SELECT pg_temp.err($$SELECT axme.publish('{"payload": {}}')$$) AS no_type;
SELECT pg_temp.err($$SELECT axme.publish('{"intent_type": "intent.a.v1", "payload": {}}', 'short')$$) AS short_key;
SELECT pg_temp.err($$SELECT axme.publish('{"intent_type": "intent.a.v1", "payload": {}, "priority": 500}')$$) AS bad_field;
SELECT count(*) AS intents_after_refusals FROM axme.intents WHERE intent_type = 'intent.a.v1';

-- idempotency over the whole publish: the same key returns the same set, in order
SELECT axme.unsubscribe(s.subscription_id) AS audit_unsubscribed FROM axme.subscriptions s
JOIN axme.agents a USING (agent_id) WHERE a.address = 'agent://fan/prod/audit';
SET ROLE fan_sender;
CREATE TEMP TABLE k1 AS SELECT p, row_number() OVER () AS n
    FROM axme.publish('{"intent_type": "intent.order.paid.v1", "payload": {"ship": true}}', 'publish-key-1') p;
CREATE TEMP TABLE k2 AS SELECT p, row_number() OVER () AS n
    FROM axme.publish('{"intent_type": "intent.order.paid.v1", "payload": {"ship": true}}', 'publish-key-1') p;
SELECT (SELECT count(*) FROM k1) AS first, (SELECT array_agg(p ORDER BY n) FROM k1) = (SELECT array_agg(p ORDER BY n) FROM k2) AS same_set;
SELECT pg_temp.err($$SELECT axme.publish('{"intent_type": "intent.order.paid.v1", "payload": {}}', 'publish-key-1')$$) AS other_document;
-- zero subscribers: an empty set, and the key is recorded (still empty after a subscription appears)
SELECT count(*) AS none FROM axme.publish('{"intent_type": "intent.nobody.v1", "payload": {}}', 'publish-key-2');
RESET ROLE;
SELECT axme.subscribe('agent://fan/prod/audit', 'intent.nobody.#') > 0 AS audit_nobody;
SET ROLE fan_sender;
SELECT count(*) AS still_none FROM axme.publish('{"intent_type": "intent.nobody.v1", "payload": {}}', 'publish-key-2');
SELECT count(*) AS now_one FROM axme.publish('{"intent_type": "intent.nobody.v1", "payload": {}}', 'publish-key-3');
RESET ROLE;
SELECT sender, key, cardinality(intent_ids) AS intents FROM axme.fanouts ORDER BY key;

-- unsubscribe: the receiver or an admin; P0002 when there is none
SELECT min(subscription_id) AS billing_sub FROM axme.subscriptions \gset
SET ROLE fan_w2;
SELECT pg_temp.err(format('SELECT axme.unsubscribe(%s)', :billing_sub)) AS not_its_subscription;
RESET ROLE;
SET ROLE fan_w1;
SELECT axme.unsubscribe(:billing_sub) AS unsubscribed_by_its_receiver;
SELECT count(*) AS w1_left FROM axme.subscriptions;
RESET ROLE;
SELECT pg_temp.err('SELECT axme.unsubscribe(-1)') AS no_subscription;
-- unregistering an agent drops its subscriptions
SELECT axme.unregister_agent('agent://fan/prod/audit', true) >= 0 AS unregistered;
SELECT count(*) AS audit_subscriptions FROM axme.subscriptions s
WHERE NOT EXISTS (SELECT FROM axme.agents a WHERE a.agent_id = s.agent_id);
-- each published intent is an ordinary one
SELECT count(*) AS billing_polled FROM axme.poll('agent://fan/prod/billing', 100);
