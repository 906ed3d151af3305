\set n random(1, 1000000000)
INSERT INTO bench.floor_intents (intent_id, agent_id, intent_type, to_agent, sender_role, correlation_id, payload, status, max_delivery_attempts, due_at, event_seq) VALUES (gen_random_uuid(), 1, 'intent.order.process.v1', 'agent://bench/perf/sink', current_user::text::regrole, gen_random_uuid(), bench.order_payload(:n), 'SUBMITTED', 5, now(), 2);
