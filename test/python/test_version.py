"""One version: axme.control's default_version is the only place it is written by hand.  META.json
(made by make from META.json.in) and the loaded library (AXME_VERSION, passed by the Makefile)
must say the same.  The library's version is read where it shows in SQL: a worker that finds an
older axme installed waits and says "installed X, library Y" in axme.worker_status."""
import json
import os
import re
import time
import unittest

from axmetest import connect

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def control_version():
    with open(os.path.join(ROOT, "axme.control")) as f:
        m = re.search(r"^default_version\s*=\s*'([^']+)'", f.read(), re.M)
    assert m, "no default_version in axme.control"
    return m.group(1)


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


class VersionTest(unittest.TestCase):
    OLD_DB = "axme_version_old"
    OBSERVER_DB = "axme_version_observer"

    def test_meta_json_matches_control(self):
        path = os.path.join(ROOT, "META.json")
        self.assertTrue(os.path.exists(path), "no META.json: run make (it is made from META.json.in)")
        with open(path) as f:
            meta = json.load(f)
        v = control_version()
        self.assertEqual(meta["version"], v, "META.json version")
        self.assertEqual(meta["provides"]["axme"]["version"], v, "META.json provides.axme.version")

    def test_loaded_library_matches_control(self):
        admin = connect("postgres")
        try:
            if "axme" not in q(admin, "SHOW shared_preload_libraries")[0][0]:
                self.skipTest("needs shared_preload_libraries = axme (the worker)")
            for db in (self.OLD_DB, self.OBSERVER_DB):
                q(admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
                q(admin, 'CREATE DATABASE "%s"' % db)
            obs = connect(self.OBSERVER_DB)
            old = connect(self.OLD_DB)
            try:
                q(obs, "CREATE EXTENSION axme")
                # older than the library (0.2.0 is the first whose commit starts a worker): the
                # worker waits for an update and says so
                q(old, "CREATE EXTENSION axme VERSION '0.2.0'")
                state = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    rows = q(obs, "SELECT state FROM axme.worker_status WHERE database = %s"
                                  " AND state LIKE 'waiting for ALTER EXTENSION%%'", (self.OLD_DB,))
                    if rows:
                        state = rows[0][0]
                        break
                    time.sleep(0.2)
                self.assertIsNotNone(state, q(obs, "SELECT * FROM axme.worker_status"))
                m = re.search(r"library ([^)\s]+)\)", state)
                self.assertTrue(m, state)
                self.assertEqual(m.group(1), control_version(), "the loaded library's version: " + state)
            finally:
                old.close()
                obs.close()
        finally:
            for db in (self.OLD_DB, self.OBSERVER_DB):
                q(admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
            admin.close()


if __name__ == "__main__":
    unittest.main()
