"""Leases in real time: expiry and redelivery, receipts, dead-lettering after exactly the budget
(hand-outs whose lease runs out, and fail(retry => true)), replay with a fresh budget."""
import time
import unittest

import psycopg2.errors

from axmetest import AxmeTestCase

LEASE = "1 second"
PAST_LEASE = 1.3  # seconds slept to be sure a 1 second lease has run out


class LeaseTest(AxmeTestCase):

    def agent(self, name, **retry):
        address = "agent://myorg/prod/" + name
        self.register(address, "poll", {"retry": retry} if retry else None)
        return address

    def test_leased_intent_is_not_handed_out_again(self):
        a = self.agent("leased")
        iid = self.send(a)
        self.assertEqual(self.poll(a, lease="30 seconds"), [(iid, 1)])
        other = self.connect()
        self.assertEqual(self.poll(a, conn=other), [])
        self.assertEqual(self.status(iid), "DELIVERED")

    def test_expired_lease_is_redelivered_and_old_receipt_refused(self):
        a = self.agent("expiring")
        iid = self.send(a)
        first = self.connect()
        self.assertEqual(self.poll(a, lease=LEASE, conn=first), [(iid, 1)])
        lease_until = self.doc(iid)["lease_until"]
        time.sleep(PAST_LEASE)
        second = self.connect()
        self.assertEqual(self.poll(a, lease="30 seconds", conn=second), [(iid, 2)])
        self.assertNotEqual(self.doc(iid)["lease_until"], lease_until)
        self.assertEqual(self.events(iid), ["intent.created", "intent.submitted",
                                            "intent.delivered", "intent.delivered"])
        # the first holder's work is refused: its receipt is stale
        for sql in ("SELECT axme.complete(%s, '{\"by\": \"first\"}', 1)",
                    "SELECT axme.ack(%s, 1)",
                    "SELECT axme.extend_lease(%s, '1 minute', 1)",
                    "SELECT axme.fail(%s, '{}', true, 1)"):
            e = self.assertSQLState("55000", sql, (iid,), conn=first)
            self.assertIn("stale receipt", str(e))
        self.q("SELECT axme.complete(%s, '{\"by\": \"second\"}', 2)", (iid,), conn=second)
        d = self.doc(iid)
        self.assertEqual((d["status"], d["result"], d["attempt"]), ("COMPLETED", {"by": "second"}, 2))

    def test_extend_lease_keeps_the_intent(self):
        a = self.agent("extended")
        iid = self.send(a)
        self.assertEqual(self.poll(a, lease=LEASE), [(iid, 1)])
        self.q("SELECT axme.extend_lease(%s, '30 seconds', 1)", (iid,))
        time.sleep(PAST_LEASE)
        self.assertEqual(self.poll(a), [])
        self.q("SELECT axme.complete(%s, '{}', 1)", (iid,))
        self.assertEqual(self.status(iid), "COMPLETED")

    def test_dead_letter_after_exactly_the_budget_of_expired_leases(self):
        a = self.agent("expire-budget", max_attempts=3)
        iid = self.send(a)
        for attempt in (1, 2, 3):
            self.assertEqual(self.poll(a, lease=LEASE), [(iid, attempt)], "hand-out %d" % attempt)
            time.sleep(PAST_LEASE)
        # the third lease ran out: the next poll dead-letters instead of handing out a fourth time
        self.assertEqual(self.poll(a, lease=LEASE), [])
        d = self.doc(iid)
        self.assertEqual((d["status"], d["attempt"], d["dead_letter_reason"]), ("FAILED", 3, "exhausted"))
        self.assertEqual(self.q("SELECT reason, attempt FROM axme.dead_letters WHERE intent_id = %s", (iid,)),
                         [("exhausted", 3)])
        self.assertEqual(self.events(iid), ["intent.created", "intent.submitted"] +
                         ["intent.delivered"] * 3 + ["intent.dead_lettered"])
        time.sleep(PAST_LEASE)
        self.assertEqual(self.poll(a, lease=LEASE), [])

    def test_dead_letter_after_exactly_the_budget_of_failures(self):
        a = self.agent("fail-budget", max_attempts=3, base_delay_ms=40, max_delay_ms=80)
        iid = self.send(a)
        for attempt in (1, 2, 3):
            self.assertEqual(self.poll_until(a), [(iid, attempt)], "hand-out %d" % attempt)
            failed_at = self.q1("SELECT clock_timestamp()")
            self.q("SELECT axme.fail(%s, %s, true, %s)", (iid, '{"code": %d}' % attempt, attempt))
            d = self.doc(iid)
            if attempt < 3:
                self.assertEqual(d["status"], "SUBMITTED")
                self.assertIsNone(d["dead_letter_reason"])
                # backoff: at least half the base delay after the failure
                self.assertTrue(self.q1("SELECT %s::timestamptz >= %s::timestamptz + interval '20 ms'",
                                        (d["next_attempt_at"], failed_at)), d)
        d = self.doc(iid)
        self.assertEqual((d["status"], d["attempt"], d["dead_letter_reason"], d["error"]),
                         ("FAILED", 3, "exhausted", {"code": 3}))
        self.assertEqual(self.events(iid), ["intent.created", "intent.submitted",
                                            "intent.delivered", "intent.delivery_failed",
                                            "intent.delivered", "intent.delivery_failed",
                                            "intent.delivered", "intent.dead_lettered"])
        time.sleep(0.2)
        self.assertEqual(self.poll(a), [])

    def test_expired_leases_and_failures_share_one_budget(self):
        a = self.agent("mixed-budget", max_attempts=2)
        iid = self.send(a)
        self.assertEqual(self.poll(a, lease=LEASE), [(iid, 1)])
        time.sleep(PAST_LEASE)
        self.assertEqual(self.poll(a, lease=LEASE), [(iid, 2)])
        self.q("SELECT axme.fail(%s, '{\"code\": \"boom\"}', true, 2)", (iid,))
        self.assertEqual(self.doc(iid)["dead_letter_reason"], "exhausted")

    def test_replay_gives_a_fresh_budget(self):
        a = self.agent("replayed", max_attempts=2, base_delay_ms=1, max_delay_ms=2)
        iid = self.send(a)
        for attempt in (1, 2):
            self.assertEqual(self.poll_until(a), [(iid, attempt)])
            self.q("SELECT axme.fail(%s, '{}', true, %s)", (iid, attempt))
        self.assertEqual(self.doc(iid)["dead_letter_reason"], "exhausted")
        self.assertSQLState("55000", "SELECT axme.fail(%s, '{}', true)", (iid,))
        self.q("SELECT axme.replay(%s)", (iid,))
        d = self.doc(iid)
        self.assertEqual((d["status"], d["dead_letter_reason"]), ("SUBMITTED", None))
        self.assertEqual(self.q1("SELECT count(*) FROM axme.dead_letters WHERE intent_id = %s", (iid,)), 0)
        # two more hand-outs (attempts 3 and 4), then a dead letter again
        self.assertEqual(self.poll_until(a), [(iid, 3)])
        self.q("SELECT axme.fail(%s, '{}', true, 3)", (iid,))
        self.assertEqual(self.status(iid), "SUBMITTED")
        self.assertEqual(self.poll_until(a), [(iid, 4)])
        self.q("SELECT axme.fail(%s, '{}', true, 4)", (iid,))
        d = self.doc(iid)
        self.assertEqual((d["status"], d["attempt"], d["dead_letter_reason"]), ("FAILED", 4, "exhausted"))
        self.assertEqual(self.events(iid).count("intent.replayed"), 1)
        # and a replayed intent can of course succeed
        self.q("SELECT axme.replay(%s)", (iid,))
        self.assertEqual(self.poll_until(a), [(iid, 5)])
        self.q("SELECT axme.complete(%s, '{\"ok\": true}', 5)", (iid,))
        self.assertEqual(self.status(iid), "COMPLETED")

    def test_redelivery_order_is_fifo_by_due_time(self):
        a = self.agent("fifo")
        sent = [self.send(a, n) for n in range(6)]
        self.assertEqual([i for i, _ in self.poll(a, 3, lease=LEASE)], sent[:3])
        time.sleep(PAST_LEASE)
        # the three whose lease ran out are due since their lease end, the others since their send
        got = [i for i, _ in self.poll(a, 10, lease="30 seconds")]
        self.assertEqual(sorted(got), sorted(sent))
        self.assertEqual(got[:3], sent[3:])


if __name__ == "__main__":
    unittest.main()
