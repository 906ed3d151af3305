"""The timer queue (deadlines on every mode), not_before on every mode, stream wake-ups for what
becomes due by itself, and a worker crash with timers due.  Needs shared_preload_libraries=axme
(the worker fires timers); skipped without it.
Timing rule of the house: lower bounds strict, upper bounds generous."""
import contextlib
import json
import os
import signal
import socket
import threading
import time
import unittest

import psycopg2

from axmetest import AxmeTestCase, collect_notifies, connect, drain_notifies

POLL = "agent://myorg/prod/tm-poll"
STREAM = "agent://myorg/prod/tm-stream"
INBOX = "agent://myorg/prod/tm-inbox"
HTTP = "agent://myorg/prod/tm-http"
INTERNAL = "agent://myorg/prod/tm-internal"
TASK = {"task_type": "approval", "title": "Approve", "allowed_outcomes": ["approved", "rejected"]}


class Receiver(threading.Thread):
    """A loopback http server that accepts requests, records when they came, and never answers
    (hang=True) or answers 200 at once."""

    def __init__(self, hang):
        super().__init__(daemon=True)
        self.hang = hang
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.arrivals = []      # (time.time(), body)
        self.conns = []
        self.stop = False

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        data = b""
        c.settimeout(30)
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                body += c.recv(65536)
            self.arrivals.append((time.time(), json.loads(body)))
            if not self.hang:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass

    def close(self):
        self.stop = True
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


def in_secs(s):
    return "now() + interval '%f seconds'" % s


