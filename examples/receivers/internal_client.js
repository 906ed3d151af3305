// Send an intent to an internal agent (a SQL handler run by axme's worker) and wait for its result.
//
//     npm ci   # pg, version pinned in package.json
//     node internal_client.js 42 3 2.5
//
// Connection from the usual PG* variables. The connecting role needs axme_sender.
const { Client } = require("pg");

const AGENT = process.env.AXME_AGENT || "agent://acme/prod/invoicer";

async function main() {
  const [orderId, qty, price] = process.argv.slice(2).map(Number);
  const client = new Client();
  await client.connect();
  // Each query commits on its own: wait_for must not run in the transaction that sent.
  const sent = await client.query("SELECT axme.send_intent($1::jsonb) AS id", [JSON.stringify({
    intent_type: "intent.billing.invoice.v1", to_agent: AGENT,
    payload: { order_id: orderId, qty, price },
  })]);
  const id = sent.rows[0].id;
  const { rows } = await client.query("SELECT axme.wait_for($1, '10 seconds') AS done", [id]);
  await client.end();
  const done = rows[0].done;
  if (done === null) { console.error(`${id}: no result within 10 seconds`); process.exit(1); }
  console.log(JSON.stringify({ intent_id: id, status: done.status, result: done.result }));
  process.exit(done.status === "COMPLETED" ? 0 : 1);
}

main().catch((e) => { console.error(e); process.exit(1); });
