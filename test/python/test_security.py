"""Roles and security across sessions: login roles, SET ROLE, NOTIFY payloads, wait_for between
roles, and a spy role that must not read another agent's payloads through any table, view,
function or channel."""
import json
import unittest

import psycopg2
import psycopg2.errors

from axmetest import AxmeTestCase, Waiter, collect_notifies, connect, drain_notifies

STREAM = "agent://secorg/prod/py-stream"
OTHER = "agent://secorg/prod/py-other"
SECRET = "card-4111-1111-1111-1111"
PASSWORD = "axme-sec-test"

# role -> (attributes, memberships); cluster-wide, created and dropped by the test class
ROLES = {
    "sec_py_app": ("LOGIN", ["axme_sender"]),
    "sec_py_worker": ("LOGIN", ["axme_agent"]),
    "sec_py_spy": ("LOGIN", ["axme_sender", "axme_agent"]),
    "sec_py_login": ("LOGIN NOINHERIT", []),  # may SET ROLE sec_py_app, holds nothing itself
    "sec_py_noinherit": ("LOGIN NOINHERIT", ["axme_sender"]),
    "sec_py_admin": ("LOGIN", ["axme_admin"]),
    "sec_py_approver": ("LOGIN NOINHERIT", ["sec_py_worker"]),  # must SET ROLE sec_py_worker
}
INBOX = "agent://secorg/prod/py-inbox"
INTERNAL = "agent://secorg/prod/py-internal"


def drop_roles(cur):
    for r in ROLES:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,))
        if cur.fetchone():
            cur.execute('DROP OWNED BY "%s"' % r)
            cur.execute('DROP ROLE "%s"' % r)


class SecurityTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            drop_roles(cur)
            for r, (attrs, member_of) in ROLES.items():
                cur.execute('CREATE ROLE "%s" %s PASSWORD %%s' % (r, attrs), (PASSWORD,))
                for m in member_of:
                    cur.execute('GRANT "%s" TO "%s"' % (m, r))
            cur.execute("GRANT sec_py_app TO sec_py_login")
            cur.execute("SELECT axme.register_agent(%s, 'stream', NULL, %s)",
                        (STREAM, json.dumps({"db_role": "sec_py_worker"})))
            cur.execute("SELECT axme.register_agent(%s, 'poll', NULL, %s)",
                        (OTHER, json.dumps({"db_role": "sec_py_spy"})))
            cur.execute("SELECT axme.register_agent(%s, 'inbox', NULL, %s)",
                        (INBOX, json.dumps({"db_role": "sec_py_worker"})))
            cur.execute("""CREATE FUNCTION public.sec_py_whoami(intent jsonb) RETURNS jsonb LANGUAGE sql
                           AS $$ SELECT jsonb_build_object('user', current_user::text,
                                                           'session', session_user::text) $$""")
        conn.close()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()   # drops the database first: roles own nothing in it then
        conn = connect("postgres")
        with conn.cursor() as cur:
            drop_roles(cur)
        conn.close()

    def setUp(self):
        super().setUp()
        # every test starts from an empty queue
        for a in (STREAM, OTHER):
            for iid, attempt in self.poll(a, 10000):
                self.q("SELECT axme.complete(%s, '{}', %s)", (iid, attempt))

    def login(self, role):
        c = psycopg2.connect(dbname=self.dbname, user=role, password=PASSWORD,
                             application_name="axme-test")
        c.autocommit = True
        self._conns.append(c)
        return c

    def secret_intent(self, conn, to=STREAM):
        return self.q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.pay.v1", "to_agent": to, "payload": {"card": SECRET}}),), conn)

    def test_session_roles_and_set_role(self):
        app = self.login("sec_py_app")
        iid = self.secret_intent(app)
        self.assertEqual(self.doc(iid)["sender_role"], "sec_py_app")
        # a login role holding no axme role is refused; after SET ROLE to a sender it sends as that role
        login = self.login("sec_py_login")
        self.assertSQLState("42501", "SELECT axme.send_intent(%s)",
                            (json.dumps({"intent_type": "intent.pay.v1", "to_agent": STREAM, "payload": {}}),),
                            conn=login)
        self.q("SET ROLE sec_py_app", conn=login)
        iid2 = self.secret_intent(login)
        self.assertEqual(self.doc(iid2)["sender_role"], "sec_py_app")
        self.assertEqual({r[0] for r in self.q("SELECT actor FROM axme.events WHERE intent_id = %s", (iid2,))},
                         {"sec_py_app"})
        # and reads what it sent as that role
        self.assertEqual(self.q1("SELECT axme.get_intent(%s)", (iid,), conn=login)["payload"]["card"], SECRET)
        self.q("RESET ROLE", conn=login)
        self.assertSQLState("42501", "SELECT axme.get_intent(%s)", (iid,), conn=login)
        # NOINHERIT: the membership counts only after SET ROLE, and then the role is the sender
        ni = self.login("sec_py_noinherit")
        self.assertSQLState("42501", "SELECT axme.send_intent(%s)",
                            (json.dumps({"intent_type": "intent.pay.v1", "to_agent": STREAM, "payload": {}}),),
                            conn=ni)
        self.q("SET ROLE axme_sender", conn=ni)
        # (every member of axme_sender may read what axme_sender itself sends: no secret here)
        iid3 = self.q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.pay.v1", "to_agent": STREAM, "payload": {}}),), ni)
        self.assertEqual(self.doc(iid3)["sender_role"], "axme_sender")
        self.assertEqual(self.q1("SELECT session_user", conn=ni), "sec_py_noinherit")

    def test_spy_learns_identifiers_only(self):
        spy = self.login("sec_py_spy")
        worker = self.login("sec_py_worker")
        channel = self.q1("SELECT axme.channel(%s)", (STREAM,), conn=spy)
        # anyone may LISTEN on any channel: the wake-up must carry identifiers and counts only
        self.q("LISTEN %s" % channel, conn=spy)
        self.q("LISTEN axme_alerts", conn=spy)
        drain_notifies(spy, 0.2)
        app = self.login("sec_py_app")
        iid = self.secret_intent(app)
        notes = collect_notifies(spy, 1, timeout=10)
        self.assertEqual(len(notes), 1, notes)
        payload = json.loads(notes[0].payload)
        self.assertEqual(set(payload), {"intent_id", "count"})
        self.assertEqual(payload, {"intent_id": iid, "count": 1})
        self.assertNotIn(SECRET, notes[0].payload)
        # with the id in hand, nothing readable: functions refuse, tables and views show nothing
        self.assertSQLState("42501", "SELECT axme.get_intent(%s)", (iid,), conn=spy)
        self.assertSQLState("42501", "SELECT * FROM axme.intent_events(%s)", (iid,), conn=spy)
        self.assertSQLState("42501", "SELECT axme.wait_for(%s, '0')", (iid,), conn=spy)
        self.assertSQLState("42501", "SELECT * FROM axme.poll(%s)", (STREAM,), conn=spy)
        self.assertSQLState("42501", "SELECT axme.complete(%s)", (iid,), conn=spy)
        self.assertEqual(self.q1("SELECT count(*) FROM axme.complete_many(ARRAY[%s]::uuid[])", (iid,), conn=spy), 0)
        self.assertSQLState("42501", "SELECT axme.agent_secret(%s)", (OTHER,), conn=spy)
        # every relation of schema axme the spy may select from: no row mentions the secret
        rels = [r[0] for r in self.q(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'axme'::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v', 'm') AND has_table_privilege('sec_py_spy', c.oid, 'SELECT') "
            "ORDER BY 1")]
        self.assertIn("axme.intents", rels)
        self.assertIn("axme.dead_letters", rels)
        for rel in rels:
            if rel == "axme.agents":
                sql = ("SELECT row_to_json(t)::text FROM (SELECT agent_id, address, delivery_mode, db_role "
                       "FROM axme.agents) t")
            else:
                sql = "SELECT row_to_json(t)::text FROM %s t" % rel
            rows = [r[0] for r in self.q(sql, conn=spy)]
            self.assertFalse([r for r in rows if SECRET in r or iid in r], rel)
        # the receiver gets it, and the sender's wait_for wakes when the receiver completes
        waiter = Waiter(self.dbname, iid, "30 seconds")
        waiter.conn.close()
        waiter.conn = self.login("sec_py_app")
        waiter.pid = waiter.conn.get_backend_pid()
        waiter.start()
        self.assertTrue(waiter.wait_until_waiting(self.db))
        got = self.q("SELECT intent_id, payload FROM axme.poll(%s, 10)", (STREAM,), conn=worker)
        self.assertEqual(got, [(iid, {"card": SECRET})])
        self.q("SELECT axme.complete(%s, '{\"ok\": true}', 1)", (iid,), conn=worker)
        waiter.join(30)
        self.assertIsNone(waiter.error)
        self.assertEqual(waiter.result["status"], "COMPLETED")
        self.assertEqual(self.q("SELECT actor FROM axme.events WHERE intent_id = %s ORDER BY seq", (iid,)),
                         [("sec_py_app",), ("sec_py_app",), ("sec_py_worker",), ("sec_py_worker",)])
        # nothing else arrived on the spy's channels
        self.assertEqual([n.payload for n in drain_notifies(spy, 0.3)], [])

    def test_superuser_keeps_working(self):
        iid = self.secret_intent(self.db)
        self.assertEqual(self.doc(iid)["sender_role"], self.q1("SELECT current_user"))
        self.assertEqual(self.poll(STREAM), [(iid, 1)])
        self.q("SELECT axme.complete(%s, '{}', 1)", (iid,))
        self.assertEqual(self.status(iid), "COMPLETED")
        self.assertEqual(self.q1("SELECT axme.agent_secret(%s)", (OTHER,)), None)   # a poll agent: none
        self.assertIsNotNone(self.q1("SELECT count(*) FROM axme.agent_secrets"))


    def test_internal_handler_runs_as_the_registering_role(self):
        """A non-superuser admin registers an internal agent without db_role: the worker runs the
        handler as that admin (the caller of register_agent), not as the functions' owner."""
        admin = self.login("sec_py_admin")
        self.q("SELECT axme.register_agent(%s, 'internal', NULL, %s)",
               (INTERNAL, json.dumps({"handler": "public.sec_py_whoami"})), conn=admin)
        self.assertEqual(self.q1("SELECT registered_by FROM axme.agents WHERE address = %s", (INTERNAL,)),
                         "sec_py_admin")
        iid = self.q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.whoami.v1", "to_agent": INTERNAL, "payload": {}}),))
        doc = self.q1("SELECT axme.wait_for(%s, '60 seconds')", (iid,))
        self.assertIsNotNone(doc, "the internal worker did not run the handler within 60 s")
        self.assertEqual(doc["status"], "COMPLETED", doc)
        self.assertEqual(doc["result"]["user"], "sec_py_admin")
        # a superuser db_role is refused to this admin (a superuser is not a role to run code as)
        self.assertSQLState("42501", "SELECT axme.register_agent(%s, 'internal', NULL, %s)",
                            (INTERNAL, json.dumps({"db_role": "postgres"})), conn=admin)

    def test_decide_records_the_role_after_set_role(self):
        """A NOINHERIT login member of the inbox's role may decide only after SET ROLE, and the
        recorded actor is the role set, not the login role."""
        app = self.login("sec_py_app")
        iid = self.q1("SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.approve.v1", "to_agent": INBOX, "payload": {},
             "human_task": {"task_type": "approval", "title": "Approve"}}),), app)
        approver = self.login("sec_py_approver")
        self.assertSQLState("42501", "SELECT axme.decide(%s, 'approved')", (iid,), conn=approver)
        self.assertSQLState("42501", "SELECT axme.decide(%s, 'approved')", (iid,), conn=app)
        self.q("SET ROLE sec_py_worker", conn=approver)
        self.q("SELECT axme.decide(%s, 'approved', NULL, '{}', 'Ann')", (iid,), conn=approver)
        doc = self.doc(iid)
        self.assertEqual(doc["status"], "COMPLETED")
        self.assertEqual((doc["result"]["actor"], doc["result"]["actor_name"]), ("sec_py_worker", "Ann"))
        self.assertEqual(self.q1("SELECT actor FROM axme.events WHERE intent_id = %s ORDER BY seq DESC LIMIT 1",
                                 (iid,)), "sec_py_worker")
        self.assertEqual(self.q1("SELECT session_user", conn=approver), "sec_py_approver")


if __name__ == "__main__":
    unittest.main()
