"""Bad input to every public function: no internal error (SQLSTATE class XX) and no lost connection.

Every function of schema axme whose name does not start with "_" (and every private one written in
C, where a crash would be) is found in pg_proc and called with a corpus of bad values for each
argument in turn (the other arguments hold plausible values: a registered agent, an existing
intent), and once with every argument NULL, as superuser, as a member of axme_admin that is no
superuser, and as a role without any axme privilege.  Each call runs in a transaction that is
rolled back, under a statement_timeout.  A call may fail with any specific SQLSTATE; it must not
raise XX000 (a plain elog(ERROR), an internal failure) nor end the connection, and the server must
still answer after each call.
"""
import json
import time
import unittest
import uuid

import psycopg2

from axmetest import AxmeTestCase, connect

POLL = "agent://badinput/tests/poller"
INBOX = "agent://badinput/tests/inbox"
HTTP = "agent://badinput/tests/hook"
NOBODY = "axme_bad_input_nobody"      # no axme role at all
ADMIN = "axme_bad_input_admin"        # axme_admin, not a superuser
MB = 1024 * 1024

# a deep JSON document (nesting far beyond anything axme reads)
DEEP_ARRAY = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a": ' * 2000 + "{}" + "}" * 2000

TEXT = [None, "", "x" * MB, "agent://", "agent://A/B/C", "agent://ab/cd/e", "not an address",
        "agent://" + "a" * 300 + "/workspace/name", "agent://org/ws/" + "n" * 64, "\u00e9\u2603\U0001F4A5",
        "'; SELECT 1; --", "[]", "{}", " ", "COMPLETED", "http://127.0.0.1/", "-1"]
JSON = [None, "[]", '"x"', "1", "null", "true", "{}", DEEP_ARRAY, DEEP_OBJECT,
        json.dumps({"x": "y" * MB}),
        json.dumps({"intent_type": 1, "to_agent": [], "payload": "x"}),
        json.dumps({"intent_type": "intent.bad.input.v1", "to_agent": POLL, "payload": {},
                    "deadline_at": "infinity", "not_before": "-infinity"}),
        json.dumps({"intent_type": "intent.bad.input.v1", "to_agent": POLL, "payload": [],
                    "max_delivery_attempts": 1e300, "correlation_id": "zzz",
                    "remind_after_seconds": -1, "max_reminders": 99999999999}),
        json.dumps({"intent_type": "intent.bad.input.v1", "to_agent": INBOX, "payload": {},
                    "human_task": {"title": [], "allowed_outcomes": "x", "assignees": {},
                                   "form_schema": 1, "evidence_required": "maybe"},
                    "escalate_to": "agent://nope/nope/nope", "reply_to": ""}),
        ]
# one key at a time with a value of the wrong type or out of range (an unknown key stops at once)
BAD_VALUES = [[], "x", -1, 1e300, 1.5, {}, "", None, 10 ** 20, True, "infinity", "x" * 10000]
OPTION_KEYS = ["retry", "secret", "timeout_ms", "max_in_flight", "completion", "headers", "ca_file",
               "breaker", "rate_limit_per_second", "client_cert_file", "client_key_file", "handler",
               "db_role"]
OPTIONS = [json.dumps({k: v}) for k in OPTION_KEYS for v in BAD_VALUES]
OPTIONS += [json.dumps({k: {sub: v}}) for k, subs in (
    ("retry", ("max_attempts", "base_delay_ms", "max_delay_ms")),
    ("breaker", ("failure_threshold", "cooldown_ms")),
    ("headers", ("x-test", "content-type", ""))) for sub in subs for v in BAD_VALUES]
OPTIONS += [json.dumps({"retry": {"base_delay_ms": 10 ** 9, "max_delay_ms": 1}}),
            json.dumps({"headers": {"x-a\r\nx-b": "1"}}), json.dumps({"headers": {"x-a": "1\r\nx-b: 2"}})]
INTENT_KEYS = ["intent_type", "to_agent", "payload", "from_agent", "correlation_id", "reply_to",
               "deadline_at", "not_before", "max_delivery_attempts", "remind_after_seconds",
               "remind_interval_seconds", "max_reminders", "escalate_to", "human_task"]
GOOD_INTENT = {"intent_type": "intent.bad.input.v1", "to_agent": POLL, "payload": {}}
GOOD_TASK = {"intent_type": "intent.bad.input.v1", "to_agent": INBOX, "payload": {},
             "human_task": {"task_type": "approval", "title": "t"}}
