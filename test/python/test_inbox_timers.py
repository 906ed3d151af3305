"""Reminders and escalation end to end, fired by the worker's timer loop (REFERENCE.md section 4):
remind_after / remind_interval / max_reminders = 1 / 1 / 3 gives reminders at 1, 2, 3 s and the
escalation at 4 s.  Lower bounds strict, upper bounds generous (the machine is shared)."""
import json
import time
import unittest

from axmetest import AxmeTestCase, collect_notifies, connect, drain_notifies

ALICE = "agent://acme/ops/t-alice"
BOSS = "agent://acme/ops/t-boss"
POLLER = "agent://acme/ops/t-poller"
SLACK = 5.0     # generous upper bound on how late a timer may fire on a busy machine


def task_doc(to_agent=ALICE, **extra):
    doc = {"intent_type": "intent.task.approve.v1", "to_agent": to_agent, "payload": {},
           "human_task": {"task_type": "approval", "title": "Approve"}}
    doc.update(extra)
    return json.dumps(doc)


class InboxTimersTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (ALICE,))
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (BOSS,))
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLLER,))
        conn.close()

    def setUp(self):
        super().setUp()
        if not self.preloaded:
            self.skipTest("the timer loop needs shared_preload_libraries=axme")

    def offsets(self, iid, event_type):
        """Seconds from created_at to each event of that type, in order."""
        return [float(r[0]) for r in self.q(
            "SELECT extract(epoch FROM e.at - i.created_at) FROM axme.events e"
            " JOIN axme.intents i USING (intent_id)"
            " WHERE e.intent_id = %s AND e.event_type = %s ORDER BY e.seq", (iid, event_type))]

    def wait_for_event(self, iid, event_type, count=1, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.offsets(iid, event_type)) >= count:
                return True
            time.sleep(0.05)
        return False

    def test_three_reminders_then_escalation_with_exact_count_and_spacing(self):
        ch = {a: self.q1("SELECT axme.channel(%s)", (a,)) for a in (ALICE, BOSS)}
        listener = self.connect()
        with listener.cursor() as cur:
            for c in ch.values():
                cur.execute("LISTEN %s" % c)
        drain_notifies(listener, 0.2)

        iid = self.q1("SELECT axme.send_intent(%s)", (task_doc(
            remind_after_seconds=1, remind_interval_seconds=1, max_reminders=3, escalate_to=BOSS),))
        self.assertEqual(collect_notifies(listener, 1, settle=0.0)[0].channel, ch[ALICE])  # the task
        self.assertTrue(self.wait_for_event(iid, "intent.escalated"), self.events(iid))
        time.sleep(2.5)     # anything more would have fired by now

        reminders = self.offsets(iid, "intent.reminder")
        escalations = self.offsets(iid, "intent.escalated")
        self.assertEqual(len(reminders), 3, reminders)
        self.assertEqual(len(escalations), 1, escalations)
        for k, at in enumerate(reminders, 1):
            self.assertGreaterEqual(at, float(k), "reminder %d early: %s" % (k, reminders))
            self.assertLess(at, k + SLACK, "reminder %d late: %s" % (k, reminders))
        self.assertGreaterEqual(escalations[0], 4.0, escalations)
        self.assertLess(escalations[0], 4 + SLACK, escalations)
        self.assertEqual(self.events(iid)[2:], ["intent.human_task_assigned"] + ["intent.reminder"] * 3
                         + ["intent.escalated"])
        details = [r[0] for r in self.q("SELECT details FROM axme.events WHERE intent_id = %s AND"
                                        " event_type IN ('intent.reminder', 'intent.escalated') ORDER BY seq", (iid,))]
        self.assertEqual([d.get("reminder") for d in details[:3]], [1, 2, 3])
        self.assertEqual({d["owner"] for d in details[:3]}, {ALICE})
        self.assertEqual((details[3]["from"], details[3]["to"]), (ALICE, BOSS))

        # still WAITING, the task moved to the boss, no timer left
        self.assertEqual(self.q("SELECT status, waiting_reason FROM axme.intents WHERE intent_id = %s", (iid,)),
                         [("WAITING", "WAITING_FOR_HUMAN")])
        self.assertEqual(self.q("SELECT owner, status FROM axme.threads WHERE intent_id = %s", (iid,)),
                         [(BOSS, "active")])
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s", (iid,)), 0)

        # each reminder notified alice (the owner then), the escalation both
        got = [n.channel for n in drain_notifies(listener, 0.5)]
        self.assertEqual(got.count(ch[ALICE]), 4, got)
        self.assertEqual(got.count(ch[BOSS]), 1, got)

        # the boss decides: done, nothing fires any more
        self.q("SELECT axme.decide(%s, 'approved')", (iid,))
        self.assertEqual(self.q1("SELECT status FROM axme.threads WHERE intent_id = %s", (iid,)), "done")

    def test_a_decision_stops_the_reminders(self):
        iid = self.q1("SELECT axme.send_intent(%s)", (task_doc(
            remind_after_seconds=1, remind_interval_seconds=1, max_reminders=5, escalate_to=BOSS),))
        self.assertTrue(self.wait_for_event(iid, "intent.reminder"), self.events(iid))
        self.q("SELECT axme.decide(%s, 'rejected')", (iid,))
        n = len(self.offsets(iid, "intent.reminder"))
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s", (iid,)), 0)
        time.sleep(3.0)
        self.assertEqual(len(self.offsets(iid, "intent.reminder")), n)
        self.assertEqual(self.offsets(iid, "intent.escalated"), [])
        self.assertEqual(self.q1("SELECT status FROM axme.intents WHERE intent_id = %s", (iid,)), "CANCELED")

    def test_deadline_closes_the_task_thread(self):
        iid = self.q1("SELECT axme.send_intent(%s)", (task_doc(
            deadline_at=self.q1("SELECT (now() + interval '1 second')::text"),
            remind_after_seconds=30),))
        self.assertTrue(self.wait_for_event(iid, "intent.timed_out"), self.events(iid))
        self.assertEqual(self.q("SELECT status, outcome->>'status' FROM axme.threads WHERE intent_id = %s", (iid,)),
                         [("done", "TIMED_OUT")])
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s", (iid,)), 0)

    def test_reminders_of_a_poll_intent_notify_its_agent(self):
        ch = self.q1("SELECT axme.channel(%s)", (POLLER,))
        listener = self.connect()
        with listener.cursor() as cur:
            cur.execute("LISTEN %s" % ch)
        doc = json.dumps({"intent_type": "intent.job.run.v1", "to_agent": POLLER, "payload": {},
                          "remind_after_seconds": 1, "remind_interval_seconds": 1, "max_reminders": 2})
        iid = self.q1("SELECT axme.send_intent(%s)", (doc,))
        self.assertTrue(self.wait_for_event(iid, "intent.reminder", 2), self.events(iid))
        got = collect_notifies(listener, 2)
        self.assertEqual([json.loads(n.payload) for n in got],
                         [{"intent_id": str(iid), "event": "intent.reminder"}] * 2)
        self.assertEqual(self.status(iid), "SUBMITTED")


if __name__ == "__main__":
    unittest.main()
