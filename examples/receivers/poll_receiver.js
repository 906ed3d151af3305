// A poll receiver for axme: claim a batch with a lease on your own schedule, finish each intent.
//
//     npm ci   # pg, version pinned in package.json
//     AXME_AGENT=agent://myorg/production/reports node poll_receiver.js
//
// Connection from the usual PG* variables. The connecting role needs axme_agent and the agent's
// db_role.
const { Client } = require("pg");

const AGENT = process.env.AXME_AGENT || "agent://myorg/production/reports";
const INTERVAL_SECONDS = Number(process.env.AXME_POLL_INTERVAL || 1); // sleep when nothing is due
const LEASE_SECONDS = 60;                                              // time to finish one batch
const BATCH = 100;

// Your work. Return the result to store; throw to fail the attempt (it is retried).
async function handle(intentType, payload) {
  return { handled: true, receiver: "node-poll", payload };
}

async function main() {
  const client = new Client(); // each query commits at once (autocommit)
  await client.connect();
  console.log(`polling ${AGENT} every ${INTERVAL_SECONDS} s`);
  for (;;) {
    const { rows } = await client.query(
      "SELECT intent_id, intent_type, payload, attempt" +
        " FROM axme.poll($1, $2, make_interval(secs => $3))",
      [AGENT, BATCH, LEASE_SECONDS]);
    for (const { intent_id, intent_type, payload, attempt } of rows) {
      try {
        let result;
        try {
          result = await handle(intent_type, payload);
        } catch (e) {
          await client.query("SELECT axme.fail($1, $2::jsonb, retry => true, attempt => $3)",
            [intent_id, JSON.stringify({ error: String(e) }), attempt]);
          continue;
        }
        await client.query("SELECT axme.complete($1, $2::jsonb, $3)",
          [intent_id, JSON.stringify(result), attempt]);
        console.log(`completed ${intent_id} (${intent_type}, attempt ${attempt})`);
      } catch (e) {
        if (e.code !== "55000") throw e; // 55000: the lease ran out, another hand-out owns it
        console.log(`lease of ${intent_id} ran out; another hand-out owns it now`);
      }
    }
    // a full batch: more may be due, poll again at once
    if (rows.length < BATCH) await new Promise((r) => setTimeout(r, INTERVAL_SECONDS * 1000));
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
