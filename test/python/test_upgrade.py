"""Upgrades: CREATE EXTENSION axme VERSION '0.1.0' with data in place, then ALTER EXTENSION axme
UPDATE through every release keeps every agent, intent, event, idempotency key and attempt, the
updated database keeps working, and its schema equals a fresh install's: the diff of
`pg_dump --schema-only --schema=axme` is empty, and so is the diff of a full description of every
object of the extension taken from the catalogs (pg_dump leaves extension members out).
The worker of a database with an older axme waits for the update (see test_worker_lifecycle)."""
import difflib
import json
import os
import re
import subprocess
import unittest

from axmetest import connect, intent

BINDIR = os.environ.get("PG_BINDIR") or subprocess.run(
    [os.environ.get("PG_CONFIG", "pg_config"), "--bindir"], capture_output=True, text=True,
    check=True).stdout.strip()

POLL = "agent://myorg/prod/up-poll"
STREAM = "agent://myorg/prod/up-stream"
HOOK = "agent://myorg/prod/up-hook"

# Every object of the extension, described from the catalogs, one line each (sorted).
DESCRIBE = r"""
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'axme'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '-')
       || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
FROM pg_proc p WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'aggregate ' || p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'axme'::regnamespace AND p.prokind = 'a'
UNION ALL
SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text || ' options ' || coalesce(c.reloptions::text, '-')
       || ' acl ' || coalesce(c.relacl::text, '-') || ' rls ' || c.relrowsecurity || c.relforcerowsecurity
       || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '-')
FROM pg_class c WHERE c.relnamespace = 'axme'::regnamespace
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' #' || a.attnum || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
       || ' acl ' || coalesce(a.attacl::text, '-')
       || ' comment ' || coalesce(col_description(c.oid, a.attnum), '-')
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
WHERE c.relnamespace = 'axme'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || contypid::regtype || ' ' || conname || ' '
       || pg_get_constraintdef(oid) || ' comment ' || coalesce(obj_description(oid, 'pg_constraint'), '-')
FROM pg_constraint WHERE connamespace = 'axme'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relnamespace = 'axme'::regnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' comment ' || coalesce(obj_description(t.oid, 'pg_trigger'), '-')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'axme'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'policy ' || polrelid::regclass || ' ' || polname || ' ' || polcmd::text || ' ' || polroles::text || ' '
       || coalesce(pg_get_expr(polqual, polrelid), '-') || ' ' || coalesce(pg_get_expr(polwithcheck, polrelid), '-')
       || ' comment ' || coalesce(obj_description(p.oid, 'pg_policy'), '-')
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = 'axme'::regnamespace
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' ' || format_type(t.typbasetype, t.typtypmod)
       || ' comment ' || coalesce(obj_description(t.oid, 'pg_type'), '-')
FROM pg_type t WHERE t.typnamespace = 'axme'::regnamespace AND t.typtype IN ('d', 'e', 'c') AND t.typrelid = 0
UNION ALL
SELECT 'sequence ' || s.seqrelid::regclass || ' ' || s.seqtypid::regtype || ' ' || s.seqstart || ' ' || s.seqincrement
       || ' ' || s.seqmax || ' ' || s.seqmin || ' ' || s.seqcache || ' ' || s.seqcycle
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = 'axme'::regnamespace
UNION ALL
SELECT 'owned_by ' || d.objid::regclass || ' ' || d.refobjid::regclass || '.' || a.attname || ' ' || d.deptype::text
FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'S' AND d.refclassid = 'pg_class'::regclass
UNION ALL
SELECT 'role ' || r.rolname || ' ' || r.rolcanlogin || ' comment ' || coalesce(shobj_description(r.oid, 'pg_authid'), '-')
FROM pg_roles r WHERE r.rolname LIKE 'axme\_%'
UNION ALL
SELECT 'config_dump ' || cfg::regclass || ' ' || coalesce(cond, '-')
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(cfg, cond) WHERE e.extname = 'axme'
UNION ALL
SELECT 'schema acl ' || coalesce(nspacl::text, '-') || ' comment ' || coalesce(obj_description(oid, 'pg_namespace'), '-')
FROM pg_namespace WHERE nspname = 'axme'
ORDER BY 1
"""


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    rows = q(conn, sql, args)
    return rows[0][0] if rows else None


def table_rows(conn, table, columns):
    """The rows of an axme table as text tuples, only the given columns (those of before)."""
    cols = ", ".join('"%s"' % c for c in columns)
    return [tuple(str(v) for v in r) for r in q(conn, "SELECT %s FROM axme.%s ORDER BY %s" % (cols, table, cols))]


