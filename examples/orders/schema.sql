-- The order scenario: the shop's orders table and the trigger that hands every new order to the
-- order processor through axme, in the same transaction as the INSERT (no dual write: an order
-- that rolls back was never sent, an order that commits is never lost).
--
-- Run once per database: psql -f examples/orders/schema.sql

CREATE EXTENSION IF NOT EXISTS axme;

-- Orders above this amount (in cents) need a person's approval before they are processed.
CREATE OR REPLACE FUNCTION approval_limit_cents() RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 100000';

-- The receiver: a stream agent gets a NOTIFY wake-up on axme.channel(address) after every commit
-- that sends it something, and claims the intents with axme.poll().
SELECT axme.register_agent('agent://myorg/production/order-processor', 'stream');

-- The approvers' queue: an inbox agent. An intent sent to it carries a human_task; it waits
-- (WAITING_FOR_HUMAN) until someone calls axme.decide(), and reminders go to the inbox meanwhile.
SELECT axme.register_agent('agent://myorg/production/order-approvals', 'inbox');

-- The invoice calculator: an internal agent. axme's worker calls public.invoice_total(intent) in
-- its own transaction, as the role demo_invoice_calculator (no privileges beyond running the
-- function), and completes the intent with what it returns.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_invoice_calculator') THEN
        CREATE ROLE demo_invoice_calculator NOLOGIN;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION public.invoice_total(intent jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.jsonb_build_object(
        'order_id', intent->'payload'->'order_id',
        'subtotal_cents', s.subtotal,
        'tax_cents', s.subtotal * 20 / 100,                -- 20 % VAT, rounded down
        'total_cents', s.subtotal + s.subtotal * 20 / 100)
    FROM (SELECT coalesce(sum((i->>'qty')::bigint * (i->>'unit_price_cents')::bigint), 0) AS subtotal
          FROM pg_catalog.jsonb_array_elements(intent->'payload'->'items') i) s
$$;
REVOKE ALL ON FUNCTION public.invoice_total(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.invoice_total(jsonb) TO demo_invoice_calculator;
SELECT axme.register_agent('agent://myorg/production/invoice-calculator', 'internal', NULL,
    '{"handler": "public.invoice_total", "timeout_ms": 5000, "db_role": "demo_invoice_calculator"}');

CREATE TABLE IF NOT EXISTS orders (
    order_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer    text NOT NULL,
    items       jsonb NOT NULL,     -- [{"sku": "...", "qty": 2, "unit_price_cents": 1250}, ...]
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Which intent carries which order (one row per order, written by the trigger).
CREATE TABLE IF NOT EXISTS order_intents (
    order_id   bigint PRIMARY KEY REFERENCES orders,
    intent_id  uuid NOT NULL UNIQUE
);

-- A new order goes to the order processor, or, above approval_limit_cents(), to the approvers as
-- an approval task with reminders every 2 seconds (at most 3) while nobody decides.
CREATE OR REPLACE FUNCTION orders_send_intent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    total bigint := (SELECT coalesce(sum((i->>'qty')::bigint * (i->>'unit_price_cents')::bigint), 0)
                     FROM jsonb_array_elements(NEW.items) i);
BEGIN
    IF total <= approval_limit_cents() THEN
        INSERT INTO order_intents (order_id, intent_id)
        VALUES (NEW.order_id, axme.send_intent(jsonb_build_object(
            'intent_type', 'intent.order.process.v1',
            'from_agent',  'agent://myorg/production/shop',
            'to_agent',    'agent://myorg/production/order-processor',
            'payload',     to_jsonb(NEW))));
    ELSE
        INSERT INTO order_intents (order_id, intent_id)
        VALUES (NEW.order_id, axme.send_intent(jsonb_build_object(
            'intent_type', 'intent.order.approve.v1',
            'from_agent',  'agent://myorg/production/shop',
            'to_agent',    'agent://myorg/production/order-approvals',
            'payload',     to_jsonb(NEW) || jsonb_build_object('total_cents', total),
            'human_task',  jsonb_build_object(
                'task_type', 'approval',
                'title', format('Approve order %s for %s: %s', NEW.order_id, NEW.customer,
                                to_char(total / 100.0, 'FM999999990.00')),
                'description', format('Above the approval limit of %s.',
                                      to_char(approval_limit_cents() / 100.0, 'FM999999990.00')),
                'allowed_outcomes', jsonb_build_array('approved', 'rejected')),
            'remind_after_seconds', 2,
            'remind_interval_seconds', 2,
            'max_reminders', 3,
            'deadline_at', now() + interval '1 hour')));
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS orders_send_intent ON orders;
CREATE TRIGGER orders_send_intent AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_send_intent();
