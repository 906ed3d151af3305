"""History benchmark: send, poll+complete and http delivery throughput on an empty database, then
again after bulk-loading 10 million historical intents (30 million events, 1 million idempotency
keys and http attempt rows), plus the timings and plans of the operations queries.  Run inside a
throwaway cluster (see run.sh); writes RESULTS.md and results.json next to this file.

Environment: HIST_ROWS (default 10000000), HIST_SECONDS (pgbench send run, default 15),
HIST_POLL_N (intents drained by poll+complete, default 30000), HIST_HTTP_N (http deliveries,
default 4000), HIST_ROUNDS (default 4; empty and history alternate), HIST_IDS (v7, the default:
historical intent ids are UUIDv7 of their created_at, as send_intent makes them since 0.3.0; v4:
random ids, as before), HIST_OUT (results file name without extension, default RESULTS)."""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
BINDIR = os.environ.get("PG_BINDIR") or subprocess.run(
    [os.environ.get("PG_CONFIG", "pg_config"), "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
ROWS = int(os.environ.get("HIST_ROWS", 10_000_000))
SECONDS = int(os.environ.get("HIST_SECONDS", 15))
POLL_N = int(os.environ.get("HIST_POLL_N", 30000))
HTTP_N = int(os.environ.get("HIST_HTTP_N", 4000))
ROUNDS = int(os.environ.get("HIST_ROUNDS", 4))
IDS = os.environ.get("HIST_IDS", "v7")
OUT = os.environ.get("HIST_OUT", "RESULTS")
assert IDS in ("v7", "v4"), "HIST_IDS must be v7 or v4"
# UUIDv7 of s.created (48-bit unix ms, version 7) with the rest from a random v4 id (variant kept)
V7_SQL = """encode(set_byte(overlay(uuid_send(gen_random_uuid()) PLACING
               substring(int8send((extract(epoch FROM created) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
               6, 112 + get_byte(uuid_send(gen_random_uuid()), 6) %% 16), 'hex')::uuid"""
DB = "axme_history"
DB_EMPTY = "axme_empty"
POLL = "agent://bench/hist/poll"
HOOK = "agent://bench/hist/hook"
CHUNK = 1_000_000
HIST_AGENTS = 50


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def connect(db=DB):
    c = psycopg2.connect(dbname=db, application_name="axme-history-bench")
    c.autocommit = True
    return c


def q(c, sql, args=None):
    with c.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


NGINX_DIR = "/tmp/axme_hist_nginx"
NGINX_PORT = 18097
NGINX_CONF = """worker_processes 1;
daemon on;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:%(p)d; location / { return 204; } }
}
"""


def nginx(start):
    """The loopback receiver: nginx answering 204 (a Python server would be the bottleneck)."""
    conf = os.path.join(NGINX_DIR, "nginx.conf")
    if start:
        os.makedirs(NGINX_DIR, exist_ok=True)
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"d": NGINX_DIR, "p": NGINX_PORT})
        subprocess.run(["nginx", "-c", conf], check=True)
    else:
        subprocess.run(["nginx", "-c", conf, "-s", "stop"], check=False)


