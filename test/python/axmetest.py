"""Shared helpers of axme's Python tests (run by scripts/test.sh with /usr/bin/python3).

Connection settings come from the PG* environment variables that pg_virtualenv exports. Each
test class gets a database of its own with the extension created, dropped again at the end.
Timing rule of the house: lower bounds strict, upper bounds generous (the machine is shared).
"""
import json
import os
import select
import threading
import time
import unittest

import psycopg2
import psycopg2.errors


def connect(dbname, autocommit=True):
    conn = psycopg2.connect(dbname=dbname, application_name="axme-test")
    conn.autocommit = autocommit
    return conn


def intent(to_agent, n=0, **extra):
    doc = {"intent_type": "intent.test.job.v1", "to_agent": to_agent, "payload": {"n": n}}
    doc.update(extra)
    return json.dumps(doc)


class AxmeTestCase(unittest.TestCase):
    """A test class with its own database (CREATE EXTENSION axme done)."""

    @classmethod
    def setUpClass(cls):
        cls.dbname = "axme_" + cls.__name__.lower()
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s"' % cls.dbname)
            cur.execute('CREATE DATABASE "%s"' % cls.dbname)
        admin.close()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION axme")
            cur.execute("SHOW shared_preload_libraries")
            cls.preloaded = "axme" in cur.fetchone()[0]
        conn.close()

    @classmethod
    def tearDownClass(cls):
        admin = connect("postgres")
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % cls.dbname)
        admin.close()

    def setUp(self):
        self._conns = []
        self.db = self.connect()

    def tearDown(self):
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass

    # -- helpers -------------------------------------------------------------------------------

    def connect(self, autocommit=True):
        c = connect(self.dbname, autocommit)
        self._conns.append(c)
        return c

    def q(self, sql, args=None, conn=None):
        """All rows of a query (on self.db unless conn is given)."""
        with (conn or self.db).cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None

    def q1(self, sql, args=None, conn=None):
        """The first column of the first row."""
        rows = self.q(sql, args, conn)
        return rows[0][0] if rows else None

    def register(self, address, mode="poll", options=None):
        self.q("SELECT axme.register_agent(%s, %s, NULL, %s)",
               (address, mode, json.dumps(options or {})))

    def send(self, to_agent, n=0, conn=None, key=None, **extra):
        return self.q1("SELECT axme.send_intent(%s, %s)", (intent(to_agent, n, **extra), key), conn)

    def poll(self, agent, max_count=10, lease="30 seconds", conn=None):
        """[(intent_id, attempt), ...] in the order poll returned them."""
        return [(r[0], r[1]) for r in self.q(
            "SELECT intent_id, attempt FROM axme.poll(%s, %s, %s::interval)",
            (agent, max_count, lease), conn)]

    def doc(self, intent_id):
        return self.q1("SELECT axme.get_intent(%s)", (intent_id,))

    def status(self, intent_id):
        return self.doc(intent_id)["status"]

    def events(self, intent_id):
        return [r[0] for r in self.q("SELECT event_type FROM axme.intent_events(%s)", (intent_id,))]

    def assertSQLState(self, sqlstate, sql, args=None, conn=None):
        with self.assertRaises(psycopg2.Error) as cm:
            self.q(sql, args, conn)
        self.assertEqual(cm.exception.pgcode, sqlstate, str(cm.exception))
        return cm.exception

    def poll_until(self, agent, timeout=10.0, lease="30 seconds"):
        """Poll until something is handed out (a retry backoff may still be running)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.poll(agent, lease=lease)
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.02)


def drain_notifies(conn, wait):
    """Notifications that arrive on conn within `wait` seconds (returns early on none)."""
    got = []
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if select.select([conn], [], [], remaining) == ([], [], []):
            break
        conn.poll()
        while conn.notifies:
            got.append(conn.notifies.pop(0))
    return got


def collect_notifies(conn, count, timeout=10.0, settle=0.3):
    """Wait up to timeout for `count` notifications, then `settle` more seconds for extras."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += drain_notifies(conn, min(0.5, deadline - time.monotonic()))
    got += drain_notifies(conn, settle)
    return got


class Waiter(threading.Thread):
    """Runs axme.wait_for in its own session and records when it returned."""

    def __init__(self, dbname, intent_id, timeout="30 seconds", setup_sql=None):
        super().__init__(daemon=True)
        self.conn = connect(dbname)
        self.pid = self.conn.get_backend_pid()
        self.intent_id = intent_id
        self.timeout = timeout
        self.setup_sql = setup_sql
        self.result = None
        self.error = None
        self.returned_at = None

    def run(self):
        try:
            with self.conn.cursor() as cur:
                if self.setup_sql:
                    cur.execute(self.setup_sql)
                cur.execute("SELECT axme.wait_for(%s, %s::interval)", (self.intent_id, self.timeout))
                self.result = cur.fetchone()[0]
        except Exception as e:  # reported by the test through .error
            self.error = e
        finally:
            self.returned_at = time.monotonic()
            self.conn.close()

    def wait_until_waiting(self, observer, timeout=10.0):
        """Block until the waiter's backend is inside wait_for (seen in pg_stat_activity)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with observer.cursor() as cur:
                cur.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (self.pid,))
                row = cur.fetchone()
            if row and row[0] == "active" and "wait_for" in row[1]:
                time.sleep(0.05)  # let it reach its sleep
                return True
            time.sleep(0.01)
        return False
