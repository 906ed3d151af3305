wrk.method = "POST"
wrk.body = '{"intent_id":"00000000-0000-0000-0000-000000000000","intent_type":"intent.bench.v1","payload":{"n":1}}'
wrk.headers["content-type"] = "application/json"
