"""pg_dump -Fc of a database using axme, pg_restore into a fresh database (the restore runs
CREATE EXTENSION): agents, intents, events, idempotency keys and the agent id sequence survive,
and the restored database keeps working.  Roles are stored by OID (regrole): the dump writes their
names and the restore resolves them again, so a cluster whose roles have other OIDs keeps working;
a role missing there makes the restore fail (restore the roles first: pg_dumpall --roles-only)."""
import json
import os
import subprocess
import tempfile
import unittest

import psycopg2
import psycopg2.errors

from axmetest import AxmeTestCase, connect

BINDIR = subprocess.run([os.environ.get("PG_CONFIG", "pg_config"), "--bindir"], capture_output=True, text=True,
                        check=True).stdout.strip()
POLL = "agent://myorg/prod/dump-poll"
STREAM = "agent://myorg/prod/dump-stream"
HOOK = "agent://myorg/prod/dump-hook"
KEY_DOC = json.dumps({"intent_type": "intent.order.pay.v1", "to_agent": POLL,
                      "payload": {"order": "ORD-1", "amount": 42}})

# every table in a canonical text form, to compare source and restored database
SNAPSHOT = {
    "agents": "SELECT agent_id, address, delivery_mode, endpoint_url, options, registered_by, "
              "created_at, updated_at FROM axme.agents ORDER BY agent_id",
    "intents": "SELECT * FROM axme.intents ORDER BY intent_id",
    "events": "SELECT * FROM axme.events ORDER BY intent_id, seq",
    "idempotency_keys": "SELECT * FROM axme.idempotency_keys ORDER BY sender, key",
}