INTENTS = [json.dumps(dict(GOOD_INTENT, **{k: v})) for k in INTENT_KEYS for v in BAD_VALUES]
INTENTS += [json.dumps(dict(GOOD_TASK, human_task=dict(GOOD_TASK["human_task"], **{k: v})))
            for k in ("task_type", "title", "description", "allowed_outcomes", "assignees",
                      "form_schema", "evidence_required", "required_comment", "due_in_seconds")
            for v in BAD_VALUES]
INTENTS += [json.dumps(dict(GOOD_INTENT, deadline_at="2000-01-01", not_before="3000-01-01")),
            json.dumps(dict(GOOD_INTENT, payload={"x": "y" * (200 * 1024)}))]
UUID = [None, "00000000-0000-0000-0000-000000000000", "not-a-uuid", "", str(uuid.uuid4())]
INT = [None, 0, -1, -2147483648, 2147483647]
BIGINT = INT + [-9223372036854775808, 9223372036854775807]
SMALLINT = [None, 0, -1, -32768, 32767]
FLOAT = [None, "NaN", "Infinity", "-Infinity", "1e308", "-1"]
INTERVAL = [None, "-1 second", "-100 years", "178000000 years", "1 month", "0", "1 microsecond",
            "2147483647 days", "-2147483648 days", "infinity"]
TIMESTAMP = [None, "infinity", "-infinity", "4713-01-01 BC", "294276-12-31", "epoch", "now"]
BOOL = [None, True, False]
TEXT_ARRAY = [None, "{}", "{NULL}", '{""}', "{" + ",".join(["x"] * 10000) + "}",
              "{" + POLL + ",agent://A/B/C}"]
UUID_ARRAY = [None, "{}", "{NULL}", "{00000000-0000-0000-0000-000000000000}"]
INT_ARRAY = [None, "{}", "{NULL}", "{-1}", "{2147483647}"]

CORPUS = {
    "text": TEXT, "character varying": TEXT, "name": TEXT, "citext": TEXT,
    "jsonb": JSON, "json": JSON,
    "uuid": UUID,
    "integer": INT, "bigint": BIGINT, "smallint": SMALLINT,
    "numeric": FLOAT + ["1e1000"], "double precision": FLOAT, "real": FLOAT,
    "interval": INTERVAL,
    "timestamp with time zone": TIMESTAMP, "timestamp without time zone": TIMESTAMP,
    "boolean": BOOL,
    "text[]": TEXT_ARRAY, "uuid[]": UUID_ARRAY, "integer[]": INT_ARRAY, "bigint[]": INT_ARRAY,
    "jsonb[]": [None, "{}", "{NULL}", '{"[]"}'],
}


class BadInputTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            for r in (NOBODY, ADMIN):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,))
                if cur.fetchone():
                    cur.execute('DROP OWNED BY "%s"' % r)
                    cur.execute('DROP ROLE "%s"' % r)
                cur.execute('CREATE ROLE "%s"' % r)
            cur.execute('GRANT axme_admin TO "%s"' % ADMIN)
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (INBOX,))
            cur.execute("SELECT axme.register_agent(%s, 'http', 'https://example.com/hook')", (HTTP,))
            cur.execute("SELECT axme.send_intent(%s)", (json.dumps(
                {"intent_type": "intent.bad.input.v1", "to_agent": POLL, "payload": {"n": 1}}),))
            cls.intent_id = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM axme.poll(%s, 1, '1 hour')", (POLL,))  # DELIVERED, attempt 1
            cur.execute("SELECT axme.send_intent(%s)", (json.dumps(
                {"intent_type": "intent.bad.input.v1", "to_agent": INBOX, "payload": {"n": 2},
                 "human_task": {"task_type": "approval", "title": "Approve"}}),))
            cls.task_id = cur.fetchone()[0]
            cur.execute("""SELECT p.oid::regprocedure::text, p.proname, p.prokind,
                                  coalesce(p.proargnames, '{}'),
                                  array(SELECT pg_catalog.format_type(t, NULL)
                                        FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, n) ORDER BY n)
                           FROM pg_proc p
                           WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind IN ('f', 'p')
                             AND p.prorettype <> 'trigger'::regtype
                             AND (p.proname !~ '^_' OR p.prolang = (SELECT oid FROM pg_language
                                                                     WHERE lanname = 'c'))
                           ORDER BY 1""")
            cls.functions = cur.fetchall()
        conn.close()

    @classmethod
    def tearDownClass(cls):
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % cls.dbname)
            for r in (NOBODY, ADMIN):
                cur.execute('DROP ROLE IF EXISTS "%s"' % r)
        admin.close()

    @staticmethod
    def corpus(argname, argtype):
        n = (argname or "").lower()
        if argtype == "jsonb" and n == "intent":
            return JSON + INTENTS
        if argtype == "jsonb" and n == "options":
            return JSON + OPTIONS
        return CORPUS.get(argtype, [None])

    def plausible(self, fname, argname, argtype):
        """A value of the argument's type that gets a call past its first checks."""
        n = (argname or "").lower()
        if argtype == "uuid" and fname in ("decide", "reply", "delegate", "inbox_thread"):
            return self.task_id
        if argtype.endswith("[]"):
            return "{}"
        if argtype in ("text", "character varying", "name", "citext"):
            if "mode" in n:
                return "http" if fname == "register_agent" else "poll"
            if "url" in n or "endpoint" in n:
                return "https://example.com/hook"
            if "status" in n:
                return "COMPLETED"
            if "outcome" in n:
                return "approve"
            if "agent" in n or "address" in n or n in ("to", "inbox", "owner", "assignee", "escalate_to"):
                return INBOX if fname.startswith("inbox") else POLL
            return "x"
        return {"uuid": self.intent_id, "jsonb": "{}", "json": "{}", "integer": 1, "bigint": 1,
                "smallint": 1, "numeric": 1, "double precision": 1, "real": 1,
                "interval": "1 millisecond", "timestamp with time zone": "now",
                "timestamp without time zone": "now", "boolean": False}.get(argtype)

    def call(self, conn, role, sig, name, kind, types, values, found, calls, codes):
        args = ", ".join("%%s::%s" % t for t in types)
        sql = ("CALL axme.%s(%s)" if kind == "p" else "SELECT axme.%s(%s)") % (name, args)
        shown = [v if v is None or len(str(v)) < 60 else str(v)[:40] + "...(%d chars)" % len(str(v))
                 for v in values]
        calls[0] += 1
        try:
            with conn.cursor() as cur:
                if role:
                    cur.execute('SET LOCAL ROLE "%s"' % role)
                cur.execute("SET LOCAL statement_timeout = '5s'")
                cur.execute(sql, values)
                if cur.description:
                    cur.fetchall()
            codes["ok"] = codes.get("ok", 0) + 1
        except psycopg2.Error as e:
            if conn.closed or e.pgcode is None:
                found.append("%s as %s with %r: connection lost: %s" % (sig, role or "superuser", shown, e))
                conn.close()
                return self.reconnect()
            codes[e.pgcode] = codes.get(e.pgcode, 0) + 1
            if e.pgcode.startswith("XX"):
                found.append("%s as %s with %r: %s %s" % (sig, role or "superuser", shown, e.pgcode,
                                                          (e.pgerror or "").strip()))
        # the server still answers, on this connection
        try:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
        except psycopg2.Error as e:
            found.append("%s as %s with %r: server did not answer after the call: %s"
                         % (sig, role or "superuser", shown, e))
            conn.close()
            return self.reconnect()
        return conn

    def reconnect(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                c = self.connect(autocommit=False)
                return c
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def test_no_internal_error_on_bad_input(self):
        self.assertGreater(len(self.functions), 20, "public functions of axme")
        found = []
        calls = [0]
        codes = {}
        started = time.monotonic()
        conn = self.connect(autocommit=False)
        for role in (None, ADMIN, NOBODY):
            for sig, name, kind, argnames, types in self.functions:
                base = [self.plausible(name, argnames[i] if i < len(argnames) else None, t)
                        for i, t in enumerate(types)]
                conn = self.call(conn, role, sig, name, kind, types, [None] * len(types), found, calls, codes)
                for i, t in enumerate(types):
                    for bad in self.corpus(argnames[i] if i < len(argnames) else None, t):
                        values = list(base)
                        values[i] = bad
                        conn = self.call(conn, role, sig, name, kind, types, values, found, calls, codes)
        elapsed = time.monotonic() - started
        print("\n%d functions, %d calls in %.1f s; outcomes: %s"
              % (len(self.functions), calls[0], elapsed,
                 ", ".join("%s %d" % kv for kv in sorted(codes.items()))))
        print("functions: " + " ".join(f[0] for f in self.functions))
        self.assertEqual(found, [], "\n".join(found))


if __name__ == "__main__":
    unittest.main()
