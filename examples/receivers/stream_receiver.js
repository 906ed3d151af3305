// A stream receiver for axme: LISTEN for wake-ups, claim with poll, complete with the receipt.
//
//     npm ci   # pg and standardwebhooks, versions pinned in package.json
//     AXME_AGENT=agent://myorg/production/order-processor node stream_receiver.js
//
// Connection from the usual PG* variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
// The connecting role needs axme_agent and the agent's db_role.
const { Client } = require("pg");

const AGENT = process.env.AXME_AGENT || "agent://myorg/production/order-processor";
const LEASE_SECONDS = 30;
const BATCH = 100;

// Your work. Return the result to store; throw to fail the attempt (it is retried).
async function handle(intentType, payload) {
  return { handled: true, receiver: "node-stream", payload };
}

// A dedicated client, never one from a pool: LISTEN belongs to one session. pg runs each query
// in autocommit, so a claim counts at once and the listener never idles inside a transaction.
const client = new Client();
let woken = false; // a wake-up came since the last poll started
let wake = null;   // ends the current sleep early
client.on("notification", () => {
  woken = true;
  if (wake) wake();
});

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => { clearTimeout(timer); resolve(); };
  }).finally(() => { wake = null; });
}

async function drain() {
  for (;;) {
    // Wake-ups received so far came after their senders' commits: this poll sees those intents.
    woken = false;
    const { rows } = await client.query(
      "SELECT intent_id, intent_type, payload, attempt" +
        " FROM axme.poll($1, $2, make_interval(secs => $3))",
      [AGENT, BATCH, LEASE_SECONDS]);
    if (rows.length === 0) return;
    for (const { intent_id, intent_type, payload, attempt } of rows) {
      try {
        let result;
        try {
          result = await handle(intent_type, payload);
        } catch (e) { // a failed attempt: retried after a backoff
          await client.query("SELECT axme.fail($1, $2::jsonb, retry => true, attempt => $3)",
            [intent_id, JSON.stringify({ error: String(e) }), attempt]);
          continue;
        }
        // attempt is the receipt: refused (55000) if the intent was handed out again
        await client.query("SELECT axme.complete($1, $2::jsonb, $3)",
          [intent_id, JSON.stringify(result), attempt]);
        console.log(`completed ${intent_id} (${intent_type}, attempt ${attempt})`);
      } catch (e) {
        if (e.code !== "55000") throw e;
        console.log(`lease of ${intent_id} ran out; another hand-out owns it now`);
      }
    }
  }
}

async function main() {
  await client.connect();
  const { rows } = await client.query("SELECT axme.channel($1) AS channel", [AGENT]);
  await client.query("LISTEN " + client.escapeIdentifier(rows[0].channel));
  console.log(`listening on ${rows[0].channel} for ${AGENT}`);
  for (;;) {
    await drain();
    // Sleep only when no wake-up came meanwhile, and at most a fifth of the lease: a lease that
    // runs out or a retry that becomes due may come with no wake-up.
    if (!woken) await sleep((LEASE_SECONDS / 5) * 1000);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
