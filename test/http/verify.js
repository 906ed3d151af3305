// Verify Standard Webhooks signatures with the reference npm package.
// Input (stdin): JSON [{secret, id, timestamp, signature, body}]; prints "ok N" or exits 1.
const { Webhook } = require("standardwebhooks");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const items = JSON.parse(input);
  let ok = 0;
  for (const it of items) {
    const wh = new Webhook(it.secret.replace(/^whsec_/, ""));
    try {
      wh.verify(it.body, {
        "webhook-id": it.id,
        "webhook-timestamp": it.timestamp,
        "webhook-signature": it.signature,
      });
      ok++;
    } catch (e) {
      console.error("verification failed for " + it.id + ": " + e.message);
      process.exit(1);
    }
  }
  console.log("ok " + ok);
});
