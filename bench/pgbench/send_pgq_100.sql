\set n random(1, 1000000000)
SELECT count(pgq.insert_event('bench_send', 'intent.order.process.v1', bench.order_payload(:n + g)::text)) FROM generate_series(1, 100) g;
