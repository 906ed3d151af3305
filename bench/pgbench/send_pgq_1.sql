\set n random(1, 1000000000)
SELECT pgq.insert_event('bench_send', 'intent.order.process.v1', bench.order_payload(:n)::text);
