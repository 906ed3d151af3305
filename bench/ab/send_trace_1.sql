\set n random(1, 1000000000)
SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.order.process.v1', 'to_agent', 'agent://bench/perf/sink', 'payload', bench.order_payload(:n), 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'tracestate', 'rojo=00f067aa0ba902b7'));
