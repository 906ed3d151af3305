"""The axme order demo, part two: a person's approval (inbox) and a SQL handler (internal).

Called by run_demo.py after the webhook steps:

10. An order above the approval limit (schema.sql: approval_limit_cents()) is not sent to the order
    processor: the trigger sends an approval task to agent://myorg/production/order-approvals, an
    inbox agent. The intent waits (WAITING_FOR_HUMAN); nobody answers at first, so axme's worker
    sends a reminder every 2 seconds (an intent.reminder event and a NOTIFY on the inbox's channel,
    which the demo LISTENs on). Then an approver decides in axme-gateway's web inbox, in a headless
    browser (web_approval.py; a screenshot's path is printed), or, where no browser is installed,
    from psql with axme.decide(); the sender's axme.wait_for() returns the decision.
11. The approved order's invoice total is computed by agent://myorg/production/invoice-calculator,
    an internal agent: axme's worker calls public.invoice_total(intent jsonb) in its own transaction
    as the role demo_invoice_calculator, and the sender's wait_for returns what it returned.

Every problem found is appended to the caller's list; nothing here raises on a failed check.
"""
import json
import os
import select
import subprocess
import time

import psycopg2

import web_approval

APPROVALS = "agent://myorg/production/order-approvals"
CALCULATOR = "agent://myorg/production/invoice-calculator"
BIG_ORDER = ("hedy", [("rack-server", 2, 64900), ("ups", 1, 21900)])   # 1517.00, above 1000.00
UNANSWERED = 4.5        # seconds nobody answers the approval task: reminders at 2 and 4 s
REMIND_INTERVAL = 2     # seconds, as schema.sql's trigger sets remind_after/interval_seconds


def _events(conn, intent_id):
    with conn.cursor() as cur:
        cur.execute("SELECT seq, event_type, status, at, actor, details "
                    "FROM axme.intent_events(%s)", (intent_id,))
        return cur.fetchall()


def _show_events(say, events):
    start = events[0][3] if events else None
    for seq, event_type, status, at, actor, details in events:
        extra = []
        for key in ("reason", "reminder", "outcome", "actor", "actor_name", "attempt"):
            if key in details:
                extra.append(f"{key} {details[key]}")
        say(f"     {seq:>2}  +{(at - start).total_seconds():6.3f} s  {event_type:<28} {status:<10} "
            f"{', '.join(extra)}".rstrip())


