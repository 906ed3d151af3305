-- The order scenario: the shop's orders table and the trigger that hands every new order to the
-- order processor through axme, in the same transaction as the INSERT (no dual write: an order
-- that rolls back was never sent, an order that commits is never lost).
--
-- Run once per database: psql -f examples/orders/schema.sql

CREATE EXTENSION IF NOT EXISTS axme;

-- The receiver: a stream agent gets a NOTIFY wake-up on axme.channel(address) after every commit
-- that sends it something, and claims the intents with axme.poll().
SELECT axme.register_agent('agent://myorg/production/order-processor', 'stream');

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

CREATE OR REPLACE FUNCTION orders_send_intent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_intents (order_id, intent_id)
    VALUES (NEW.order_id, axme.send_intent(jsonb_build_object(
        'intent_type', 'intent.order.process.v1',
        'from_agent',  'agent://myorg/production/shop',
        'to_agent',    'agent://myorg/production/order-processor',
        'payload',     to_jsonb(NEW))));
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS orders_send_intent ON orders;
CREATE TRIGGER orders_send_intent AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_send_intent();
