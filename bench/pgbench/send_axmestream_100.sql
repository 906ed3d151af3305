\set n random(1, 1000000000)
SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.order.process.v1', 'to_agent', 'agent://bench/perf/stream', 'payload', bench.order_payload(:n + g)))) FROM generate_series(1, 100) g;
