\set k random(1, 100)
SELECT axme.send_intent(('{"intent_type": "intent.order.process.v1", "to_agent": "agent://bench/perf/sink", "ordering_key": "customer-' || :k || '", "payload": {"order_id": 1, "items": [{"sku": "SKU-1", "qty": 2}], "total": 59.9}}')::jsonb);