class TimersTest(AxmeTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not cls.preloaded:
            return
        cls.hanging = Receiver(hang=True)
        cls.hanging.start()
        cls.answering = Receiver(hang=False)
        cls.answering.start()
        conn = connect(cls.dbname)
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET axme.http_allowed_networks = '127.0.0.0/8'")
            cur.execute("SELECT pg_reload_conf()")
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
            cur.execute("SELECT axme.register_agent(%s, 'stream', NULL, %s)",
                        (STREAM, json.dumps({"retry": {"base_delay_ms": 1000}})))
            cur.execute("SELECT axme.register_agent(%s, 'inbox')", (INBOX,))
            cur.execute("SELECT axme.register_agent(%s, 'http', %s, %s)",
                        (HTTP, "http://127.0.0.1:%d/hook" % cls.hanging.port,
                         json.dumps({"timeout_ms": 60000})))
            cur.execute("CREATE TABLE public.tm_runs (intent_id uuid, at timestamptz DEFAULT clock_timestamp())")
            cur.execute("""CREATE FUNCTION public.tm_handler(intent jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO public.tm_runs (intent_id) VALUES ((intent->>'intent_id')::uuid);
                    PERFORM pg_sleep(coalesce((intent->'payload'->>'sleep')::float8, 0));
                    RETURN jsonb_build_object('at', clock_timestamp());
                END $$""")
            cur.execute("SELECT axme.register_agent(%s, 'internal', NULL, %s)",
                        (INTERNAL, json.dumps({"handler": "public.tm_handler", "timeout_ms": 60000})))
        conn.close()
        time.sleep(0.3)  # the reload reaches the worker

    @classmethod
    def tearDownClass(cls):
        if cls.preloaded:
            cls.hanging.close()
            cls.answering.close()
            conn = connect(cls.dbname)
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM RESET axme.http_allowed_networks")
                cur.execute("SELECT pg_reload_conf()")
            conn.close()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        if not self.preloaded:
            self.skipTest("the timer loop runs in the worker: needs shared_preload_libraries=axme")

    def send_at(self, to_agent, deadline=None, not_before=None, **extra):
        """Send with deadline_at / not_before given in seconds from now (server clock)."""
        doc = {"intent_type": "intent.test.job.v1", "to_agent": to_agent, "payload": extra.pop("payload", {})}
        doc.update(extra)
        sql = "SELECT axme.send_intent(%s::jsonb"
        if deadline is not None:
            sql += " || jsonb_build_object('deadline_at', clock_timestamp() + %s * interval '1 second')"
        if not_before is not None:
            sql += " || jsonb_build_object('not_before', clock_timestamp() + %s * interval '1 second')"
        sql += ")"
        args = [json.dumps(doc)] + [x for x in (deadline, not_before) if x is not None]
        return self.q1(sql, args)

    def wait_status(self, intent_id, status, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status(intent_id) == status:
                return True
            time.sleep(0.05)
        return False

    def timed_out_late(self, intent_id):
        """Seconds between deadline_at and the intent.timed_out event (negative = early)."""
        return self.q1("""SELECT extract(epoch FROM e.at - i.deadline_at)::float8
                          FROM axme.intents i JOIN axme.events e USING (intent_id)
                          WHERE i.intent_id = %s AND e.event_type = 'intent.timed_out'""", (intent_id,))

    # -- deadlines ----------------------------------------------------------------------------

    def test_deadline_poll_never_claimed(self):
        iid = self.send_at(POLL, deadline=1.0)
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s AND kind = 'deadline'", (iid,)), 1)
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        late = self.timed_out_late(iid)
        self.assertGreaterEqual(late, 0.0)
        self.assertLess(late, 5.0)
        self.assertEqual(self.events(iid), ["intent.created", "intent.submitted", "intent.timed_out"])
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s", (iid,)), 0)

    def test_deadline_poll_leased(self):
        iid = self.send_at(POLL, deadline=1.0)
        got = self.poll(POLL, lease="60 seconds")
        self.assertEqual(got, [(iid, 1)])
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        self.assertGreaterEqual(self.timed_out_late(iid), 0.0)
        self.assertSQLState("55000", "SELECT axme.complete(%s, '{}', 1)", (iid,))

    def test_deadline_stream_acknowledged(self):
        iid = self.send_at(STREAM, deadline=1.0)
        self.assertEqual(self.poll(STREAM, lease="60 seconds"), [(iid, 1)])
        self.q("SELECT axme.ack(%s, 1)", (iid,))
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        self.assertEqual(self.events(iid)[-2:], ["intent.acknowledged", "intent.timed_out"])

    def test_deadline_inbox(self):
        iid = self.send_at(INBOX, deadline=1.0, human_task=TASK)
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        self.assertGreaterEqual(self.timed_out_late(iid), 0.0)
        self.assertEqual(self.events(iid)[-1], "intent.timed_out")

    def test_deadline_http_in_flight(self):
        n = len(self.hanging.arrivals)
        iid = self.send_at(HTTP, deadline=2.0)
        t0 = time.monotonic()
        while len(self.hanging.arrivals) == n and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        self.assertEqual(self.hanging.arrivals[-1][1]["intent_id"], iid, "the request never arrived")
        self.assertEqual(self.status(iid), "DELIVERED")
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        self.assertGreaterEqual(self.timed_out_late(iid), 0.0)
        self.assertEqual(self.events(iid)[-2:], ["intent.delivered", "intent.timed_out"])

    def test_deadline_internal_running_handler_rolls_back(self):
        iid = self.send_at(INTERNAL, deadline=1.0, payload={"sleep": 3})
        self.assertTrue(self.wait_status(iid, "DELIVERED", 10), self.doc(iid))
        self.assertTrue(self.wait_status(iid, "TIMED_OUT"), self.doc(iid))
        self.assertGreaterEqual(self.timed_out_late(iid), 0.0)
        time.sleep(3.5)  # the handler returns; its result must not apply
        self.assertEqual(self.status(iid), "TIMED_OUT")
        self.assertEqual(self.q1("SELECT count(*) FROM public.tm_runs WHERE intent_id = %s", (iid,)), 0,
                         "the handler's work was not rolled back")
        self.assertNotIn("intent.completed", self.events(iid))

    def test_terminal_intent_timer_is_dropped(self):
        iid = self.send_at(POLL, deadline=1.0)
        self.assertEqual(self.poll(POLL), [(iid, 1)])
        self.q("SELECT axme.complete(%s, '{\"ok\": 1}', 1)", (iid,))
        time.sleep(2.0)
        self.assertEqual(self.status(iid), "COMPLETED")
        self.assertEqual(self.q1("SELECT count(*) FROM axme.timers WHERE intent_id = %s", (iid,)), 0)

    def test_ten_thousand_timers_fire_in_order(self):
        self.q("""SELECT axme.send_intent(jsonb_build_object(
                      'intent_type', 'intent.test.many.v1', 'to_agent', %s, 'payload', jsonb_build_object('n', g),
                      'deadline_at', clock_timestamp() + interval '3 seconds' + g * interval '100 microseconds',
                      'human_task', %s::jsonb))
                  FROM generate_series(1, 10000) g""", (INBOX, json.dumps(TASK)))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            left = self.q1("SELECT count(*) FROM axme.intents WHERE intent_type = 'intent.test.many.v1' AND status <> 'TIMED_OUT'")
            if left == 0:
                break
            time.sleep(0.2)
        self.assertEqual(left, 0)
        # fired in deadline order: the event times, taken in the order of the deadlines, never go
        # back (equal clock readings are possible within a batch)
        rows = self.q("""SELECT (i.payload->>'n')::int, extract(epoch FROM e.at - i.deadline_at)::float8,
                                e.at < lag(e.at) OVER (ORDER BY i.deadline_at) AS went_back
                         FROM axme.intents i JOIN axme.events e USING (intent_id)
                         WHERE i.intent_type = 'intent.test.many.v1' AND e.event_type = 'intent.timed_out'
                         ORDER BY i.deadline_at""")
        self.assertEqual(len(rows), 10000)
        self.assertEqual([r[0] for r in rows], list(range(1, 10001)))
        self.assertEqual([r[0] for r in rows if r[2]], [], "not fired in deadline order")
        self.assertGreaterEqual(min(r[1] for r in rows), 0.0, "a timer fired early")

    # -- not_before ---------------------------------------------------------------------------

    def test_not_before_poll(self):
        iid = self.send_at(POLL, not_before=2.0)
        t0 = time.monotonic()
        self.assertEqual(self.poll(POLL), [])
        got = self.poll_until(POLL, timeout=15)
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        self.assertEqual(got, [(iid, 1)])
        self.assertGreaterEqual(self.q1("""SELECT extract(epoch FROM e.at - i.not_before)::float8 FROM axme.intents i
                                           JOIN axme.events e USING (intent_id)
                                           WHERE intent_id = %s AND e.event_type = 'intent.delivered'""", (iid,)), 0.0)
        self.q("SELECT axme.complete(%s, '{}', 1)", (iid,))

    def test_not_before_stream_gets_a_wakeup_when_due(self):
        listener = self.connect()
        ch = self.q1("SELECT axme.channel(%s)", (STREAM,))
        self.q("LISTEN %s" % ch, conn=listener)
        iid = self.send_at(STREAM, not_before=2.0)
        t0 = time.time()
        first = drain_notifies(listener, 1.0)
        self.assertEqual(first, [], "a delayed intent's send notified")
        self.assertEqual(self.poll(STREAM), [])
        notes = collect_notifies(listener, 1, timeout=15)
        self.assertEqual(len(notes), 1, notes)
        self.assertGreaterEqual(time.time() - t0, 1.9)
        self.assertEqual(json.loads(notes[0].payload), {"intent_id": iid, "count": 1})
        self.assertEqual(self.poll(STREAM), [(iid, 1)])
        self.q("SELECT axme.complete(%s, '{}', 1)", (iid,))

    def test_not_before_http(self):
        self.q("SELECT axme.register_agent(%s, 'http', %s, '{}')",
               ("agent://myorg/prod/tm-http2", "http://127.0.0.1:%d/hook" % self.answering.port))
        iid = self.send_at("agent://myorg/prod/tm-http2", not_before=2.0)
        nb = self.q1("SELECT extract(epoch FROM not_before)::float8 FROM axme.intents WHERE intent_id = %s", (iid,))
        self.assertTrue(self.wait_status(iid, "COMPLETED"), self.doc(iid))
        arrived = [t for t, body in self.answering.arrivals if body["intent_id"] == iid]
        self.assertEqual(len(arrived), 1)
        self.assertGreaterEqual(arrived[0], nb - 0.05)  # same machine, two clocks read

    def test_not_before_internal(self):
        iid = self.send_at(INTERNAL, not_before=2.0)
        time.sleep(1.0)
        self.assertEqual(self.status(iid), "SUBMITTED")
        self.assertTrue(self.wait_status(iid, "COMPLETED"), self.doc(iid))
        self.assertGreaterEqual(self.q1("""SELECT extract(epoch FROM (result->>'at')::timestamptz - not_before)::float8
                                           FROM axme.intents WHERE intent_id = %s""", (iid,)), 0.0)

    def test_not_before_inbox(self):
        if not self.q1("SELECT to_regprocedure('axme._inbox_assign_due(integer)') IS NOT NULL"):
            self.skipTest("the inbox feature (axme._inbox_assign_due) is not installed")
        iid = self.send_at(INBOX, not_before=2.0, human_task=TASK)
        time.sleep(1.0)
        self.assertEqual(self.status(iid), "SUBMITTED")
        self.assertTrue(self.wait_status(iid, "WAITING"), self.doc(iid))
        self.assertGreaterEqual(self.q1("""SELECT extract(epoch FROM e.at - i.not_before)::float8 FROM axme.intents i
                                           JOIN axme.events e USING (intent_id)
                                           WHERE intent_id = %s AND e.status = 'WAITING'
                                           ORDER BY e.seq LIMIT 1""", (iid,)), 0.0)

    # -- stream wake-ups ------------------------------------------------------------------------

    def test_stream_wakeup_after_lost_lease(self):
        listener = self.connect()
        ch = self.q1("SELECT axme.channel(%s)", (STREAM,))
        self.q("LISTEN %s" % ch, conn=listener)
        iid = self.send(STREAM)
        collect_notifies(listener, 1, timeout=5, settle=0.1)  # the send's own wake-up
        self.assertEqual(self.poll(STREAM, lease="1 second"), [(iid, 1)])
        t0 = time.time()
        notes = collect_notifies(listener, 1, timeout=15)
        self.assertEqual(len(notes), 1, notes)
        self.assertGreaterEqual(time.time() - t0, 0.9)
        self.assertEqual(json.loads(notes[0].payload), {"intent_id": iid, "count": 1})
        self.assertEqual(self.poll(STREAM), [(iid, 2)])
        self.q("SELECT axme.complete(%s, '{}', 2)", (iid,))

    def test_stream_wakeup_after_retry_backoff(self):
        listener = self.connect()
        ch = self.q1("SELECT axme.channel(%s)", (STREAM,))
        self.q("LISTEN %s" % ch, conn=listener)
        iid = self.send(STREAM)
        collect_notifies(listener, 1, timeout=5, settle=0.1)
        self.assertEqual(self.poll(STREAM), [(iid, 1)])
        self.q("SELECT axme.fail(%s, '{\"e\": 1}', true, 1)", (iid,))
        t0 = time.time()
        notes = collect_notifies(listener, 1, timeout=15)
        self.assertEqual(len(notes), 1, notes)
        self.assertGreaterEqual(time.time() - t0, 0.5)  # backoff of 1 s with jitter
        self.assertEqual(json.loads(notes[0].payload)["intent_id"], iid)
        self.assertEqual(self.poll_until(STREAM), [(iid, 2)])
        self.q("SELECT axme.complete(%s, '{}', 2)", (iid,))

    # -- upgrade --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def database_at_0_2_0(self, suffix):
        """A database of its own with axme created at version 0.2.0 (the library is newer);
        yields an autocommit cursor and drops the database afterwards."""
        admin = connect("postgres")
        db = self.dbname + suffix
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "%s"' % db)
            cur.execute('CREATE DATABASE "%s"' % db)
        try:
            c = connect(db)
            with c.cursor() as cur:
                cur.execute("CREATE EXTENSION axme VERSION '0.2.0'")
                yield cur
            c.close()
        finally:
            with admin.cursor() as cur:
                cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
            admin.close()

    def test_upgrade_from_0_2_0_gives_pending_deadlines_a_timer(self):
        with self.database_at_0_2_0("_up") as cur:
            cur.execute("SELECT axme.register_agent(%s, 'poll')", (POLL,))
            cur.execute("""SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.job.v1',
                               'to_agent', %s, 'payload', '{}'::jsonb,
                               'deadline_at', clock_timestamp() + interval '3 seconds'))""", (POLL,))
            iid = cur.fetchone()[0]
            # to the library's version: the worker serves only a database that is up to date
            cur.execute("ALTER EXTENSION axme UPDATE")
            cur.execute("SELECT kind FROM axme.timers WHERE intent_id = %s", (iid,))
            self.assertEqual(cur.fetchall(), [("deadline",)])
            cur.execute("SELECT axme.wait_for(%s, '20 seconds')->>'status'", (iid,))
            self.assertEqual(cur.fetchone()[0], "TIMED_OUT")

    def test_0_3_0_library_on_0_2_0_sql_sends_to_an_inbox(self):
        """With the 0.3.0 library installed, a database still at 0.2.0 keeps accepting intents
        for an inbox agent (with a human_task and a reply_to): the inbox checks come with the
        0.3.0 SQL, and send_intent must not call functions that are not there yet."""
        with self.database_at_0_2_0("_old") as cur:
            cur.execute("SELECT axme.register_agent('agent://myorg/prod/old-inbox', 'inbox')")
            cur.execute("""SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.test.job.v1',
                               'to_agent', 'agent://myorg/prod/old-inbox', 'payload', '{}'::jsonb,
                               'reply_to', 'agent://myorg/prod/old-inbox',
                               'human_task', jsonb_build_object('task_type', 'approval', 'title', 't')))""")
            iid = cur.fetchone()[0]
            cur.execute("SELECT status FROM axme.intents WHERE intent_id = %s", (iid,))
            self.assertEqual(cur.fetchone()[0], "SUBMITTED")

    # -- crash ----------------------------------------------------------------------------------

    def test_worker_crash_with_timers_due_fires_each_once(self):
        """kill -9 of the worker makes the postmaster restart every process; timers committed
        before are fired after the restart, each exactly once (the DELETE of the timer row and
        the transition commit together)."""
        self.q("""SELECT axme.send_intent(jsonb_build_object(
                      'intent_type', 'intent.test.crash.v1', 'to_agent', %s, 'payload', '{}'::jsonb,
                      'deadline_at', clock_timestamp() + interval '1 second' + g * interval '200 microseconds'))
                  FROM generate_series(1, 3000) g""", (POLL,))
        pid = self.q1("SELECT pid FROM pg_stat_activity WHERE backend_type = 'axme delivery worker' AND datname = current_database()")
        self.assertIsNotNone(pid)
        time.sleep(1.1)  # due now, being fired
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            self.skipTest("cannot signal the server's processes as this user")
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass
        self._conns = []
        # Back only when the postmaster has restarted everything: a connection made right after the
        # kill can still be cut by the restart, so wait for a new worker (another pid).
        t0 = time.monotonic()
        while True:
            try:
                self.db = self.connect()
                new_pid = self.q1("SELECT pid FROM pg_stat_activity WHERE backend_type = 'axme delivery worker' "
                                  "AND datname = current_database()")
                if new_pid is not None and new_pid != pid:
                    break
                self.db.close()
            except psycopg2.Error:
                pass
            if time.monotonic() - t0 > 60:
                self.fail("no new axme delivery worker within 60 s of the kill")
            time.sleep(0.2)
        while time.monotonic() - t0 < 120:
            left = self.q1("SELECT count(*) FROM axme.intents WHERE intent_type = 'intent.test.crash.v1' AND status <> 'TIMED_OUT'")
            if left == 0:
                break
            time.sleep(0.2)
        self.assertEqual(left, 0)
        self.assertEqual(self.q("""SELECT count(*), count(DISTINCT intent_id) FROM axme.events e
                                   JOIN axme.intents i USING (intent_id)
                                   WHERE i.intent_type = 'intent.test.crash.v1' AND e.event_type = 'intent.timed_out'"""),
                         [(3000, 3000)])
        self.assertEqual(self.q1("""SELECT count(*) FROM axme.timers t JOIN axme.intents i USING (intent_id)
                                    WHERE i.intent_type = 'intent.test.crash.v1'"""), 0)


if __name__ == "__main__":
    unittest.main()