def run(conn, waiter, say, heading, problems, insert_order, money):
    """Steps 10 and 11. conn: the sender's connection (one transaction per order); waiter: an
    autocommit connection for reads and wait_for."""
    listener = None
    try:
        heading(f"10. A big order needs a person's approval: an inbox agent ({APPROVALS})")
        listener = psycopg2.connect("", application_name="order-demo-inbox")
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute("SELECT axme.channel(%s)", (APPROVALS,))
            channel = cur.fetchone()[0]
            cur.execute(f'LISTEN "{channel}"')
            cur.execute("SELECT approval_limit_cents()")
            limit = cur.fetchone()[0]
        say(f"   the approvers' UI listens on {channel} (LISTEN); orders above {money(limit)} go "
            "there instead of to the processor")
        order_id, intent_id, expected = insert_order(conn, *BIG_ORDER)
        sent = time.monotonic()
        with waiter.cursor() as cur:
            cur.execute("SELECT status, waiting_reason FROM axme.intents WHERE intent_id = %s",
                        (intent_id,))
            status, reason = cur.fetchone()
            cur.execute("SELECT thread_id, kind, status, task_type, title FROM axme.inbox(%s) "
                        "WHERE intent_id = %s", (APPROVALS, intent_id))
            threads = cur.fetchall()
        say(f"   intent {intent_id[-12:]} is {status} ({reason}); axme.inbox('{APPROVALS}') lists:")
        for thread_id, kind, tstatus, task_type, title in threads:
            say(f"     thread {str(thread_id)[-12:]}  {kind}  {tstatus}  {task_type}  \"{title}\"")
        if status != "WAITING" or reason != "WAITING_FOR_HUMAN" or len(threads) != 1:
            problems.append(f"approval of order {order_id}: {status}/{reason}, {len(threads)} "
                            "inbox thread(s); expected WAITING/WAITING_FOR_HUMAN and one thread")

        say(f"   nobody answers for {UNANSWERED:.1f} s; the worker reminds every {REMIND_INTERVAL} s:")
        notices = []
        while time.monotonic() - sent < UNANSWERED:
            if select.select([listener], [], [], 0.2)[0]:
                listener.poll()
                while listener.notifies:
                    n = listener.notifies.pop(0)
                    notices.append(time.monotonic() - sent)
                    say(f"     +{time.monotonic() - sent:.1f} s  NOTIFY {n.channel}: {n.payload}")
        reminders = [e for e in _events(waiter, intent_id) if e[1] == "intent.reminder"]
        say(f"   {len(reminders)} reminder(s) so far (intent.reminder events)")
        if not reminders:
            problems.append(f"approval of order {order_id}: no reminder in {UNANSWERED} s")
        elif sum(1 for t in notices if t >= REMIND_INTERVAL - 0.5) < len(reminders):
            problems.append(f"approval of order {order_id}: {len(reminders)} reminders but only "
                            f"{len(notices)} NOTIFYs on {channel}")

        if web_approval.available():
            say("   an approver decides in the web inbox (axme-gateway, a headless browser):")
            web_approval.approve(intent_id, APPROVALS, "Within this quarter's budget", say, problems)
            expected_actor = web_approval.APPROVER_ROLE
        else:
            sql = (f"SELECT axme.decide('{intent_id}', 'approved', 'Within this quarter''s budget', "
                   "actor => 'Maria (finance)')")
            say("   an approver decides, from psql:")
            say(f"     $ psql -c \"{sql}\"")
            out = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql],
                                 capture_output=True, text=True, timeout=30)
            for line in (out.stdout + out.stderr).strip().splitlines():
                say(f"       {line}")
            if out.returncode != 0:
                problems.append(f"axme.decide from psql failed: {out.stderr.strip()}")
            expected_actor = None
        with waiter.cursor() as cur:
            cur.execute("SELECT axme.wait_for(%s, '20 seconds')", (intent_id,))
            doc = cur.fetchone()[0]
            cur.execute("SELECT current_user")
            me = cur.fetchone()[0]
        result = (doc or {}).get("result") or {}
        say(f"   the sender's wait_for: {doc and doc['status']}, outcome {result.get('outcome')}, "
            f"decided by role {result.get('actor')} (shown as {result.get('actor_name')!r})")
        if (not doc or doc["status"] != "COMPLETED" or result.get("outcome") != "approved"
                or result.get("actor") != (expected_actor or me)):
            problems.append(f"approval of order {order_id}: wait_for returned {doc}")
        say(f"   order {order_id}'s approval, event by event:")
        events = _events(waiter, intent_id)
        _show_events(say, events)
        times = [e[3] for e in events if e[1] == "intent.reminder"]
        if times and (times[0] - events[0][3]).total_seconds() < REMIND_INTERVAL:
            problems.append("the first reminder came before remind_after_seconds")

        heading(f"11. An internal agent computes the invoice total: a SQL function run by axme's worker")
        with waiter.cursor() as cur:
            cur.execute("SELECT options FROM axme.agents WHERE address = %s", (CALCULATOR,))
            options = cur.fetchone()[0]
        say(f"   {CALCULATOR}: delivery mode internal, options {json.dumps(options)}")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT items FROM orders WHERE order_id = %s", (order_id,))
            items = cur.fetchone()[0]
            cur.execute("SELECT axme.send_intent(%s)", (json.dumps({
                "intent_type": "intent.invoice.total.v1",
                "from_agent": "agent://myorg/production/shop",
                "to_agent": CALCULATOR,
                "payload": {"order_id": order_id, "items": items}}),))
            calc_id = cur.fetchone()[0]
        say(f"   intent {calc_id[-12:]} sent; the sender waits with axme.wait_for()")
        with waiter.cursor() as cur:
            cur.execute("SELECT axme.wait_for(%s, '20 seconds')", (calc_id,))
            doc = cur.fetchone()[0]
        result = (doc or {}).get("result") or {}
        tax = expected * 20 // 100
        say(f"   {doc and doc['status']}: subtotal {money(result.get('subtotal_cents', 0))}, "
            f"tax {money(result.get('tax_cents', 0))}, total {money(result.get('total_cents', 0))}")
        _show_events(say, _events(waiter, calc_id))
        if (not doc or doc["status"] != "COMPLETED" or result.get("subtotal_cents") != expected
                or result.get("total_cents") != expected + tax):
            problems.append(f"the invoice total of order {order_id} is {doc}, expected subtotal "
                            f"{expected} and total {expected + tax}")
        return order_id
    finally:
        if listener is not None:
            listener.close()
