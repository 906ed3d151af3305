"""Inbox: thread NOTIFYs (identifiers only) and inbox_changes with concurrent writers that commit
in every order, rollbacks included.  End-to-end reminders and escalation: test_inbox_timers.py."""
import json
import random
import threading
import time
import unittest

import psycopg2

from axmetest import AxmeTestCase, collect_notifies, connect, drain_notifies

ALICE = "agent://acme/ops/alice"
BOB = "agent://acme/ops/bob"
SHOP = "agent://acme/ops/shop"


def task_doc(to_agent=ALICE, n=0, **extra):
    doc = {"intent_type": "intent.task.approve.v1", "to_agent": to_agent, "payload": {"n": n},
           "human_task": {"task_type": "approval", "title": "Approve %d" % n}}
    doc.update(extra)
    return json.dumps(doc)


class InboxTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (ALICE,))
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (BOB,))
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (SHOP,))
        conn.close()

    def send_task(self, conn=None, **extra):
        return self.q1("SELECT axme.send_intent(%s)", (task_doc(**extra),), conn)

    def thread_of(self, intent_id):
        return self.q1("SELECT thread_id FROM axme.threads WHERE intent_id = %s AND kind = 'task'",
                       (intent_id,))

    def changes(self, owner, cursor=None, max_count=50, conn=None):
        return self.q("SELECT changes, next_cursor, has_more FROM axme.inbox_changes(%s, %s, %s)",
                      (owner, cursor, max_count), conn)[0]

    def test_every_thread_change_notifies_the_owner_with_identifiers_only(self):
        ch = {a: self.q1("SELECT axme.channel(%s)", (a,)) for a in (ALICE, BOB, SHOP)}
        listener = self.connect()
        with listener.cursor() as cur:
            for c in ch.values():
                cur.execute("LISTEN %s" % c)
        drain_notifies(listener, 0.2)

        # a task with reply_to: one notification to alice, at commit only
        writer = self.connect(autocommit=False)
        iid = self.send_task(conn=writer, reply_to=SHOP)
        self.assertEqual(drain_notifies(listener, 0.3), [], "nothing before commit")
        writer.commit()
        got = collect_notifies(listener, 1)
        self.assertEqual([(n.channel, json.loads(n.payload)) for n in got],
                         [(ch[ALICE], {"thread_id": str(self.thread_of(iid)), "intent_id": str(iid),
                                       "cursor": json.loads(got[0].payload)["cursor"]})])
        tid = self.thread_of(iid)

        # reply: alice again; delegate: alice (it left) and bob (it arrived)
        self.q("SELECT axme.reply(%s, 'secret text that must not leak')", (tid,))
        got = collect_notifies(listener, 1)
        self.assertEqual([n.channel for n in got], [ch[ALICE]])
        self.assertNotIn("secret", got[0].payload)
        self.assertEqual(set(json.loads(got[0].payload)), {"thread_id", "intent_id", "cursor"})
        self.q("SELECT axme.delegate(%s, %s)", (tid, BOB))
        got = collect_notifies(listener, 2)
        self.assertEqual(sorted(n.channel for n in got), sorted([ch[ALICE], ch[BOB]]))

        # decide: bob hears the thread close; shop (reply_to, a poll agent) gets its completion thread
        self.q("SELECT axme.decide(%s, 'approved')", (iid,))
        got = collect_notifies(listener, 2)
        self.assertEqual(sorted(n.channel for n in got), sorted([ch[BOB], ch[SHOP]]))
        comp = self.q1("SELECT thread_id FROM axme.threads WHERE intent_id = %s AND kind = 'completion'", (iid,))
        self.assertIn(str(comp), [json.loads(n.payload)["thread_id"] for n in got])

        # a refused decision notifies nobody
        with self.assertRaises(psycopg2.Error):
            self.q("SELECT axme.decide(%s, 'approved')", (iid,))
        self.assertEqual(drain_notifies(listener, 0.3), [])

    def test_inbox_changes_never_misses_a_change_with_concurrent_writers(self):
        owner = "agent://acme/ops/busy"
        self.register(owner, "inbox")
        base = [self.send_task(to_agent=owner, n=i) for i in range(40)]
        threads = [self.thread_of(i) for i in base]
        start_cursor = self.changes(owner, None, 1000)[1]

        writers, per_writer = 6, 25
        committed = []          # (thread_id, change_seq) of every committed change
        lock = threading.Lock()
        errors = []
        stop = threading.Event()

        def writer(w):
            conn = connect(self.dbname, autocommit=False)
            rnd = random.Random(w)
            try:
                for k in range(per_writer):
                    with conn.cursor() as cur:
                        if rnd.random() < 0.3:
                            cur.execute("SELECT axme.send_intent(%s)", (task_doc(to_agent=owner, n=1000 * w + k),))
                            iid = cur.fetchone()[0]
                            cur.execute("SELECT thread_id FROM axme.threads WHERE intent_id = %s", (iid,))
                        else:
                            tid = rnd.choice(threads)
                            cur.execute("SELECT axme.reply(%s, %s)", (tid, "w%d k%d" % (w, k)))
                            cur.execute("SELECT %s::uuid", (tid,))
                        tid = cur.fetchone()[0]
                        cur.execute("SELECT f.change_seq FROM axme.inbox_feed f JOIN axme.agents a ON a.agent_id = f.owner_id"
                                    " WHERE a.address = %s AND f.thread_id = %s", (owner, tid))
                        seq = cur.fetchone()[0]
                    # hold the transaction open a little: other writers start and queue meanwhile
                    time.sleep(rnd.random() * 0.02)
                    if rnd.random() < 0.15:
                        conn.rollback()
                    else:
                        conn.commit()
                        with lock:
                            committed.append((str(tid), seq))
            except Exception as e:
                errors.append(e)
            finally:
                conn.close()

        seen = []               # (thread_id, cursor) in the order the reader got them
        reader_conn = self.connect()

        def reader():
            cursor = start_cursor
            try:
                while True:
                    done = stop.is_set()
                    changes, cursor, has_more = self.changes(owner, cursor, 7, reader_conn)
                    for c in changes:
                        seen.append((c["thread"]["thread_id"], int(c["cursor"])))
                    if done and not has_more and not changes:
                        return
                    if not changes:
                        time.sleep(0.002)
            except Exception as e:
                errors.append(e)

        ws = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        r = threading.Thread(target=reader)
        r.start()
        for t in ws:
            t.start()
        for t in ws:
            t.join(120)
        stop.set()
        r.join(60)
        self.assertFalse(r.is_alive())
        self.assertEqual(errors, [])
        self.assertGreater(len(committed), writers * per_writer // 2)

        cursors = [c for _, c in seen]
        self.assertEqual(cursors, sorted(set(cursors)), "cursors strictly increase")
        # The reader, which ran during the writes, saw every committed change with its thread
        # (each change is reported at its own number unless a later change of the same thread
        # superseded it before the reader got there, in which case the later one is reported).
        seen_set = set(seen)
        latest = {}
        for tid, s in committed:
            latest[tid] = max(latest.get(tid, 0), s)
        for tid, s in committed:
            self.assertTrue((tid, s) in seen_set or any(t == tid and c > s for t, c in seen),
                            "change %d of thread %s missed" % (s, tid))
        for tid, s in latest.items():
            self.assertIn((tid, s), seen_set, "last change of %s not seen" % tid)
        # Rolled-back changes give their number back: committed numbers are exactly
        # start+1 .. start+n, with no gap.
        nums = sorted(s for _, s in committed)
        self.assertEqual(nums, list(range(int(start_cursor) + 1, int(start_cursor) + 1 + len(nums))))

    def test_a_writer_waits_for_an_earlier_writer_of_the_same_owner(self):
        # The counter lock is what keeps numbers in commit order: a second writer of the same
        # owner waits until the first one ends; a writer of another owner does not.
        t1 = self.thread_of(self.send_task(n=1))
        t2 = self.thread_of(self.send_task(n=2))
        tb = self.thread_of(self.send_task(to_agent=BOB, n=3))
        a = self.connect(autocommit=False)
        b = self.connect(autocommit=False)
        c = self.connect(autocommit=False)
        self.q("SELECT axme.reply(%s, 'first')", (t1,), a)
        self.q("SET lock_timeout = '300ms'", None, b)
        self.assertSQLState("55P03", "SELECT axme.reply(%s, 'second')", (t2,), b)
        b.rollback()
        self.q("SET lock_timeout = '300ms'", None, c)
        self.q("SELECT axme.reply(%s, 'other owner')", (tb,), c)
        c.commit()
        a.commit()
        self.q("SELECT axme.reply(%s, 'second')", (t2,), b)
        b.commit()


if __name__ == "__main__":
    unittest.main()
