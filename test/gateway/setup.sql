-- The gateway suite's database: roles, agents and keys (run as a superuser after CREATE EXTENSION).
\set ON_ERROR_STOP 1
CREATE ROLE gw LOGIN NOINHERIT PASSWORD 'gw';
GRANT axme_gateway TO gw;
CREATE ROLE shop;      GRANT axme_sender TO shop;
CREATE ROLE rival;     GRANT axme_sender TO rival;
CREATE ROLE rx;        GRANT axme_agent TO rx;
CREATE ROLE approvers; GRANT axme_agent TO approvers;
CREATE ROLE cfo;       GRANT axme_agent TO cfo;
CREATE ROLE opsadmin;  GRANT axme_admin TO opsadmin;
CREATE ROLE nobody;
CREATE ROLE notmine;   -- a key role the gateway's login role is not a member of
GRANT shop, rival, rx, approvers, cfo, opsadmin, nobody TO gw;
SELECT axme.register_agent('agent://acme/prod/orders', 'poll', NULL, '{"db_role": "rx", "retry": {"max_attempts": 2}}');
SELECT axme.register_agent('agent://acme/prod/stream-rx', 'stream', NULL, '{"db_role": "rx"}');
SELECT axme.register_agent('agent://acme/finance/approvers', 'inbox', NULL, '{"db_role": "approvers"}');
SELECT axme.register_agent('agent://acme/finance/cfo', 'inbox', NULL, '{"db_role": "cfo"}');
SELECT axme.register_agent('agent://acme/prod/shop', 'poll', NULL, '{"db_role": "shop"}');
CREATE TABLE gw_keys (name text PRIMARY KEY, key text);
INSERT INTO gw_keys VALUES
  ('shop', axme.create_api_key('shop', 'the shop')),
  ('rival', axme.create_api_key('rival', 'another sender')),
  ('rx', axme.create_api_key('rx', 'order receiver')),
  ('approvers', axme.create_api_key('approvers', 'approvers team')),
  ('cfo', axme.create_api_key('cfo', 'the cfo')),
  ('opsadmin', axme.create_api_key('opsadmin', 'operations')),
  ('nobody', axme.create_api_key('nobody', 'no axme role')),
  ('notmine', axme.create_api_key('notmine', 'gateway not a member')),
  ('revoked', axme.create_api_key('shop', 'revoked one'));
SELECT axme.revoke_api_key((SELECT key_id FROM axme.api_keys WHERE label = 'revoked one'));
