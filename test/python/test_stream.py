"""Stream receivers: a real LISTEN client (autocommit) and the wake-ups axme sends at commit."""
import json
import time
import unittest

from axmetest import AxmeTestCase, collect_notifies, drain_notifies

A = "agent://myorg/prod/stream-a"
B = "agent://myorg/prod/stream-b"
P = "agent://myorg/prod/poll-c"


class StreamTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from axmetest import connect
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT axme.register_agent(%s, 'stream')", (A,))
            cur.execute("SELECT axme.register_agent(%s, 'stream')", (B,))
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (P,))
        conn.close()

    def setUp(self):
        super().setUp()
        self.ch = {a: self.q1("SELECT axme.channel(%s)", (a,)) for a in (A, B, P)}
        self.listener = self.connect()  # autocommit, as receivers must
        with self.listener.cursor() as cur:
            for c in self.ch.values():
                cur.execute("LISTEN %s" % c)
        # start every test from an empty queue
        for a in (A, B, P):
            for iid, attempt in self.poll(a, 10000):
                self.q("SELECT axme.complete(%s, '{}', %s)", (iid, attempt))
        drain_notifies(self.listener, 0.2)

    def by_channel(self, notes):
        out = {}
        for n in notes:
            out.setdefault(n.channel, []).append(n)
        return out

    def test_one_notification_per_agent_per_transaction_after_commit(self):
        sender = self.connect(autocommit=False)
        sender_pid = sender.get_backend_pid()
        ids_a = [self.send(A, i, conn=sender) for i in range(3)]
        ids_b = [self.send(B, i, conn=sender) for i in range(2)]
        self.send(P, 0, conn=sender)
        self.assertEqual(drain_notifies(self.listener, 0.5), [], "notified before commit")
        sender.commit()
        notes = collect_notifies(self.listener, 2)
        got = self.by_channel(notes)
        self.assertEqual(sorted(got), sorted([self.ch[A], self.ch[B]]), notes)
        self.assertEqual(len(got[self.ch[A]]), 1)
        self.assertEqual(len(got[self.ch[B]]), 1)
        self.assertNotIn(self.ch[P], got, "a poll agent was notified")
        a, b = got[self.ch[A]][0], got[self.ch[B]][0]
        self.assertEqual(json.loads(a.payload), {"intent_id": ids_a[0], "count": 3})
        self.assertEqual(json.loads(b.payload), {"intent_id": ids_b[0], "count": 2})
        self.assertEqual(a.pid, sender_pid)
        self.assertLess(len(a.payload.encode()), 8000)
        # the listener then claims exactly what was announced
        self.assertEqual([i for i, _ in self.poll(A)], ids_a)
        self.assertEqual([i for i, _ in self.poll(B)], ids_b)

    def test_each_sending_transaction_notifies_once(self):
        first = self.send(A, 1)
        second = self.send(A, 2)
        notes = collect_notifies(self.listener, 2)
        self.assertEqual([json.loads(n.payload) for n in notes],
                         [{"intent_id": first, "count": 1}, {"intent_id": second, "count": 1}])

    def test_rolled_back_send_notifies_nobody(self):
        sender = self.connect(autocommit=False)
        self.send(A, 1, conn=sender)
        self.send(B, 1, conn=sender)
        sender.rollback()
        self.assertEqual(drain_notifies(self.listener, 1.0), [])
        self.assertEqual(self.poll(A) + self.poll(B), [])

    def test_rolled_back_subtransaction_is_not_counted(self):
        sender = self.connect(autocommit=False)
        with sender.cursor() as cur:
            cur.execute("SAVEPOINT s1")
            self.send(A, 1, conn=sender)                      # rolled back below
            cur.execute("ROLLBACK TO SAVEPOINT s1")
            kept_first = self.send(A, 2, conn=sender)
            cur.execute("SAVEPOINT s2")
            kept_second = self.send(A, 3, conn=sender)       # released: counts
            cur.execute("RELEASE SAVEPOINT s2")
            cur.execute("SAVEPOINT s3")
            self.send(A, 4, conn=sender)                      # rolled back
            self.send(B, 4, conn=sender)                      # rolled back: B gets nothing
            cur.execute("ROLLBACK TO SAVEPOINT s3")
        sender.commit()
        notes = collect_notifies(self.listener, 1)
        self.assertEqual(len(notes), 1, notes)
        self.assertEqual(notes[0].channel, self.ch[A])
        self.assertEqual(json.loads(notes[0].payload), {"intent_id": kept_first, "count": 2})
        self.assertEqual([i for i, _ in self.poll(A)], [kept_first, kept_second])

    def test_late_receiver_drains_everything_with_poll(self):
        with self.listener.cursor() as cur:
            cur.execute("UNLISTEN *")
        sent = [self.send(A, i) for i in range(5)]
        # a receiver that comes back later: LISTEN, nothing arrives (those NOTIFYs are gone) ...
        late = self.connect()
        with late.cursor() as cur:
            cur.execute("LISTEN %s" % self.ch[A])
        self.assertEqual(drain_notifies(late, 0.5), [])
        # ... so it polls first, and gets everything, oldest first, once
        self.assertEqual(self.poll(A, 100, conn=late), [(i, 1) for i in sent])
        self.assertEqual(self.poll(A, 100, conn=late), [])
        # and from now on it is woken up
        later = self.send(A, 9)
        notes = collect_notifies(late, 1)
        self.assertEqual([json.loads(n.payload) for n in notes], [{"intent_id": later, "count": 1}])

    def test_replay_wakes_the_stream_receiver(self):
        iid = self.send(A, 1, max_delivery_attempts=1)
        self.assertEqual(len(collect_notifies(self.listener, 1)), 1)
        self.assertEqual(self.poll(A), [(iid, 1)])
        self.q("SELECT axme.fail(%s, '{}', true, 1)", (iid,))
        self.assertEqual(self.doc(iid)["dead_letter_reason"], "exhausted")
        self.assertEqual(drain_notifies(self.listener, 0.3), [])
        self.q("SELECT axme.replay(%s)", (iid,))
        notes = collect_notifies(self.listener, 1)
        # the replay's own wake-up; the worker may add one more when it sees the intent due
        # (wake-ups are at-least-once: a second one for the same intent is allowed, none is not)
        payloads = [json.loads(n.payload) for n in notes]
        self.assertEqual(payloads[0], {"intent_id": iid, "count": 1})
        self.assertTrue(all(p["intent_id"] == iid for p in payloads), payloads)
        self.assertEqual(self.poll(A), [(iid, 2)])

    def test_payload_holds_identifiers_only(self):
        big = "x" * 100000
        iid = self.q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.test.big.v1", "to_agent": A, "payload": {"blob": big}}),))
        notes = collect_notifies(self.listener, 1)
        self.assertEqual(len(notes), 1)
        self.assertEqual(json.loads(notes[0].payload), {"intent_id": iid, "count": 1})

    def test_many_intents_one_small_notification(self):
        sender = self.connect(autocommit=False)
        with sender.cursor() as cur:
            cur.execute("SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.job.v1', "
                        "'to_agent', %s::text, 'payload', jsonb_build_object('n', n))) FROM generate_series(1, 2000) n",
                        (A,))
        sender.commit()
        notes = collect_notifies(self.listener, 1)
        self.assertEqual(len(notes), 1)
        self.assertEqual(json.loads(notes[0].payload)["count"], 2000)
        self.assertLess(len(notes[0].payload), 100)
        self.assertEqual(len(self.poll(A, 10000)), 2000)


if __name__ == "__main__":
    unittest.main()
