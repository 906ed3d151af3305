// A webhook receiver for axme's http mode, verifying every request with the reference
// Standard Webhooks library (npm standardwebhooks).
//
//     npm ci   # standardwebhooks and pg, versions pinned in package.json
//     AXME_WEBHOOK_SECRET=whsec_... PORT=8080 node webhook_receiver.js
//
// The secret is the agent's: SELECT axme.agent_secret('agent://...') as an axme admin.
const http = require("http");
const { Webhook } = require("standardwebhooks");

const PORT = Number(process.env.PORT || 8080);
const secret = process.env.AXME_WEBHOOK_SECRET;
if (!secret) { console.error("set AXME_WEBHOOK_SECRET"); process.exit(2); }
const webhook = new Webhook(secret.replace(/^whsec_/, ""));

// At-least-once: a retry of a request whose answer was lost has the same webhook-id. Keep the
// answers you gave (in a real receiver: in your database, in the transaction of the work).
const answered = new Map();

// Your work. Return the result axme stores on the intent.
async function handle(intent) {
  return { handled: true, receiver: "node-webhook", payload: intent.payload };
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    const body = Buffer.concat(chunks).toString("utf8"); // verify the bytes exactly as sent
    let intent;
    try {
      intent = webhook.verify(body, req.headers);         // throws: bad signature, old timestamp
    } catch (e) {
      return reply(res, 401, { error: "invalid signature" });
    }
    const id = req.headers["webhook-id"];
    if (!answered.has(id)) {
      try {
        answered.set(id, { status: "COMPLETED", result: await handle(intent) });
      } catch (e) {
        return reply(res, 503, { error: String(e) });      // 5xx: axme retries after a backoff
      }
    }
    console.log(`completed ${intent.intent_id} (${intent.intent_type}, attempt ${intent.attempt})`);
    reply(res, 200, answered.get(id));                     // {"status": "COMPLETED", "result": ...}
  });
}).listen(PORT, () => console.log(`listening on port ${PORT}`));
