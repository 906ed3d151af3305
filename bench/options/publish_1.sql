SELECT count(*) FROM axme.publish('{"intent_type": "intent.one.created.v1", "payload": {"order_id": 1, "items": [{"sku": "SKU-1", "qty": 2}], "total": 59.9}}');