def measure_send(c, db):
    script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
    script.write("SELECT axme.send_intent('{\"intent_type\": \"intent.bench.send.v1\", \"to_agent\": \"%s\", "
                 "\"payload\": {\"order\": \"ORD-1\", \"amount\": 42}}'::jsonb);\n" % POLL)
    script.close()
    out = subprocess.run([os.path.join(BINDIR, "pgbench"), "-n", "-c", "2", "-j", "2", "-T", str(SECONDS),
                          "-f", script.name, db], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def measure_poll(c, db):
    """Intents per second through poll(50) + complete_many by two sessions, draining POLL_N."""
    q(c, "SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.poll.v1', 'to_agent', %s, "
         "'payload', jsonb_build_object('n', g))) FROM generate_series(1, %s) g", (POLL, POLL_N))
    # ready: everything sent so far by the send run too; drain exactly what is due
    poll_id = q(c, "SELECT agent_id FROM axme.agents WHERE address = %s", (POLL,))[0][0]
    due = q(c, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND due_at IS NOT NULL "
               "AND status = 'SUBMITTED'", (poll_id,))[0][0]
    done = [0, 0]

    def worker(k):
        w = connect(db)
        while True:
            n = q(w, "SELECT count(*) FROM (SELECT axme.complete_many(array_agg(intent_id), array_agg(attempt)) "
                     "FROM axme.poll(%s, 50, '60 seconds') HAVING count(*) > 0) s", (POLL,))[0][0]
            if n == 0:
                break
            done[k] += 50
        w.close()
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    left = q(c, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND due_at IS NOT NULL", (poll_id,))[0][0]
    assert left == 0, left
    return due / took


def measure_http(c, db):
    """http deliveries per second: HTTP_N intents sent at once, until all COMPLETED."""
    q(c, "SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.http.v1', 'to_agent', %s, "
         "'payload', jsonb_build_object('n', g))) FROM generate_series(1, %s) g", (HOOK, HTTP_N))
    t0 = time.monotonic()
    # progress through the claim index (due_at is NULL once an intent ended): a count by status
    # would scan the whole table, 1.6 s with 10 million rows, and slow what it measures
    hook_id = q(c, "SELECT agent_id FROM axme.agents WHERE address = %s", (HOOK,))[0][0]
    while True:
        left = q(c, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND due_at IS NOT NULL", (hook_id,))[0][0]
        if left == 0:
            break
        if time.monotonic() - t0 > 300:
            raise RuntimeError("http deliveries did not finish: %d left" % left)
        time.sleep(0.05)
    took = time.monotonic() - t0
    bad = q(c, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND status <> 'COMPLETED' "
               "AND created_at > now() - interval '1 hour'", (hook_id,))[0][0]
    assert bad == 0, "%d http intents not COMPLETED" % bad
    return HTTP_N / took


OPS_QUERIES = {
    "queue_depth": "SELECT * FROM axme.queue_depth",
    "delivery_stats": "SELECT * FROM axme.delivery_stats",
    "metrics": "SELECT axme.metrics()",
    "check_alerts": "SELECT axme._check_alerts()",
    "cleanup_step (nothing due)": "SELECT axme._cleanup_step(5000)",
    "purge_dead_letters (one agent, none due)": "SELECT axme.purge_dead_letters('agent://bench/hist/poll', '2000-01-01')",
}
PLANS = ["queue_depth", "delivery_stats"]


def measure_ops(c):
    out = {}
    for name, sql in OPS_QUERIES.items():
        ms = []
        for _ in range(5):
            t0 = time.monotonic()
            q(c, sql)
            ms.append((time.monotonic() - t0) * 1000)
        out[name] = statistics.median(ms)
    plans = {}
    for name in PLANS:
        plans[name] = "\n".join(r[0] for r in q(c, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + OPS_QUERIES[name]))
    # the cleanup's own queries, which a plpgsql function hides from EXPLAIN
    plans["cleanup: terminal batch"] = "\n".join(r[0] for r in q(c, """EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF)
        SELECT i.intent_id FROM axme.intents i
        WHERE i.status IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT') AND i.dead_letter_reason IS NULL
          AND i.updated_at < now() - interval '30 days' ORDER BY i.updated_at LIMIT 5000 FOR UPDATE SKIP LOCKED"""))
    plans["alerts: dead letters per agent"] = "\n".join(r[0] for r in q(c, """EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF)
        SELECT i.agent_id, count(*) FROM axme.intents i WHERE i.dead_letter_reason IS NOT NULL GROUP BY i.agent_id"""))
    return out, plans


def measure_round(c, db, label, res):
    log(label, "send")
    res["send_per_s"].append(measure_send(c, db))
    log(label, "poll+complete")
    res["poll_complete_per_s"].append(measure_poll(c, db))
    log(label, "http")
    res["http_per_s"].append(measure_http(c, db))
    log(label, {k: round(v[-1]) for k, v in res.items()})


def summary(res):
    return {"best": {k: max(v) for k, v in res.items()}, "median": {k: statistics.median(v) for k, v in res.items()},
            "rounds": res}


def load_history(c):
    q(c, "INSERT INTO axme.agents (address, delivery_mode, registered_by) "
         "SELECT 'agent://bench/hist/a' || g, CASE WHEN g %% 5 = 0 THEN 'http' ELSE 'poll' END, 'bench' "
         "FROM generate_series(1, %s) g ON CONFLICT DO NOTHING", (HIST_AGENTS,))
    ids = [r[0] for r in q(c, "SELECT agent_id FROM axme.agents WHERE address LIKE 'agent://bench/hist/a%' ORDER BY agent_id")]
    t_all = time.monotonic()
    for chunk in range(0, ROWS, CHUNK):
        n = min(CHUNK, ROWS - chunk)
        t0 = time.monotonic()
        # created 1 to 8 days ago, in order; 1 % dead letters, 1 % failed, 1 % canceled, the rest completed
        q(c, """
        WITH src AS (
            SELECT g, CASE WHEN %(v7)s THEN """ + V7_SQL + """ ELSE gen_random_uuid() END AS id,
                   agent_id, created
            FROM (SELECT g, (%(ids)s::bigint[])[1 + g %% %(na)s] AS agent_id,
                         now() - interval '8 days' + (%(chunk)s + g) * (interval '7 days' / %(rows)s) AS created
                  FROM generate_series(1, %(n)s) g) s0
        ), ins AS (
            INSERT INTO axme.intents (intent_id, agent_id, intent_type, to_agent, sender_role, correlation_id,
                                      payload, status, attempt, max_delivery_attempts, result, error,
                                      dead_letter_reason, dead_lettered_at, created_at, updated_at, event_seq)
            SELECT s.id, s.agent_id, 'intent.bench.history.v1', 'agent://bench/hist/a' || (1 + s.g %% %(na)s),
                   'bench', s.id, jsonb_build_object('order', 'ORD-' || s.g, 'amount', s.g %% 1000),
                   CASE WHEN s.g %% 100 IN (1, 2) THEN 'FAILED' WHEN s.g %% 100 = 3 THEN 'CANCELED' ELSE 'COMPLETED' END,
                   1, 5, CASE WHEN s.g %% 100 > 3 THEN '{"ok": true}'::jsonb END,
                   CASE WHEN s.g %% 100 IN (1, 2) THEN '{"why": "history"}'::jsonb END,
                   CASE WHEN s.g %% 100 = 1 THEN 'exhausted' END,
                   CASE WHEN s.g %% 100 = 1 THEN s.created + interval '2 seconds' END,
                   s.created, s.created + interval '2 seconds', 3
            FROM src s
            RETURNING intent_id, status, created_at, updated_at, agent_id
        ), ev AS (
            INSERT INTO axme.events (intent_id, seq, event_type, status, at, actor, details)
            SELECT ins.intent_id, e.seq,
                   CASE e.seq WHEN 1 THEN 'intent.submitted' WHEN 2 THEN 'intent.delivered'
                              ELSE 'intent.' || lower(ins.status) END,
                   CASE e.seq WHEN 1 THEN 'SUBMITTED' WHEN 2 THEN 'DELIVERED' ELSE ins.status END,
                   ins.created_at + (e.seq - 1) * interval '1 second', 'bench', '{}'
            FROM ins CROSS JOIN generate_series(1, 3) e(seq)
        ), keys AS (
            INSERT INTO axme.idempotency_keys (sender, key, intent_id, request_hash, created_at)
            SELECT 'bench', 'hist-' || ins.intent_id, ins.intent_id, 'x', ins.created_at FROM ins
            WHERE get_byte(uuid_send(ins.intent_id), 14) < 26
        )
        INSERT INTO axme.delivery_attempts (intent_id, attempt, agent_id, started_at, duration_ms, http_status)
        SELECT ins.intent_id, 1, ins.agent_id, ins.created_at + interval '1 second', 12.5, 204 FROM ins
        WHERE get_byte(uuid_send(ins.intent_id), 15) < 26
        """, {"ids": ids, "na": HIST_AGENTS, "chunk": chunk, "rows": ROWS, "n": n,
                "v7": IDS == "v7"})
        log("history: %d rows loaded (%.0f s)" % (chunk + n, time.monotonic() - t0))
    log("history loaded in %.0f s; VACUUM ANALYZE" % (time.monotonic() - t_all))
    t0 = time.monotonic()
    q(c, "VACUUM ANALYZE")
    log("vacuum analyze %.0f s" % (time.monotonic() - t0))
    sizes = q(c, """SELECT c.relname, pg_size_pretty(pg_total_relation_size(c.oid)), c.reltuples::bigint
                    FROM pg_class c WHERE c.relnamespace = 'axme'::regnamespace AND c.relkind = 'r'
                    ORDER BY pg_total_relation_size(c.oid) DESC""")
    return time.monotonic() - t_all, sizes


def setup_db(admin, db):
    q(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % db)
    q(admin, "CREATE DATABASE %s" % db)
    c = connect(db)
    q(c, "CREATE EXTENSION axme")
    q(c, "SELECT axme.register_agent(%s, 'poll')", (POLL,))
    q(c, "SELECT axme.register_agent(%s, 'http', %s, '{\"max_in_flight\": 64}')",
      (HOOK, "http://127.0.0.1:%d/hook" % NGINX_PORT))
    return c


def main():
    admin = connect("postgres")
    settings = {r[0]: r[1] for r in q(admin, """SELECT name, current_setting(name) FROM pg_settings WHERE name IN
        ('shared_buffers', 'fsync', 'synchronous_commit', 'max_wal_size', 'axme.retention_terminal',
         'axme.cleanup_interval', 'server_version')""")}
    # Two databases in one cluster, measured alternately (empty, history, empty, history, ...):
    # the machine is shared, and what else runs on it changes more between minutes than
    # history changes anything.
    ce = setup_db(admin, DB_EMPTY)
    ch = setup_db(admin, DB)
    nginx(True)
    try:
        load_s, sizes = load_history(ch)
        count = q(ch, "SELECT count(*) FROM axme.intents")[0][0]
        time.sleep(2)
        re_, rh = {"send_per_s": [], "poll_complete_per_s": [], "http_per_s": []}, \
            {"send_per_s": [], "poll_complete_per_s": [], "http_per_s": []}
        for r in range(ROUNDS):     # ABBA order, so that whatever follows a run hits both alike
            order = [(ce, DB_EMPTY, "empty", re_), (ch, DB, "history", rh)]
            for c, db, label, res in (order if r % 2 == 0 else order[::-1]):
                measure_round(c, db, "%s round %d" % (label, r + 1), res)
                time.sleep(5)
        empty, full = summary(re_), summary(rh)
        empty["ops_ms"], empty["plans"] = measure_ops(ce)
        full["ops_ms"], full["plans"] = measure_ops(ch)
    finally:
        nginx(False)
    res = {"commit": os.environ.get("BENCH_COMMIT", "unknown"), "settings": settings, "rows": ROWS, "history_ids": IDS,
           "intents_after_load": count, "load_seconds": load_s, "sizes": sizes, "empty": empty, "history": full}
    with open(os.path.join(HERE, ("results" if OUT == "RESULTS" else OUT) + ".json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    write_md(res)
    log("done")


def write_md(r):
    e, h = r["empty"]["best"], r["history"]["best"]
    lines = ["# History benchmark results", "",
             "Commit %s, PostgreSQL %s, 2 cores; shared_buffers %s, fsync %s (a throwaway cluster: fsync=off "
             "removes the cost of flushing WAL, the same in both columns)." % (
                 r["commit"], r["settings"].get("server_version"), r["settings"].get("shared_buffers"),
                 r["settings"].get("fsync")), "",
             "History: %d intents (%d in the table after loading, with the runs' own), 3 events each, about 10 %% "
             "with an idempotency key and 10 %% with an http attempt row; created 1 to 8 days ago; 1 %% dead "
             "letters, 1 %% FAILED, 1 %% CANCELED, the rest COMPLETED; historical intent ids %s. Loaded in %.0f s." % (
                 r["rows"], r["intents_after_load"],
                 "UUIDv7 of their created_at" if r.get("history_ids") == "v7" else "random (v4)",
                 r["load_seconds"]), "",
             "Empty and history databases live in the same cluster and are measured alternately (empty first in odd rounds, history first in even ones).", "",
             "| workload | empty (median) | history (median) | change | empty (best) | history (best) | change |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"send_per_s": "send_intent, 2 sessions (intents/s)",
             "poll_complete_per_s": "poll(50) + complete_many, 2 sessions (intents/s)",
             "http_per_s": "http delivery by the worker to nginx on loopback (intents/s)"}
    em, hm = r["empty"]["median"], r["history"]["median"]
    for k, label in names.items():
        lines.append("| %s | %.0f | %.0f | %+.1f %% | %.0f | %.0f | %+.1f %% |" % (
            label, em[k], hm[k], (hm[k] / em[k] - 1) * 100, e[k], h[k], (h[k] / e[k] - 1) * 100))
    lines += ["", "Rounds: empty %s; history %s." % (
        {k: [round(x) for x in v] for k, v in r["empty"]["rounds"].items()},
        {k: [round(x) for x in v] for k, v in r["history"]["rounds"].items()}), "",
        "## Operations queries (median of 5, ms)", "", "| query | empty | with history |", "|---|---:|---:|"]
    for k in r["empty"]["ops_ms"]:
        lines.append("| %s | %.1f | %.1f |" % (k, r["empty"]["ops_ms"][k], r["history"]["ops_ms"][k]))
    lines += ["", "## Table sizes with history", "", "| table | size | rows (estimate) |", "|---|---:|---:|"]
    for name, size, n in r["sizes"]:
        lines.append("| %s | %s | %s |" % (name, size, n))
    lines += ["", "## Plans with history", ""]
    for k, p in r["history"]["plans"].items():
        lines += ["### " + k, "", "```", p, "```", ""]
    with open(os.path.join(HERE, OUT + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
