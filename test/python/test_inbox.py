"""Inbox: thread NOTIFYs (one per owner per transaction, no data) and inbox_changes with concurrent writers that commit
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


def key(cursor):
    """A cursor "xid:number" as a comparable tuple."""
    x, n = cursor.split(":")
    return (int(x), int(n))


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

    def test_every_thread_change_notifies_the_owner_once_per_transaction_without_data(self):
        ch = {a: self.q1("SELECT axme.channel(%s)", (a,)) for a in (ALICE, BOB, SHOP)}
        listener = self.connect()
        with listener.cursor() as cur:
            for c in ch.values():
                cur.execute("LISTEN %s" % c)
        drain_notifies(listener, 0.2)
        payload = {"inbox": "changed"}

        def heard(count):
            got = collect_notifies(listener, count)
            for n in got:
                self.assertEqual(json.loads(n.payload), payload, "no data in the payload")
            return sorted(n.channel for n in got)

        # three tasks in one transaction: one notification to alice, at commit only
        writer = self.connect(autocommit=False)
        iid = self.send_task(conn=writer, reply_to=SHOP)
        self.send_task(conn=writer, n=2)
        self.send_task(conn=writer, n=3)
        self.assertEqual(drain_notifies(listener, 0.3), [], "nothing before commit")
        writer.commit()
        self.assertEqual(heard(1), [ch[ALICE]])
        tid = self.thread_of(iid)

        # reply: alice again; delegate: alice (it left) and bob (it arrived)
        self.q("SELECT axme.reply(%s, 'secret text that must not leak')", (tid,))
        self.assertEqual(heard(1), [ch[ALICE]])
        self.q("SELECT axme.delegate(%s, %s)", (tid, BOB))
        self.assertEqual(heard(2), sorted([ch[ALICE], ch[BOB]]))

        # decide: bob hears the thread close; shop (reply_to, a poll agent) its completion thread
        self.q("SELECT axme.decide(%s, 'approved')", (iid,))
        self.assertEqual(heard(2), sorted([ch[BOB], ch[SHOP]]))
        changes = self.changes(SHOP)[0]
        self.assertEqual([(c["thread"]["kind"], c["thread"]["intent_id"]) for c in changes],
                         [("completion", str(iid))])

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
                    pending = []
                    # one to three changes per transaction; existing threads in one order, as an
                    # application would, so that two writers cannot deadlock on thread rows
                    picks = sorted(rnd.sample(threads, 3), key=str)
                    for j in range(rnd.randint(1, 3)):
                        with conn.cursor() as cur:
                            if rnd.random() < 0.3:
                                cur.execute("SELECT axme.send_intent(%s)",
                                            (task_doc(to_agent=owner, n=10000 * w + 10 * k + j),))
                                iid = cur.fetchone()[0]
                                cur.execute("SELECT thread_id FROM axme.threads WHERE intent_id = %s", (iid,))
                            else:
                                tid = picks[j]
                                cur.execute("SELECT axme.reply(%s, %s)", (tid, "w%d k%d" % (w, k)))
                                cur.execute("SELECT %s::uuid", (tid,))
                            tid = cur.fetchone()[0]
                            cur.execute("SELECT f.xid::text || ':' || f.change_seq FROM axme.inbox_feed f"
                                        " JOIN axme.agents a ON a.agent_id = f.owner_id"
                                        " WHERE a.address = %s AND f.thread_id = %s", (owner, tid))
                            pending.append((str(tid), key(cur.fetchone()[0])))
                    # hold the transaction open a little: other writers start and queue meanwhile
                    time.sleep(rnd.random() * 0.02)
                    if rnd.random() < 0.15:
                        conn.rollback()
                    else:
                        conn.commit()
                        with lock:
                            committed.extend(pending)
            except Exception as e:
                errors.append(e)
            finally:
                conn.close()

        seen = []               # (thread_id, cursor) in the order the reader got them
        reader_conn = self.connect()

        def reader():
            cursor = start_cursor
            quiet_since = None
            try:
                while True:
                    done = stop.is_set()
                    changes, cursor, has_more = self.changes(owner, cursor, 7, reader_conn)
                    for c in changes:
                        seen.append((c["thread"]["thread_id"], key(c["cursor"])))
                    if changes or not done:
                        quiet_since = None
                    elif quiet_since is None:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > 0.5:
                        return      # writers gone and nothing new for half a second
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
        # The reader, which ran during the writes, ends with the final state of every thread: each
        # thread's last committed change (the feed row as it is now) was reported to it.  (Earlier
        # changes of a thread may be folded into a later one; two changes of one thread commit
        # in the order their transactions took the thread's row lock, which need not be the
        # order of their transaction ids.)
        final = {str(t): key(c) for t, c in self.q(
            "SELECT f.thread_id, f.xid::text || ':' || f.change_seq FROM axme.inbox_feed f"
            " JOIN axme.agents a ON a.agent_id = f.owner_id WHERE a.address = %s", (owner,))}
        seen_set = set(seen)
        changed = {tid for tid, _ in committed}
        for tid in changed:
            self.assertTrue((tid, final[tid]) in seen_set, "last change of thread %s missed" % tid)
        for tid, s in committed:
            if final[tid] == s:
                self.assertTrue((tid, s) in seen_set, "change %s of thread %s missed" % (s, tid))
        self.assertFalse([c for _, c in seen if c <= key(start_cursor)], "nothing at or before the start")

    def test_a_change_that_commits_late_is_reported_after_the_ones_that_committed_before_it(self):
        # T1 starts writing first (smaller transaction id) and commits last.  Until T1 ends,
        # inbox_changes holds back T2's committed change too (it could otherwise move the cursor
        # past T1's), then reports both; writers of one owner never wait for each other.
        owner = "agent://acme/ops/late"
        self.register(owner, "inbox")
        t1 = self.thread_of(self.send_task(to_agent=owner, n=1))
        t2 = self.thread_of(self.send_task(to_agent=owner, n=2))
        start = self.changes(owner)[1]
        a = self.connect(autocommit=False)
        b = self.connect(autocommit=False)
        self.q("SELECT axme.reply(%s, 'first to start')", (t1,), a)
        self.q("SET lock_timeout = '2s'", None, b)
        self.q("SELECT axme.reply(%s, 'first to commit')", (t2,), b)    # does not wait for a
        b.commit()
        changes, cursor, has_more = self.changes(owner, start)
        self.assertEqual((changes, cursor, has_more), ([], start, False), "held back while T1 runs")
        a.commit()
        deadline = time.monotonic() + 10     # (another session's transaction may hold it back too)
        while True:
            changes, cursor, has_more = self.changes(owner, start)
            if len(changes) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual([c["thread"]["thread_id"] for c in changes], [str(t1), str(t2)])
        self.assertEqual([c["thread"]["status"] for c in changes], ["active", "active"])
        self.assertEqual(cursor, changes[-1]["cursor"])
        self.assertFalse(has_more)
        self.assertEqual(self.changes(owner, cursor)[0], [])


if __name__ == "__main__":
    unittest.main()