class DumpRestoreTest(AxmeTestCase):

    def snapshot(self, conn):
        out = {}
        with conn.cursor() as cur:
            for name, sql in SNAPSHOT.items():
                cur.execute(sql)
                out[name] = [tuple(str(v) for v in row) for row in cur.fetchall()]
        return out

    def test_dump_and_restore_keep_everything(self):
        self.register(POLL, "poll", {"retry": {"max_attempts": 3, "base_delay_ms": 1, "max_delay_ms": 2}})
        self.register(STREAM, "stream")
        self.q("SELECT axme.register_agent(%s, 'http', 'https://example.com/hook')", (HOOK,))
        keyed = self.q1("SELECT axme.send_intent(%s, 'order-ORD-1-pay')", (KEY_DOC,))
        dead = self.send(POLL, 20, max_delivery_attempts=1)
        submitted = [self.send(POLL, n) for n in range(3)]
        done = self.send(STREAM, 10)
        # not due for a day: the http worker (preloaded) leaves it alone in both databases
        self.send(HOOK, 30, key="hook-key-0001", not_before="2099-01-01T00:00:00Z")
        # hand out the three oldest: keyed and submitted[0] stay leased, dead is dead-lettered
        handed = self.poll(POLL, 3, lease="1 hour")
        self.assertEqual(handed, [(keyed, 1), (dead, 1), (submitted[0], 1)])
        self.q("SELECT axme.fail(%s, '{\"code\": \"boom\"}', true, 1)", (dead,))
        self.assertEqual(self.doc(dead)["dead_letter_reason"], "exhausted")
        self.q("SELECT axme.resolve(%s, 'CANCELED')", (submitted[1],))
        self.assertEqual(self.poll(STREAM), [(done, 1)])
        self.q("SELECT axme.complete(%s, '{\"ok\": true}', 1)", (done,))

        before = self.snapshot(self.db)
        channels = {a: self.q1("SELECT axme.channel(%s)", (a,)) for a in (POLL, STREAM, HOOK)}
        max_agent_id = self.q1("SELECT max(agent_id) FROM axme.agents")
        self.assertGreaterEqual(len(before["events"]), 20)

        restored = self.dbname + "_restored"
        with tempfile.TemporaryDirectory() as tmp:
            dump = os.path.join(tmp, "axme.dump")
            subprocess.run([os.path.join(BINDIR, "pg_dump"), "-Fc", "-d", self.dbname, "-f", dump],
                           check=True)
            admin = connect("postgres")
            with admin.cursor() as cur:
                cur.execute('DROP DATABASE IF EXISTS "%s"' % restored)
                cur.execute('CREATE DATABASE "%s"' % restored)
            try:
                r = subprocess.run([os.path.join(BINDIR, "pg_restore"), "--exit-on-error",
                                    "-d", restored, dump], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stderr, "")
                db2 = connect(restored)
                try:
                    self.check_restored(db2, before, channels, max_agent_id, keyed, dead, done, submitted)
                finally:
                    db2.close()
            finally:
                with admin.cursor() as cur:
                    cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % restored)
                admin.close()

    def check_restored(self, db2, before, channels, max_agent_id, keyed, dead, done, submitted):
        q = lambda sql, args=None: self.q(sql, args, conn=db2)
        q1 = lambda sql, args=None: self.q1(sql, args, conn=db2)
        # the restore created the extension itself, at the same version
        self.assertEqual(q1("SELECT extversion FROM pg_extension WHERE extname = 'axme'"),
                         q1("SELECT default_version FROM pg_available_extensions WHERE name = 'axme'"))
        # every row of every table, unchanged
        after = self.snapshot(db2)
        for table in SNAPSHOT:
            self.assertEqual(len(after[table]), len(before[table]), table)
            self.assertEqual(after[table], before[table], table)
        self.assertEqual({a: q1("SELECT axme.channel(%s)", (a,)) for a in channels}, channels)
        # an idempotency key still returns the original intent; another intent with it: 23505
        self.assertEqual(q1("SELECT axme.send_intent(%s, 'order-ORD-1-pay')", (KEY_DOC,)), keyed)
        with self.assertRaises(psycopg2.errors.UniqueViolation):
            q("SELECT axme.send_intent(%s, 'order-ORD-1-pay')",
              (KEY_DOC.replace('"amount": 42', '"amount": 43'),))
        # new sends work and number their events from 1
        new = q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.order.pay.v1", "to_agent": POLL, "payload": {"order": "ORD-2"}}),))
        self.assertEqual(q("SELECT seq, event_type FROM axme.intent_events(%s)", (new,)),
                         [(1, "intent.created"), (2, "intent.submitted")])
        # the agent id sequence was kept: a new agent gets a new id and its own channel
        q("SELECT axme.register_agent('agent://myorg/prod/dump-new')")
        new_id = q1("SELECT agent_id FROM axme.agents WHERE address = 'agent://myorg/prod/dump-new'")
        self.assertGreater(new_id, max_agent_id)
        self.assertNotIn(q1("SELECT axme.channel('agent://myorg/prod/dump-new')"), channels.values())
        # the lifecycle carries on: the queue, the dead letter, a finished intent
        handed = [r[0] for r in q("SELECT intent_id FROM axme.poll(%s, 10)", (POLL,))]
        self.assertEqual(handed, [submitted[2], new])
        self.assertEqual(q1("SELECT reason FROM axme.dead_letters WHERE intent_id = %s", (dead,)), "exhausted")
        q("SELECT axme.replay(%s)", (dead,))
        self.assertEqual(q("SELECT intent_id, attempt FROM axme.poll(%s, 10)", (POLL,)), [(dead, 2)])
        self.assertEqual(q1("SELECT axme.wait_for(%s, '0')", (done,))["result"], {"ok": True})
        self.assertEqual(q1("SELECT count(*) FROM axme.intents WHERE status = 'DELIVERED'"), 5)


    def dump(self, tmp):
        path = os.path.join(tmp, "axme.dump")
        subprocess.run([os.path.join(BINDIR, "pg_dump"), "-Fc", "-d", self.dbname, "-f", path], check=True)
        return path

    def restore(self, dump, restored):
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % restored)
            cur.execute('CREATE DATABASE "%s"' % restored)
        admin.close()
        return subprocess.run([os.path.join(BINDIR, "pg_restore"), "--exit-on-error", "-d", restored, dump],
                              capture_output=True, text=True)

    def drop_db(self, name):
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        admin.close()

    def roles(self, *names, drop=False):
        admin = connect("postgres")
        with admin.cursor() as cur:
            for r in names:
                if drop:
                    cur.execute("DROP OWNED BY %s" % r)   # in this test's database
                cur.execute("DROP ROLE IF EXISTS %s" % r)
                if not drop:
                    cur.execute("CREATE ROLE %s" % r)
        admin.close()

    def test_restore_where_the_roles_have_other_oids(self):
        """The roles exist at the restore with other OIDs (as in another cluster): they are
        resolved by name, the receiver polls, the sender reads its intent and its key answers."""
        agent = "agent://myorg/prod/dump-roles"
        self.roles("dr_recv", "dr_send")
        try:
            self.q("GRANT axme_agent TO dr_recv")
            self.q("GRANT axme_sender TO dr_send")
            self.register(agent, "poll", {"db_role": "dr_recv"})
            self.q("SET ROLE dr_send")
            doc = json.dumps({"intent_type": "intent.order.pay.v1", "to_agent": agent, "payload": {"n": 1}})
            sent = self.q1("SELECT axme.send_intent(%s, 'dump-roles-key')", (doc,))
            self.q("RESET ROLE")
            old = self.q1("SELECT ARRAY['dr_recv'::regrole::oid, 'dr_send'::regrole::oid]")
            restored = self.dbname + "_roles"
            with tempfile.TemporaryDirectory() as tmp:
                dump = self.dump(tmp)
                # the same names, new OIDs
                self.q("REVOKE ALL ON SCHEMA axme FROM dr_recv, dr_send")
                self.roles("dr_recv", "dr_send", drop=True)
                self.roles("dr_recv", "dr_send")
                try:
                    r = self.restore(dump, restored)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    db2 = connect(restored)
                    try:
                        q1 = lambda sql, args=None: self.q1(sql, args, conn=db2)
                        new = q1("SELECT ARRAY['dr_recv'::regrole::oid, 'dr_send'::regrole::oid]")
                        self.assertNotEqual(new, old)
                        self.assertTrue(q1("SELECT db_role = 'dr_recv'::regrole FROM axme.agents WHERE address = %s",
                                           (agent,)))
                        self.assertTrue(q1("SELECT sender_role = 'dr_send'::regrole FROM axme.intents WHERE intent_id = %s",
                                           (sent,)))
                        self.q("GRANT axme_agent TO dr_recv", conn=db2)
                        self.q("GRANT axme_sender TO dr_send", conn=db2)
                        self.q("SET ROLE dr_send", conn=db2)
                        self.assertEqual(q1("SELECT axme.send_intent(%s, 'dump-roles-key')", (doc,)), sent)
                        self.assertEqual(q1("SELECT axme.get_intent(%s)->>'status'", (sent,)), "SUBMITTED")
                        self.q("SET ROLE dr_recv", conn=db2)
                        self.assertEqual(self.q("SELECT intent_id, attempt FROM axme.poll(%s)", (agent,), conn=db2),
                                         [(sent, 1)])
                        self.q("RESET ROLE", conn=db2)
                    finally:
                        db2.close()
                finally:
                    self.drop_db(restored)
        finally:
            self.q("RESET ROLE")
            self.q("SELECT axme.unregister_agent(%s, true)", (agent,))
            self.roles("dr_recv", "dr_send", drop=True)

    def test_restore_without_the_roles_fails(self):
        """A role named in axme's tables that does not exist at the restore aborts the COPY of
        the table (regrole input resolves names): restore the roles first."""
        agent = "agent://myorg/prod/dump-norole"
        self.roles("dr_missing")
        try:
            self.register(agent, "poll", {"db_role": "dr_missing"})
            restored = self.dbname + "_norole"
            with tempfile.TemporaryDirectory() as tmp:
                dump = self.dump(tmp)
                self.q("SELECT axme.unregister_agent(%s, true)", (agent,))
                self.roles("dr_missing", drop=True)
                try:
                    r = self.restore(dump, restored)
                    self.assertNotEqual(r.returncode, 0)
                    self.assertIn('role "dr_missing" does not exist', r.stderr)
                    self.assertIn("COPY agents", r.stderr)
                    # with the role created first (pg_dumpall --roles-only), the restore works
                    self.roles("dr_missing")
                    r = self.restore(dump, restored)
                    self.assertEqual(r.returncode, 0, r.stderr)
                finally:
                    self.drop_db(restored)
        finally:
            self.q("SELECT axme.unregister_agent(%s, true) FROM axme.agents WHERE address = %s", (agent, agent))
            self.roles("dr_missing", drop=True)


if __name__ == "__main__":
    unittest.main()
