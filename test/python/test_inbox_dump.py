"""pg_dump -Fc / pg_restore of a database with inbox threads: threads, timelines, the change feed
and its sequence come back unchanged, and the inbox keeps working (decide, inbox_changes from a
cursor taken before the dump, in the same cluster)."""
import json
import os
import subprocess
import tempfile
import unittest

from axmetest import AxmeTestCase, connect

BINDIR = subprocess.run([os.environ.get("PG_CONFIG", "pg_config"), "--bindir"], capture_output=True, text=True,
                        check=True).stdout.strip()
ALICE = "agent://acme/dump/alice"
SHOP = "agent://acme/dump/shop"
TABLES = {
    "threads": "SELECT * FROM axme.threads ORDER BY thread_id",
    "thread_messages": "SELECT * FROM axme.thread_messages ORDER BY thread_id, seq",
    "inbox_feed": "SELECT * FROM axme.inbox_feed ORDER BY owner_id, thread_id",
    "inbox_change_seq": "SELECT last_value FROM axme.inbox_change_seq",
}


def task(n):
    return json.dumps({"intent_type": "intent.task.v1", "to_agent": ALICE, "payload": {"n": n},
                       "reply_to": SHOP, "human_task": {"task_type": "approval", "title": "T%d" % n}})


class InboxDumpTest(AxmeTestCase):

    def snapshot(self, conn):
        out = {}
        with conn.cursor() as cur:
            for name, sql in TABLES.items():
                cur.execute(sql)
                out[name] = [tuple(str(v) for v in row) for row in cur.fetchall()]
        return out

    def test_dump_and_restore_keep_the_inbox(self):
        self.register(ALICE, "inbox")
        self.register(SHOP, "poll")
        ids = [self.q1("SELECT axme.send_intent(%s)", (task(n),)) for n in range(3)]
        self.q("SELECT axme.reply(thread_id, 'on it', 'Alice') FROM axme.threads WHERE intent_id = %s", (ids[0],))
        self.q("SELECT axme.decide(%s, 'approved', 'fine', '{}', 'Alice')", (ids[1],))
        cursor = self.q("SELECT next_cursor FROM axme.inbox_changes(%s)", (ALICE,))[0][0]
        before = self.snapshot(self.db)
        self.assertEqual(len(before["threads"]), 4)        # three tasks and one completion

        restored = self.dbname + "_restored"
        with tempfile.TemporaryDirectory() as tmp:
            dump = os.path.join(tmp, "axme.dump")
            subprocess.run([os.path.join(BINDIR, "pg_dump"), "-Fc", "-d", self.dbname, "-f", dump], check=True)
            admin = connect("postgres")
            with admin.cursor() as cur:
                cur.execute('DROP DATABASE IF EXISTS "%s"' % restored)
                cur.execute('CREATE DATABASE "%s"' % restored)
            try:
                r = subprocess.run([os.path.join(BINDIR, "pg_restore"), "--exit-on-error", "-d", restored, dump],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                db2 = connect(restored)
                try:
                    self.assertEqual(self.snapshot(db2), before)
                    q = lambda sql, args=None: self.q(sql, args, conn=db2)
                    self.assertEqual({r[0] for r in q("SELECT intent_id FROM axme.inbox(%s)", (ALICE,))},
                                     {ids[0], ids[2]})
                    q("SELECT axme.decide(%s, 'rejected')", (ids[2],))
                    changes, nxt, more = q("SELECT * FROM axme.inbox_changes(%s, %s)", (ALICE, cursor))[0]
                    self.assertEqual([(c["thread"]["intent_id"], c["thread"]["status"]) for c in changes],
                                     [(str(ids[2]), "done")])
                    self.assertEqual(q("SELECT count(*) FROM axme.threads WHERE kind = 'completion'")[0][0], 2)
                finally:
                    db2.close()
            finally:
                with admin.cursor() as cur:
                    cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % restored)
                admin.close()


if __name__ == "__main__":
    unittest.main()
