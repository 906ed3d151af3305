"""A throwaway PostgreSQL cluster with axme preloaded, run as the postgres user when we are root."""
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import psycopg2


def _server_env():
    """NAME=value words for the server's environment, from the file named by $AXME_TEST_SERVER_ENV
    (pg_createcluster's environment-file format, one NAME = 'value' a line).  scripts/sanitize.sh
    writes one to preload the sanitizer runtimes into the server only, not into these tests."""
    path = os.environ.get("AXME_TEST_SERVER_ENV")
    words = []
    if path:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, value = line.partition("=")
                    words.append("%s=%s" % (name.strip(), value.strip().strip("'")))
    return words


def _as_postgres(cmd):
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join("'%s'" % c for c in cmd)]
    return cmd


class Cluster:
    def __init__(self, bindir, port, extra_conf=""):
        self.bindir = bindir
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="axme_http_")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "log")
        subprocess.run(_as_postgres([os.path.join(bindir, "initdb"), "-D", self.data, "-A", "trust",
                                     "-U", "postgres", "-E", "UTF8", "--locale=C"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("""
shared_preload_libraries = 'axme'
port = %d
unix_socket_directories = '/tmp'
listen_addresses = ''
fsync = off
max_worker_processes = 16
restart_after_crash = on
axme.http_allowed_networks = '127.0.0.0/8'
axme.tls_files_directory = '%s'
%s
""" % (port, self.dir, extra_conf))

    def ctl(self, *args, check=True):
        pg_ctl = [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.logfile, "-w", "-t", "60"]
        return subprocess.run(_as_postgres(["env"] + _server_env() + pg_ctl + list(args)),
                              check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        self.ctl("start")

    def stop(self, mode="fast"):
        self.ctl("stop", "-m", mode, check=False)

    def connect(self, dbname="postgres", autocommit=True):
        end = time.time() + 60
        while True:
            try:
                c = psycopg2.connect(host="/tmp", port=self.port, user="postgres", dbname=dbname)
                c.autocommit = autocommit
                return c
            except psycopg2.OperationalError:
                if time.time() > end:
                    raise
                time.sleep(0.2)

    def log(self):
        try:
            with open(self.logfile) as f:
                return f.read()
        except OSError:
            return ""

    def destroy(self):
        self.stop("immediate")
        # $AXME_TEST_SERVER_LOGDIR: keep the server log (scripts/sanitize.sh reads reports in it)
        keep = os.environ.get("AXME_TEST_SERVER_LOGDIR")
        if keep and os.path.exists(self.logfile):
            shutil.copy(self.logfile, os.path.join(keep, "http-%d-%s.log" % (self.port, os.path.basename(self.dir))))
        shutil.rmtree(self.dir, ignore_errors=True)
