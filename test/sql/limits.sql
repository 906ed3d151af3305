-- limits: what register_agent refuses beyond the option syntax: endpoint URLs libcurl cannot
-- parse (22023), too many or too large custom headers, TLS files outside the directory the
-- administrator chose (axme.tls_files_directory; PEM contents always work); and a database
-- served by a worker has axme_database_unserved 0 in metrics().  Output must not depend on
-- shared_preload_libraries.
\i test/include/setup.psql

-- Malformed hosts: 22023 with libcurl's reason.
SELECT u, pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L)', 'agent://limits/tests/url', 'http', u)) AS err
FROM unnest(ARRAY['http://[::1', 'http://[::1/x', 'https://[zz::1]/', 'http://example.com:99999/',
                  'http://example.com:0x10/', 'http://:80/']) u;
-- well-formed ones are accepted
SELECT u, pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L)', 'agent://limits/tests/url', 'http', u)) AS err
FROM unnest(ARRAY['http://[::1]:8080/x', 'https://example.com/hook?a=1#f', 'http://user@example.com/']) u;

-- Custom headers: at most 64, 16384 bytes in all (name + value + 4 each).
SELECT pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L, %L)', 'agent://limits/tests/hdr', 'http',
                          'https://example.com/h',
                          jsonb_build_object('headers', (SELECT jsonb_object_agg('x-h' || n, 'v') FROM generate_series(1, 65) n))));
SELECT pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L, %L)', 'agent://limits/tests/hdr', 'http',
                          'https://example.com/h',
                          jsonb_build_object('headers', (SELECT jsonb_object_agg('x-h' || n, 'v') FROM generate_series(1, 64) n))));
SELECT pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L, %L)', 'agent://limits/tests/hdr', 'http',
                          'https://example.com/h',
                          jsonb_build_object('headers', (SELECT jsonb_object_agg('x-h' || n, repeat('v', 8000)) FROM generate_series(1, 3) n))));
SELECT pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L, %L)', 'agent://limits/tests/hdr', 'http',
                          'https://example.com/h',
                          jsonb_build_object('headers', (SELECT jsonb_object_agg('x-h' || n, repeat('v', 8000)) FROM generate_series(1, 2) n))));
SELECT (SELECT count(*) FROM jsonb_object_keys(options->'headers')) AS headers_kept
FROM axme.agents WHERE address = 'agent://limits/tests/hdr';

-- TLS files: without axme.tls_files_directory (the default) no path is accepted, PEM contents are.
SHOW axme.tls_files_directory;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://limits/tests/tls', 'http', 'https://example.com/t',
                                                '{"ca_file": "/etc/ssl/certs/ca-certificates.crt"}')$$, NULL, true);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://limits/tests/tls', 'http', 'https://example.com/t',
                                                '{"ca_file": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://limits/tests/tls', 'http', 'https://example.com/t',
                                                '{"ca_file": "no-such-thing"}')$$);
-- with a directory (postgresql.conf, reloaded): only paths inside it
ALTER SYSTEM SET axme.tls_files_directory = '/etc/axme-limits-tls';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW axme.tls_files_directory;
SELECT f, pg_temp.err(format('SELECT axme.register_agent(%L, %L, %L, %L)', 'agent://limits/tests/tls', 'http',
                             'https://example.com/t', jsonb_build_object('ca_file', f))) AS err
FROM unnest(ARRAY['/etc/axme-limits-tls/ca.pem', '/etc/passwd', '/etc/axme-limits-tls/../passwd',
                  '/etc/axme-limits-tlsx/ca.pem', '/etc/axme-limits-tls/./ca.pem']) f;
SELECT pg_temp.err($$SELECT axme.register_agent('agent://limits/tests/tls', 'http', 'https://example.com/t',
                                                '{"client_cert_file": "/etc/axme-limits-tls/c.pem", "client_key_file": "/root/k.pem"}')$$);
SELECT pg_temp.err($$SELECT axme.register_agent('agent://limits/tests/tls', 'http', 'https://example.com/t',
                                                '{"client_cert_file": "/etc/axme-limits-tls/c.pem", "client_key_file": "/etc/axme-limits-tls/k.pem"}')$$);
ALTER SYSTEM RESET axme.tls_files_directory;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SET axme.tls_files_directory = '/tmp';   -- 55P02: only postgresql.conf sets it

-- a database with its worker (or without preload: no worker to miss) is not unserved
SELECT line FROM regexp_split_to_table(axme.metrics(), E'\n') line WHERE line ~ '^axme_database_unserved ';

SELECT axme.unregister_agent(address, true) FROM axme.agents WHERE address LIKE 'agent://limits/%' ORDER BY address;