def columns_of(conn, table):
    return [r[0] for r in q(conn, """SELECT attname FROM pg_attribute WHERE attrelid = ('axme.' || %s)::regclass
                                     AND attnum > 0 AND NOT attisdropped ORDER BY attnum""", (table,))]


def snapshot(conn, before=None):
    """{table: rows} of every table in schema axme; with before, only its tables and columns."""
    out = {}
    tables = [r[0] for r in q(conn, """SELECT relname FROM pg_class WHERE relnamespace = 'axme'::regnamespace
                                       AND relkind = 'r' ORDER BY 1""")]
    for t in (before.keys() if before else tables):
        cols = before[t][0] if before else columns_of(conn, t)
        out[t] = (cols, table_rows(conn, t, cols))
    return out


def pg_dump_schema(dbname):
    env = dict(os.environ)
    out = subprocess.run([os.path.join(BINDIR, "pg_dump"), "--schema-only", "--schema=axme", dbname],
                         capture_output=True, text=True, check=True, env=env).stdout
    # only what differs between any two runs of pg_dump: the random key of \restrict/\unrestrict
    return re.sub(r"^\\(un)?restrict \S+$", r"\\\1restrict KEY", out, flags=re.M).splitlines()


class UpgradeTest(unittest.TestCase):
    UP = "axme_upgrade_path"
    FRESH = "axme_upgrade_fresh"

    def setUp(self):
        self.admin = connect("postgres")
        for d in (self.UP, self.FRESH):
            q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % d)
            q(self.admin, 'CREATE DATABASE "%s"' % d)

    def tearDown(self):
        for c in getattr(self, "conns", []):
            c.close()
        for d in (self.UP, self.FRESH):
            q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % d)
        self.admin.close()

    def versions(self, conn):
        """The release path from 0.1.0 to the default version, as pg_extension_update_paths sees it."""
        default = q1(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'axme'")
        path = q1(conn, """SELECT path FROM pg_extension_update_paths('axme')
                           WHERE source = '0.1.0' AND target = %s""", (default,))
        self.assertIsNotNone(path, "no update path from 0.1.0 to %s" % default)
        return path.split("--")[1:], default

    def add_data(self, conn, version, n):
        """Intents in every kind of state, with what the installed version offers."""
        q(conn, "SELECT axme.send_intent(%s, %s)", (intent(POLL, n), "upgrade-key-%04d" % n))
        # a key scoped by a from_agent label (0.3.0 scopes keys by the sending role as well)
        q(conn, "SELECT axme.send_intent(%s, %s)",
          (intent(POLL, n, from_agent="agent://myorg/prod/upgrade-label"), "upgrade-from-%04d" % n))
        ids = [q1(conn, "SELECT axme.send_intent(%s)", (intent(POLL, n + k),)) for k in range(1, 6)]
        q1(conn, "SELECT axme.send_intent(%s)", (intent(POLL, n + 9, max_delivery_attempts=1),))
        got = q(conn, "SELECT intent_id, attempt FROM axme.poll(%s, 4, '1 hour')", (POLL,))
        q(conn, "SELECT axme.ack(%s, %s)", got[0])
        q(conn, "SELECT axme.complete(%s, '{\"ok\": true}', %s)", got[1])
        q(conn, "SELECT axme.fail(%s, '{\"why\": \"no\"}', false, %s)", got[2])
        q(conn, "SELECT axme.progress(%s, '{\"pct\": 50}', %s)", got[3])
        q(conn, "SELECT axme.resolve(%s, 'CANCELED')", (ids[4],))
        q1(conn, "SELECT axme.send_intent(%s)", (intent(STREAM, n),))
        if version != "0.1.0":
            iid = q1(conn, "SELECT axme.send_intent(%s)", (intent(HOOK, n, not_before="2999-01-01T00:00:00Z"),))
            q(conn, """INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms,
                                                           http_status, error_class, error)
                       SELECT %s, 1, agent_id, now(), 12.5, 503, 'http', 'Service Unavailable'
                       FROM axme.agents WHERE address = %s""", (iid, HOOK))

    def test_update_through_every_release_keeps_data_and_equals_fresh_install(self):
        up = connect(self.UP)
        fresh = connect(self.FRESH)
        self.conns = [up, fresh]
        path, default = self.versions(up)
        q(up, "CREATE EXTENSION axme VERSION '0.1.0'")
        q(up, "SELECT axme.register_agent(%s, 'poll', NULL, '{\"retry\": {\"max_attempts\": 3}}')", (POLL,))
        q(up, "SELECT axme.register_agent(%s, 'stream')", (STREAM,))
        q(up, "SELECT axme.register_agent(%s, 'http', 'https://example.com/up-hook')", (HOOK,))
        self.add_data(up, "0.1.0", 100)
        version = "0.1.0"
        for n, target in enumerate(path):
            before = snapshot(up)
            q(up, "ALTER EXTENSION axme UPDATE TO %s", (target,))
            version = q1(up, "SELECT extversion FROM pg_extension WHERE extname = 'axme'")
            self.assertEqual(version, target)
            after = snapshot(up, before)
            for table in before:
                self.assertEqual(before[table], after[table],
                                 "%s changed in the update to %s" % (table, target))
            counts = {t: len(r[1]) for t, r in before.items()}
            self.assertGreater(counts["intents"], 0)
            self.assertGreater(counts["events"], 0)
            self.add_data(up, version, 200 + 100 * n)
        self.assertEqual(version, default)
        self.assertGreater(len(snapshot(up)["delivery_attempts"][1]), 0)

        # the updated database works: the old keys still answer, new intents flow
        again = q1(up, "SELECT axme.send_intent(%s, 'upgrade-key-0100')", (intent(POLL, 100),))
        self.assertEqual(again, q1(up, "SELECT intent_id FROM axme.idempotency_keys WHERE key = 'upgrade-key-0100'"))
        again = q1(up, "SELECT axme.send_intent(%s, 'upgrade-from-0100')",
                   (intent(POLL, 100, from_agent="agent://myorg/prod/upgrade-label"),))
        self.assertEqual(again, q1(up, "SELECT intent_id FROM axme.idempotency_keys WHERE key = 'upgrade-from-0100'"))
        self.assertEqual(q1(up, "SELECT count(*) FROM axme.idempotency_keys WHERE key = 'upgrade-from-0100'"), 1)
        self.assertEqual(q1(up, "SELECT sender_role FROM axme.idempotency_keys WHERE key = 'upgrade-from-0100'"),
                         q1(up, "SELECT current_user"))
        iid = q1(up, "SELECT axme.send_intent(%s)", (intent(POLL, 999),))
        self.assertTrue(q(up, "SELECT 1 FROM axme.intents WHERE intent_id = %s", (iid,)))
        self.assertIsInstance(q1(up, "SELECT axme.metrics()"), str)

        # the schema equals a fresh install's
        q(fresh, "CREATE EXTENSION axme")
        a, b = pg_dump_schema(self.UP), pg_dump_schema(self.FRESH)
        self.assertTrue(any("CREATE SCHEMA axme" in l for l in a), "pg_dump printed no schema")
        diff = list(difflib.unified_diff(b, a, "fresh", "updated", lineterm=""))
        self.assertEqual(diff, [], "pg_dump --schema-only --schema=axme differs:\n" + "\n".join(diff))
        a = [r[0] for r in q(up, DESCRIBE)]
        b = [r[0] for r in q(fresh, DESCRIBE)]
        self.assertGreater(len(a), 100)
        diff = list(difflib.unified_diff(b, a, "fresh", "updated", lineterm=""))
        self.assertEqual(diff, [], "the extension's objects differ:\n" + "\n".join(diff))

    def test_update_from_each_release_in_one_step(self):
        """CREATE EXTENSION at each earlier release, data in place, then ALTER EXTENSION axme UPDATE
        (no TO: to the default version) keeps the rows and equals a fresh install."""
        fresh = connect(self.FRESH)
        self.conns = [fresh]
        q(fresh, "CREATE EXTENSION axme")
        want = [r[0] for r in q(fresh, DESCRIBE)]
        path, default = self.versions(fresh)
        for start in ["0.1.0"] + path[:-1]:
            q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.UP)
            q(self.admin, 'CREATE DATABASE "%s"' % self.UP)
            up = connect(self.UP)
            self.conns.append(up)
            q(up, "CREATE EXTENSION axme VERSION %s", (start,))
            q(up, "SELECT axme.register_agent(%s, 'poll')", (POLL,))
            q(up, "SELECT axme.register_agent(%s, 'stream')", (STREAM,))
            q(up, "SELECT axme.register_agent(%s, 'http', 'https://example.com/up-hook')", (HOOK,))
            self.add_data(up, start, 100)
            before = snapshot(up)
            q(up, "ALTER EXTENSION axme UPDATE")
            self.assertEqual(q1(up, "SELECT extversion FROM pg_extension WHERE extname = 'axme'"), default)
            after = snapshot(up, before)
            for table in before:
                self.assertEqual(before[table], after[table], "%s changed in the update from %s" % (table, start))
            got = [r[0] for r in q(up, DESCRIBE)]
            diff = list(difflib.unified_diff(want, got, "fresh", "updated from " + start, lineterm=""))
            self.assertEqual(diff, [], "the extension's objects differ:\n" + "\n".join(diff))
            up.close()

    def test_update_to_0_4_0_binds_roles_by_oid(self):
        """0.4.0 stores roles by OID: the update resolves the stored names once. An agent whose
        role no longer exists is disabled with an alert role_missing, intents of a dropped sender
        keep OID 0 (readable by their receiver and admins only), its keys go."""
        up = connect(self.UP)
        self.conns = [up]
        roles = ["up_gone", "up_kept", "up_runner", "up_sender"]
        for r in roles:
            q(self.admin, "DROP ROLE IF EXISTS %s" % r)
            q(self.admin, "CREATE ROLE %s" % r)
        try:
            q(up, "CREATE EXTENSION axme VERSION '0.3.0'")
            q(up, "GRANT axme_admin TO up_runner")
            q(up, "GRANT axme_sender TO up_sender")
            q(up, "CREATE FUNCTION public.up_handler(intent jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$")
            q(up, "GRANT EXECUTE ON FUNCTION public.up_handler(jsonb) TO up_runner")
            q(up, "SELECT axme.register_agent('agent://myorg/prod/up-gone', 'poll', NULL, '{\"db_role\": \"up_gone\"}')")
            q(up, "SELECT axme.register_agent('agent://myorg/prod/up-kept', 'poll', NULL, '{\"db_role\": \"up_kept\"}')")
            q(up, "SET ROLE up_runner")
            q(up, "SELECT axme.register_agent('agent://myorg/prod/up-run', 'internal', NULL, '{\"handler\": \"public.up_handler\"}')")
            q(up, "SELECT axme.pause_agent('agent://myorg/prod/up-run')")
            q(up, "SET ROLE up_sender")
            sent = q1(up, "SELECT axme.send_intent(%s, 'up-sender-key-1')", (intent("agent://myorg/prod/up-kept", 1),))
            q(up, "RESET ROLE")
            q(up, "REVOKE EXECUTE ON FUNCTION public.up_handler(jsonb) FROM up_runner")
            for r in ("up_gone", "up_runner", "up_sender"):
                q(up, "REVOKE ALL ON SCHEMA axme FROM %s" % r)
                q(self.admin, "DROP ROLE %s" % r)
            q(up, "ALTER EXTENSION axme UPDATE")
            rows = q(up, """SELECT address, disabled_at IS NOT NULL, db_role IS NOT NULL AND db_role::oid = 0,
                                   pg_typeof(db_role)::text
                            FROM axme.agents ORDER BY address""")
            self.assertEqual(rows, [("agent://myorg/prod/up-gone", True, True, "regrole"),
                                    ("agent://myorg/prod/up-kept", False, False, "regrole"),
                                    ("agent://myorg/prod/up-run", True, False, "regrole")])
            self.assertTrue(q1(up, "SELECT db_role = 'up_kept'::regrole FROM axme.agents WHERE address = 'agent://myorg/prod/up-kept'"))
            self.assertEqual(q(up, "SELECT agent, kind FROM axme.alerts ORDER BY agent"),
                             [("agent://myorg/prod/up-gone", "role_missing"), ("agent://myorg/prod/up-run", "role_missing")])
            self.assertEqual(q1(up, "SELECT sender_role::oid FROM axme.intents WHERE intent_id = %s", (sent,)), 0)
            self.assertEqual(q1(up, "SELECT count(*) FROM axme.idempotency_keys"), 0)
            # a role created again under the dropped name is another role
            q(self.admin, "CREATE ROLE up_gone")
            q(up, "GRANT axme_agent TO up_gone")
            q(up, "SET ROLE up_gone")
            with self.assertRaises(Exception) as cm:
                q(up, "SELECT * FROM axme.poll('agent://myorg/prod/up-gone')")
            self.assertEqual(cm.exception.pgcode, "42501")
            q(up, "RESET ROLE")
            q(up, "REVOKE ALL ON SCHEMA axme FROM up_gone")
            q(up, "REVOKE axme_agent FROM up_gone")
        finally:
            up.close()
            q(self.admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.UP)
            for r in roles:
                q(self.admin, "DROP ROLE IF EXISTS %s" % r)


if __name__ == "__main__":
    unittest.main()
