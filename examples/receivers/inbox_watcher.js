// An inbox watcher for axme: follows one inbox's changes (what a UI, a CLI or a chat bot builds on).
//
//     npm ci   # pg, version pinned in package.json
//     AXME_INBOX=agent://acme/finance/approvers node inbox_watcher.js
//
// Prints one JSON line per changed thread. People decide with axme.decide (see docs/inbox.md).
// Connection from the usual PG* variables. The connecting role needs axme_agent and the inbox
// agent's db_role.
const { Client } = require("pg");

const OWNER = process.env.AXME_INBOX || "agent://acme/finance/approvers";

// Your UI: here one line per change.
function show(t) {
  const { thread_id, intent_id, kind, status, task_type, title } = t;
  console.log(JSON.stringify({ thread_id, intent_id, kind, status, task_type, title }));
}

const client = new Client(); // a dedicated client: LISTEN belongs to one session
let woken = false;
let wake = null;
client.on("notification", () => { woken = true; if (wake) wake(); });

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => { clearTimeout(timer); resolve(); };
  }).finally(() => { wake = null; });
}

async function main() {
  await client.connect();
  const { rows } = await client.query("SELECT axme.channel($1) AS channel", [OWNER]);
  await client.query("LISTEN " + client.escapeIdentifier(rows[0].channel));
  console.log(`watching ${OWNER} on ${rows[0].channel}`);
  let cursor = null; // from the beginning; keep the last next_cursor to resume after a restart
  for (;;) {
    let hasMore = true;
    while (hasMore) {
      woken = false; // this call sees every change notified so far
      const r = await client.query(
        "SELECT changes, next_cursor, has_more FROM axme.inbox_changes($1, $2, 50)", [OWNER, cursor]);
      const { changes, next_cursor, has_more } = r.rows[0];
      for (const change of changes) show(change.thread);
      cursor = next_cursor;
      hasMore = has_more;
    }
    // A change is readable once every transaction writing when it was made has ended: look
    // again within a second even without a notification.
    if (!woken) await sleep(1000);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
