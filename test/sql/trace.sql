-- trace: W3C Trace Context on intents.  traceparent (and tracestate) validated at send, stored,
-- shown by get_intent, returned by poll (its last column), rendered as webhook headers; none is
-- generated when absent.  Output must not depend on shared_preload_libraries.
\i test/include/setup.psql

SELECT axme.register_agent('agent://myorg/prod/tpoll', 'poll');
SELECT axme.register_agent('agent://myorg/prod/thook', 'http', 'https://hooks.example.com/in');
SELECT axme.pause_agent('agent://myorg/prod/thook');
CREATE FUNCTION pg_temp.doc(extra jsonb, agent text DEFAULT 'agent://myorg/prod/tpoll') RETURNS jsonb
LANGUAGE sql AS $f$
    SELECT jsonb_build_object('intent_type', 'intent.trace.v1', 'to_agent', agent, 'payload', '{}'::jsonb) || extra
$f$;

-- refused at send (22023), nothing stored
SELECT t AS traceparent, pg_temp.err(format('SELECT axme.send_intent(%L)', pg_temp.doc(jsonb_build_object('traceparent', t)))) AS result
FROM (VALUES ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7'),          -- no flags
             ('00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01'),       -- upper case
             ('00-00000000000000000000000000000000-00f067aa0ba902b7-01'),       -- zero trace id
             ('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'),       -- zero parent id
             ('ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'),       -- version ff
             ('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra'), -- version 00 with more
             ('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra'),  -- no dash before more
             ('')) v(t);
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.doc('{"traceparent": 1}'))$$) AS not_a_string;
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.doc('{"tracestate": "congo=t61rcWkgMzE"}'))$$) AS state_alone;
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.doc('{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "novalue,=x"}'))$$) AS bad_state;
SELECT pg_temp.err(format('SELECT axme.send_intent(%L)', pg_temp.doc(jsonb_build_object(
    'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    'tracestate', (SELECT string_agg('k' || g || '=v', ',') FROM generate_series(1, 33) g))))) AS state_33_members;
SELECT count(*) AS stored FROM axme.intents WHERE to_agent = 'agent://myorg/prod/tpoll';

-- accepted: a later version may add fields
SELECT pg_temp.err($$SELECT axme.send_intent(pg_temp.doc('{"traceparent": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"}'))$$) AS future_version;
SELECT axme.send_intent(pg_temp.doc('{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"}')) AS traced \gset
SELECT axme.send_intent(pg_temp.doc('{}')) AS plain \gset
SELECT d->>'traceparent' AS traceparent, d->>'tracestate' AS tracestate FROM axme.get_intent(:'traced') d;
SELECT d ? 'traceparent' AS key_present, d->'traceparent' AS traceparent FROM axme.get_intent(:'plain') d;
-- poll: traceparent is the last column (NULL when none was given)
SELECT attname, attnum FROM (SELECT unnest(proargnames) AS attname, generate_subscripts(proargnames, 1) AS attnum
                             FROM pg_proc WHERE oid = 'axme.poll(text, integer, interval)'::regprocedure) a
ORDER BY attnum DESC LIMIT 1;
SELECT intent_id = :'traced' AS traced, traceparent
FROM axme.poll('agent://myorg/prod/tpoll', 10) ORDER BY traceparent NULLS LAST;

-- the webhook headers
SELECT axme.send_intent(pg_temp.doc('{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',
                                    'agent://myorg/prod/thook')) AS hooked \gset
SELECT r->'headers'->>'traceparent' AS traceparent, r->'headers' ? 'tracestate' AS has_tracestate
FROM axme.render_request(:'hooked') r;
SELECT r->'headers' ? 'traceparent' AS plain_has_traceparent
FROM axme.render_request(axme.send_intent(pg_temp.doc('{}', 'agent://myorg/prod/thook'))) r;

SELECT axme.unregister_agent('agent://myorg/prod/tpoll', true);
SELECT axme.unregister_agent('agent://myorg/prod/thook', true);
