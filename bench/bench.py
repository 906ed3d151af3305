#!/usr/bin/python3
"""axme benchmark: send throughput, consume-cycle throughput, wake-up latency.

Runs inside a throwaway cluster (bench/run.sh starts it with pg_virtualenv; PGHOST, PGPORT, PGUSER,
PGPASSWORD come from there).  Every measurement is taken side by side with its floor (the bare
table doing the same work) and with PgQ, interleaved round by round so that machine noise hits all
of them alike.  Writes bench/RESULTS.md and bench/results.json.

Settings (environment): BENCH_SECONDS (per throughput run, default 10), BENCH_ROUNDS (default 3),
BENCH_LAT_N (stream sends, default 1000), BENCH_WAIT_N (wait_for wakes, default 500).
"""
import datetime
from contextlib import closing
import json
import multiprocessing
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
LAT_N = int(os.environ.get("BENCH_LAT_N", "1000"))
WAIT_N = int(os.environ.get("BENCH_WAIT_N", "500"))
OUT_MD = os.environ.get("BENCH_OUT", os.path.join(HERE, "RESULTS.md"))
ONLY = re.compile(os.environ.get("BENCH_ONLY", ""))   # development: run only matching parts
OUT_JSON = os.path.splitext(OUT_MD)[0].replace("RESULTS", "results") + ".json"

SINK = "agent://bench/perf/sink"        # poll agent: send rows
WORKER = "agent://bench/perf/worker"    # poll agent: consume cycle
STREAM = "agent://bench/perf/stream"    # stream agent: stream sends and latency
WAITER = "agent://bench/perf/waiter"    # poll agent: wait_for latency
BATCH = 100                             # rows per transaction / per claim
LEASE = "30 seconds"


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def connect(autocommit=True, **kw):
    conn = psycopg2.connect("", application_name="axme-bench", **kw)
    if not kw.get("async_"):
        conn.autocommit = autocommit
    return conn


def sql(query, args=None, fetch=True):
    with closing(connect()) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if fetch and cur.description else None


def quantile(values, q):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------------
# Machine and settings
# ------------------------------------------------------------------------------------------------

def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    settings = dict(sql("SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                        "('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', "
                        "'wal_level', 'max_connections', 'shared_preload_libraries', 'autovacuum', "
                        "'checkpoint_timeout', 'max_wal_size', 'jit')"))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
        "pg_version": sql("SELECT version()")[0][0],
        "pgq_version": sql("SELECT pgq.version()")[0][0],
        "axme_version": sql("SELECT extversion FROM pg_extension WHERE extname = 'axme'")[0][0],
        "python": platform.python_version(),
        "psycopg2": psycopg2.__version__.split()[0],
        "pgbench": subprocess.run(["pgbench", "--version"], capture_output=True, text=True).stdout.strip(),
        "host": os.environ.get("PGHOST", "(socket)"),
        "commit": os.environ.get("BENCH_COMMIT", "unknown"),
        "settings": settings,
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


# ------------------------------------------------------------------------------------------------
# Resetting between runs
# ------------------------------------------------------------------------------------------------

def reset_all():
    """Empty every queue so that each run starts from the same state."""
    with closing(connect()) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE axme.intents, axme.events, axme.idempotency_keys, "
                    "bench.floor_intents, bench.w_intents, bench.w_events, bench.lease_queue")
        cur.execute("ALTER SEQUENCE bench.lease_queue_msg_id_seq RESTART")
        for q in ("bench_send", "bench_cycle"):
            cur.execute("SELECT pgq.drop_queue(%s, true) FROM pgq.queue WHERE queue_name = %s", (q, q))
            cur.execute("SELECT pgq.create_queue(%s)", (q,))
        # bench.pgq_preload calls the ticker after every BATCH events: let it tick on any new event
        cur.execute("SELECT pgq.set_queue_config('bench_cycle', 'ticker_max_count', '1')")
        cur.execute("SELECT pgq.register_consumer('bench_cycle', 'c1')")
        cur.execute("VACUUM ANALYZE axme.intents, axme.events, bench.floor_intents, bench.w_intents, "
                    "bench.w_events, bench.lease_queue")
        cur.execute("CHECKPOINT")


# ------------------------------------------------------------------------------------------------
# 1. Send throughput (pgbench)
# ------------------------------------------------------------------------------------------------

SEND_SYSTEMS = [  # key, script prefix, label
    ("floor", "send_floor", "bare INSERT (floor)"),
    ("axme_sql", "send_axmesql", "axme's writes in bare SQL"),
    ("axme", "send_axme", "axme.send_intent, poll agent"),
    ("axme_stream", "send_axmestream", "axme.send_intent, stream agent"),
    ("pgq", "send_pgq", "PgQ insert_event"),
]


def pgbench(script, clients, seconds):
    cmd = ["pgbench", "-n", "-M", "prepared", "-T", str(int(round(seconds))), "-c", str(clients),
           "-j", str(clients), "-f", os.path.join(HERE, "pgbench", script), os.environ.get("PGDATABASE", "postgres")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    m = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", out, re.M)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if p.returncode != 0 or not m or (failed and int(failed.group(1)) != 0):
        raise RuntimeError("pgbench failed:\n" + " ".join(cmd) + "\n" + out)
    lat = re.search(r"^latency average = ([0-9.]+) ms", out, re.M)
    return float(m.group(1)), float(lat.group(1)) if lat else None


# How the rows of one transaction are sent: (key, script suffix, rows per transaction, label)
SEND_SHAPES = [
    ("1", "1", 1, "1"),
    ("100", "100", 100, "100, one statement"),
    ("100s", "100s", 100, "100, one statement each"),
]


def send_script(system, shape):
    prefix = dict((k, p) for k, p, _ in SEND_SYSTEMS)[system]
    suffix = dict((k, x) for k, x, _, _ in SEND_SHAPES)[shape]
    path = "%s_%s.sql" % (prefix, suffix)
    return path if os.path.exists(os.path.join(HERE, "pgbench", path)) else None


def send_run(system, shape, clients):
    batch = dict((k, n) for k, _, n, _ in SEND_SHAPES)[shape]
    reset_all()
    time.sleep(0.5)
    tps, lat_ms = pgbench(send_script(system, shape), clients, SECONDS)
    rows = tps * batch
    # sanity: the rows are really there
    table = {"floor": "bench.floor_intents", "axme_sql": "bench.w_intents", "axme": "axme.intents",
             "axme_stream": "axme.intents"}.get(system)
    if table:
        n = sql("SELECT count(*) FROM " + table)[0][0]
        if n < rows * SECONDS * 0.5:
            raise RuntimeError("%s: only %d rows written, pgbench claims %.0f/s" % (system, n, rows))
    return {"rows_per_s": rows, "tps": tps, "latency_ms": lat_ms}


# ------------------------------------------------------------------------------------------------
# 2. Consume cycle (psycopg2 consumers, one process each)
# ------------------------------------------------------------------------------------------------

OK_RESULT = '{"ok": true}'
COMPLETE_MANY = False    # axme.complete_many(ids, attempts, results) exists: batch ack uses it


def detect_features():
    global COMPLETE_MANY
    COMPLETE_MANY = sql("SELECT to_regprocedure('axme.complete_many(uuid[], integer[], jsonb[])') IS NOT NULL")[0][0]

# Every statement of a consumer is a server-side prepared statement (PREPARE once per connection,
# then EXECUTE), as pgbench -M prepared does for the sends: no system pays for re-planning.
LEASE_SQL = "interval '" + LEASE + "'"
STATEMENTS = {
    "axme": {
        "claim": "SELECT intent_id, attempt, payload FROM axme.poll($1::text, $2::int, " + LEASE_SQL + ")",
        "ack1": "SELECT axme.complete($1::uuid, $2::jsonb, $3::int)",
        "ackn": "SELECT count(*) FROM axme.complete_many($1::uuid[], $2::int[], $3::jsonb[])",
        "ackn_old": "SELECT count(axme.complete(t.id, t.res, t.att)) FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) t(id, att, res)",
    },
    # axme's writes in bare SQL: the statements poll and complete boil down to.
    "axme_sql": {
        "claim": "WITH c AS (SELECT i.intent_id FROM axme.intents i"
                 "  WHERE i.agent_id = (SELECT agent_id FROM axme.agents WHERE address = $1::text) AND i.due_at <= now()"
                 "  ORDER BY i.due_at LIMIT $2::int FOR UPDATE SKIP LOCKED),"
                 " u AS (UPDATE axme.intents i SET status = 'DELIVERED', attempt = i.attempt + 1,"
                 "  lease_until = now() + " + LEASE_SQL + ", due_at = now() + " + LEASE_SQL + ","
                 "  updated_at = now(), event_seq = i.event_seq + 1 FROM c WHERE i.intent_id = c.intent_id"
                 "  RETURNING i.intent_id, i.intent_type, i.payload, i.from_agent, i.correlation_id, i.attempt,"
                 "  i.lease_until, i.event_seq),"
                 " e AS (INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)"
                 "  SELECT u.intent_id, u.event_seq, 'intent.delivered', 'DELIVERED', current_user,"
                 "  jsonb_build_object('attempt', u.attempt, 'lease_until', u.lease_until) FROM u)"
                 " SELECT intent_id, attempt, payload FROM u",
        "ack1": "WITH u AS (UPDATE axme.intents i SET status = 'COMPLETED', result = $2::jsonb, due_at = NULL,"
                "  lease_until = NULL, updated_at = now(), event_seq = i.event_seq + 1"
                "  WHERE i.intent_id = $1::uuid AND i.attempt = $3::int"
                "    AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')"
                "  RETURNING i.intent_id, i.event_seq, i.attempt)"
                " INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)"
                " SELECT intent_id, event_seq, 'intent.completed', 'COMPLETED', current_user,"
                " jsonb_build_object('attempt', attempt) FROM u",
        "ackn": "WITH u AS (UPDATE axme.intents i SET status = 'COMPLETED', result = r.res, due_at = NULL,"
                "  lease_until = NULL, updated_at = now(), event_seq = i.event_seq + 1"
                "  FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS r(id, att, res)"
                "  WHERE i.intent_id = r.id AND i.attempt = r.att"
                "    AND i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT')"
                "  RETURNING i.intent_id, i.event_seq, i.attempt)"
                " INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)"
                " SELECT intent_id, event_seq, 'intent.completed', 'COMPLETED', current_user,"
                " jsonb_build_object('attempt', attempt) FROM u",
    },
    # The lease-queue floor.
    "floor": {
        "claim": "UPDATE bench.lease_queue SET vt = now() + " + LEASE_SQL + ", read_ct = read_ct + 1"
                 " WHERE msg_id IN (SELECT msg_id FROM bench.lease_queue WHERE vt <= now() ORDER BY vt"
                 " LIMIT $1::int FOR UPDATE SKIP LOCKED) RETURNING msg_id, read_ct, message",
        "ack1": "DELETE FROM bench.lease_queue WHERE msg_id = $1::bigint",
        "ackn": "DELETE FROM bench.lease_queue WHERE msg_id = ANY($1::bigint[])",
    },
    "pgq": {
        "next": "SELECT pgq.next_batch('bench_cycle', 'c1')",
        "events": "SELECT ev_id, ev_type, ev_data FROM pgq.get_batch_events($1::bigint)",
        "finish": "SELECT pgq.finish_batch($1::bigint)",
    },
}


def prepare(cur, system):
    for name, stmt in STATEMENTS[system].items():
        if system == "axme" and name == "ackn" and not COMPLETE_MANY:
            continue
        cur.execute("PREPARE %s AS %s" % (name, stmt))


def cycle_once(cur, system, mode):
    """One consumer cycle: claim up to BATCH, then acknowledge them.  Returns rows handled."""
    if system == "pgq":
        cur.execute("EXECUTE next")
        batch_id = cur.fetchone()[0]
        if batch_id is None:
            return 0
        cur.execute("EXECUTE events(%s)", (batch_id,))
        rows = cur.fetchall()
        cur.execute("EXECUTE finish(%s)", (batch_id,))
        return len(rows) if rows else -1   # -1: an empty batch, keep going
    if system == "floor":
        cur.execute("EXECUTE claim(%s)", (BATCH,))
    else:
        cur.execute("EXECUTE claim(%s, %s)", (WORKER, BATCH))
    rows = cur.fetchall()
    if not rows:
        return 0
    if mode == "each":
        for row in rows:
            if system == "floor":
                cur.execute("EXECUTE ack1(%s)", (row[0],))
            else:
                cur.execute("EXECUTE ack1(%s, %s, %s)", (row[0], OK_RESULT, row[1]))
    elif system == "floor":
        cur.execute("EXECUTE ackn(%s::bigint[])", ([r[0] for r in rows],))
    else:
        cur.execute("EXECUTE %s(%%s::uuid[], %%s::int[], %%s::jsonb[])"
                    % ("ackn" if COMPLETE_MANY or system != "axme" else "ackn_old"),
                    ([r[0] for r in rows], [r[1] for r in rows], [OK_RESULT] * len(rows)))
    return len(rows)


def consumer_proc(system, mode, ready, start, deadline_s, results):
    try:
        consume(system, mode, ready, start, deadline_s, results)
    except Exception as e:  # report it to the parent instead of leaving it waiting
        ready.release()
        results.put(("error", "%s: %s" % (type(e).__name__, e)))


def consume(system, mode, ready, start, deadline_s, results):
    conn = connect()
    cur = conn.cursor()
    prepare(cur, system)
    ready.release()
    start.wait()
    t0 = time.perf_counter()
    deadline = t0 + deadline_s
    done, cycles, empties, last = 0, 0, 0, t0
    while time.perf_counter() < deadline:
        n = cycle_once(cur, system, mode)
        if n > 0:
            done += n
            cycles += 1
            empties = 0
            last = time.perf_counter()
        elif n == 0:
            empties += 1
            if empties >= 3:       # queue drained
                break
            time.sleep(0.002)
    results.put((done, cycles, last - t0))
    conn.close()


PRELOAD_GUESS = {"floor": 40000, "axme_sql": 20000, "axme": 15000, "pgq": 50000}   # rows/s, refined by round 1
measured_cycle_rate = {}


def preload(system, n):
    with closing(connect()) as conn, conn.cursor() as cur:
        if system == "floor":
            cur.execute("INSERT INTO bench.lease_queue (message) SELECT bench.order_payload(g) "
                        "FROM generate_series(1, %s) g", (n,))
        elif system in ("axme", "axme_sql"):
            chunk = 5000
            for i in range(0, n, chunk):
                cur.execute("SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.order.process.v1', "
                            "'to_agent', %s, 'payload', bench.order_payload(g)))) FROM generate_series(%s, %s) g",
                            (WORKER, i + 1, min(n, i + chunk)))
        elif system == "pgq":
            cur.execute("CALL bench.pgq_preload('bench_cycle', %s, %s)", (n, BATCH))
        cur.execute("VACUUM ANALYZE axme.intents, axme.events, bench.lease_queue")
        cur.execute("CHECKPOINT")


def cycle_run(system, consumers, mode):
    key = (system, consumers, mode)
    rate_guess = measured_cycle_rate.get(key, PRELOAD_GUESS[system])
    n = int(max(20000, rate_guess * SECONDS * 1.6))
    reset_all()
    t = time.perf_counter()
    preload(system, n)
    log("    preloaded %d in %.1fs" % (n, time.perf_counter() - t))
    ctx = multiprocessing.get_context("fork")
    ready, start, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=consumer_proc, args=(system, mode, ready, start, SECONDS, results))
             for _ in range(consumers)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=30):
            raise RuntimeError("consumer did not start")
    start.set()
    out = [results.get(timeout=SECONDS + 120) for _ in procs]
    errors = [o[1] for o in out if o[0] == "error"]
    if errors:
        raise RuntimeError("%s consumer failed: %s" % (system, errors[0]))
    for p in procs:
        p.join(timeout=30)
    done = sum(o[0] for o in out)
    cycles = sum(o[1] for o in out)
    elapsed = max(o[2] for o in out)
    rate = done / elapsed if elapsed > 0 else 0.0
    measured_cycle_rate[key] = max(rate, measured_cycle_rate.get(key, 0))
    # sanity: what was handed out was really finished
    if system in ("axme", "axme_sql"):
        left = sql("SELECT count(*) FILTER (WHERE status = 'COMPLETED'), count(*) FILTER (WHERE status = 'DELIVERED') "
                   "FROM axme.intents")[0]
        if left[0] != done or left[1] != 0:
            raise RuntimeError("axme cycle: %d completed, %d still DELIVERED, consumers counted %d" % (left[0], left[1], done))
    elif system == "floor":
        left = sql("SELECT count(*) FROM bench.lease_queue")[0][0]
        if left != n - done:
            raise RuntimeError("floor cycle: %d left of %d, consumers counted %d" % (left, n, done))
    drained = elapsed < SECONDS * 0.9
    return {"rows_per_s": rate, "rows": done, "cycles": cycles, "seconds": elapsed, "preloaded": n,
            "drained_early": drained}


# ------------------------------------------------------------------------------------------------
# 3. Latency
# ------------------------------------------------------------------------------------------------

def listener_proc(channel, pipe, ready):
    """A LISTEN client in its own process: stamps every notification as it arrives."""
    conn = connect()
    conn.cursor().execute("LISTEN " + channel)
    ready.set()
    while True:
        if select.select([conn], [], [], 0.05)[0]:
            conn.poll()
            for note in conn.notifies:
                pipe.send((note.payload, time.perf_counter()))
            conn.notifies.clear()
        if pipe.poll():
            if pipe.recv() is None:
                break
    conn.close()


def stream_latency(n, bare):
    """Sender commits one notification at a time; a listener process stamps its arrival."""
    sender = connect()
    sc = sender.cursor()
    if bare:
        channel = "bench_bare"
    else:
        sc.execute("SELECT axme.channel(%s)", (STREAM,))
        channel = sc.fetchone()[0]
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    ready = ctx.Event()
    proc = ctx.Process(target=listener_proc, args=(channel, there, ready))
    proc.start()
    if not ready.wait(30):
        raise RuntimeError("listener did not start")
    commit_to_recv, call_to_recv = [], []
    payload = json.dumps({"order_id": 1, "customer": "c-1"})
    for i in range(n + 20):           # 20 warm-up sends not counted
        t0 = time.perf_counter()
        if bare:
            sc.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
            expect = str(i)
        else:
            sc.execute("SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.order.process.v1', "
                       "'to_agent', %s, 'payload', %s::jsonb))", (STREAM, payload))
            expect = sc.fetchone()[0]
        t1 = time.perf_counter()
        if not here.poll(10):
            raise RuntimeError("no notification within 10 s")
        note, got = here.recv()
        if (note if bare else json.loads(note)["intent_id"]) != expect:
            raise RuntimeError("unexpected notification %r, expected %r" % (note, expect))
        if i >= 20:
            commit_to_recv.append((got - t1) * 1000)
            call_to_recv.append((got - t0) * 1000)
    here.send(None)
    proc.join(30)
    sender.close()
    return summary(commit_to_recv), summary(call_to_recv)


def summary(ms):
    return {"n": len(ms), "p50": quantile(ms, 0.5), "p90": quantile(ms, 0.9), "p99": quantile(ms, 0.99),
            "max": max(ms), "min": min(ms), "mean": statistics.mean(ms)}


def waiter_proc(pipe):
    """Session A in its own process: blocks in wait_for for each intent id it is given."""
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pipe.send(cur.fetchone()[0])
    while True:
        intent_id = pipe.recv()
        if intent_id is None:
            break
        cur.execute("SELECT axme.wait_for(%s, '30 seconds')", (intent_id,))
        t = time.perf_counter()
        doc = cur.fetchone()[0]
        pipe.send((doc and doc["status"], t))
    conn.close()


def wait_for_latency(n):
    """Session A blocks in wait_for; session B completes; time from B's commit returning to A's
    wait_for returning (each stamped in its own process)."""
    b = connect()
    bc = b.cursor()
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=waiter_proc, args=(there,))
    proc.start()
    if not here.poll(30):
        raise RuntimeError("waiter did not start")
    a_pid = here.recv()
    commit_to_return, call_to_return = [], []
    for i in range(n + 10):             # 10 warm-up wakes not counted
        bc.execute("SELECT axme.send_intent(jsonb_build_object('intent_type', 'intent.order.process.v1', "
                   "'to_agent', %s, 'payload', bench.order_payload(%s)))", (WAITER, i))
        intent_id = bc.fetchone()[0]
        bc.execute("SELECT intent_id, attempt FROM axme.poll(%s, 1, %s)", (WAITER, LEASE))
        polled = bc.fetchone()
        if polled[0] != intent_id:
            raise RuntimeError("polled %r, expected %r" % (polled, intent_id))
        here.send(intent_id)
        # make sure A sleeps on its condition variable before B completes
        deadline = time.perf_counter() + 5
        while True:
            bc.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (a_pid,))
            if bc.fetchone()[0] == "Extension":
                break
            if time.perf_counter() > deadline:
                raise RuntimeError("wait_for never went to sleep")
            time.sleep(0.0002)
        t0 = time.perf_counter()
        bc.execute("SELECT axme.complete(%s, '{\"ok\": true}', %s)", (intent_id, polled[1]))
        t1 = time.perf_counter()
        if not here.poll(10):
            raise RuntimeError("wait_for did not return within 10 s of complete")
        status, t2 = here.recv()
        if status != "COMPLETED":
            raise RuntimeError("wait_for returned status %r" % (status,))
        if i >= 10:
            commit_to_return.append((t2 - t1) * 1000)
            call_to_return.append((t2 - t0) * 1000)
    here.send(None)
    proc.join(30)
    b.close()
    return summary(commit_to_return), summary(call_to_return)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def med(values):
    return statistics.median(values) if values else float("nan")


def fmt_rate(v):
    return "{:,.0f}".format(v) if v == v else "—"


def paired_ratio(runs, floor_runs):
    """Median over rounds of run / floor run of the same round (noise within a round is shared)."""
    pairs = [a / b for a, b in zip(runs, floor_runs) if b]
    return "%.0f %%" % (100.0 * med(pairs)) if pairs else "—"


def spread(values):
    if len(values) < 2:
        return ""
    return " (%s–%s)" % ("{:,.0f}".format(min(values)), "{:,.0f}".format(max(values)))


def report(info, sends, cycles, lat, started, finished):
    L = []
    L.append("# axme benchmark results")
    L.append("")
    L.append("Generated by `bash bench/run.sh` on %s (%.0f minutes). Each throughput cell is the median of "
             "%d rounds of %g s (range in parentheses). Rounds interleave all systems, so a ratio is the "
             "median over rounds of the system's rate divided by the floor's rate in the same round." % (started, (finished - started_ts) / 60.0, ROUNDS, SECONDS))
    L.append("")
    L.append("**Machine:** %d cores, %s, %.0f GiB RAM, Linux %s. **PostgreSQL:** %s; PgQ %s; axme %s. "
             "Code: axme commit %s. Load average at start %s, at end %s (the machine is shared)."
             % (info["nproc"], info["cpu"], info["mem_gib"], info["kernel"],
                info["pg_version"].split(" on ")[0], info["pgq_version"], info["axme_version"],
                info["commit"], " ".join(info["loadavg_start"]), " ".join(info["loadavg_end"])))
    s = info["settings"]
    L.append("")
    L.append("**Settings:** a throwaway cluster from `pg_virtualenv` with **fsync=%s** (commits never wait "
             "for the disk, so these numbers are CPU and round-trip bound; with fsync=on every system is "
             "bounded by the WAL flush instead), synchronous_commit=%s, shared_buffers=%s, wal_level=%s, "
             "autovacuum=%s, jit=%s, shared_preload_libraries=%s. Clients connect over TCP loopback (%s). "
             "The clients (pgbench, Python) run on the same 2 cores as the server."
             % (s.get("fsync"), s.get("synchronous_commit"), s.get("shared_buffers"), s.get("wal_level"),
                s.get("autovacuum"), s.get("jit"), s.get("shared_preload_libraries"), info["host"]))
    L.append("")
    L.append("## 1. Sending: rows/s (pgbench -M prepared, -T %g, -j = -c)" % SECONDS)
    L.append("")
    L.append("One row = one intent with a ~110-byte JSON order payload. Floor: a bare `INSERT` of the same "
             "row (same columns and types, defaults and CHECKs as `axme.intents`, primary key only) into a plain "
             "table. *100, one statement*: one statement per transaction sends 100 (`SELECT send_intent(...) "
             "FROM generate_series(1, 100)`, the shape of a row trigger on a 100-row INSERT; the floor is "
             "`INSERT ... SELECT` of 100 rows, the cheapest write PostgreSQL has; PgQ calls `insert_event` 100 "
             "times). *100, one statement each*: `BEGIN`, 100 single-row statements, `COMMIT` (an application "
             "sending 100 in one transaction; 100 round trips).")
    L.append("")
    L.append("| rows/tx | clients | floor: bare INSERT | axme send_intent (poll agent) | **axme/floor** "
             "| axme send_intent (stream agent) | stream/floor | PgQ insert_event | PgQ/floor "
             "| axme's writes in bare SQL | axme/bare writes |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, _, _, shape_label in SEND_SHAPES:
        for clients in (1, 4):
            v = {k: [r["rows_per_s"] for r in sends.get((k, shape, clients), [])] for k, _, _ in SEND_SYSTEMS}
            f = med(v["floor"])
            L.append("| %s | %d | %s%s | %s%s | **%s** | %s%s | %s | %s%s | %s | %s | %s |" % (
                shape_label, clients, fmt_rate(f), spread(v["floor"]),
                fmt_rate(med(v["axme"])), spread(v["axme"]), paired_ratio(v["axme"], v["floor"]),
                fmt_rate(med(v["axme_stream"])), spread(v["axme_stream"]), paired_ratio(v["axme_stream"], v["floor"]),
                fmt_rate(med(v["pgq"])), spread(v["pgq"]), paired_ratio(v["pgq"], v["floor"]),
                fmt_rate(med(v["axme_sql"])), paired_ratio(v["axme"], v["axme_sql"])))
    L.append("")
    L.append("Target: axme ≥ 50 % of the floor. *axme's writes in bare SQL* is one plain statement writing "
             "exactly the rows and index entries `send_intent` writes (the intent with its primary key, "
             "claim index and dead-letter index; the `intent.created` and `intent.submitted` events with "
             "their primary key) into look-alike tables: *axme/bare writes* is the share left after the "
             "data model, i.e. what validation and the function call cost.")
    L.append("")
    L.append("## 2. Consuming: poll + complete cycle, rows/s (psycopg2 consumers, one process each)")
    L.append("")
    L.append("Each consumer claims batches of %d from a preloaded queue until %g s pass; every statement is "
             "a server-side prepared statement (`PREPARE` once, then `EXECUTE`) for every system. "
             "**per-row ack** is the realistic cycle: one `poll(agent, 100)` then 100 separate "
             "`complete(intent_id, result, attempt)` calls, each its own transaction and round trip "
             "(101 transactions per 100 intents); the floor does the same with `UPDATE … WHERE msg_id IN "
             "(SELECT … ORDER BY vt LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING` then 100 single-row "
             "`DELETE`s. **batch ack** finishes all 100 in one statement (axme: %s; floor: `DELETE … WHERE msg_id = ANY(ids)`). "
             "PgQ has no per-row ack: its cycle is `next_batch` + `get_batch_events` + `finish_batch` "
             "(3 statements per 100 events), shown in the batch rows; PgQ consumers do not share work "
             "(each registered consumer sees every event), so it has no 4-consumer figure."
             % (BATCH, SECONDS, "`complete_many(ids, attempts, results)`" if info.get("batch_ack") == "complete_many"
                else "`SELECT complete(id, result, attempt) FROM unnest(ids, attempts)`"))
    L.append("")
    L.append("| ack | consumers | floor: lease table | axme poll + complete | **axme/floor** | PgQ batch cycle "
             "| PgQ/floor | axme's writes in bare SQL | axme/bare writes |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, label in (("each", "per-row"), ("batch", "batch")):
        for consumers in (1, 4):
            fl = [r["rows_per_s"] for r in cycles.get(("floor", consumers, mode), [])]
            ax = [r["rows_per_s"] for r in cycles.get(("axme", consumers, mode), [])]
            pq = [r["rows_per_s"] for r in cycles.get(("pgq", consumers, mode), [])]
            sq = [r["rows_per_s"] for r in cycles.get(("axme_sql", consumers, mode), [])]
            f = med(fl)
            L.append("| %s | %d | %s%s | %s%s | **%s** | %s | %s | %s | %s |" % (
                label, consumers, fmt_rate(f), spread(fl), fmt_rate(med(ax)), spread(ax),
                paired_ratio(ax, fl), (fmt_rate(med(pq)) + spread(pq)) if pq else "—",
                paired_ratio(pq, fl) if pq else "—", fmt_rate(med(sq)), paired_ratio(ax, sq)))
    L.append("")
    L.append("Target: axme ≥ 50 % of the floor. *axme's writes in bare SQL*: the client sends the statements "
             "`poll` and `complete` boil down to (claim CTE: lock, update to DELIVERED, insert "
             "`intent.delivered` events; ack: update to COMPLETED and insert `intent.completed`) on axme's own "
             "tables, without validation, receipts' error paths or wake-ups.")
    L.append("")
    L.append("## 3. Latency, milliseconds (Python, two connections, `time.perf_counter`)")
    L.append("")
    L.append("*commit → received*: from the sender's autocommit statement returning (its commit done) to "
             "the other connection having the notification / the `wait_for` result in hand. *call → "
             "received*: from just before the sender's statement (includes the send or complete itself). "
             "wait_for: session A blocks in `wait_for(id)` (checked in `pg_stat_activity` to be asleep "
             "before B acts), session B runs `complete(id)`.")
    L.append("")
    L.append("| what | n | commit → received p50 | p99 | max | call → received p50 | p99 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for key, label in (("notify", "bare `pg_notify` round trip"), ("stream", "axme stream: `send_intent` → LISTEN client"),
                       ("wait_for", "axme `wait_for` wake-up after `complete`")):
        if key not in lat:
            continue
        c, k = lat[key]
        L.append("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f |" % (label, c["n"], c["p50"], c["p99"], c["max"],
                                                                 k["p50"], k["p99"]))
    L.append("")
    L.append("Target: p50 ≤ 2 ms.")
    L.append("")
    L.append("Raw per-round numbers: `bench/results.json`.")
    L.append("")
    return "\n".join(L)


started_ts = time.time()


def main():
    global started_ts
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    started_ts = time.time()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(HERE, "sql", "setup.sql")],
                   check=True, stdout=subprocess.DEVNULL)
    info = machine()
    detect_features()
    info["batch_ack"] = "complete_many" if COMPLETE_MANY else "complete() per row in one statement"
    log("machine:", info["nproc"], "cores,", info["cpu"], "|", info["pg_version"].split(" on ")[0],
        "| fsync =", info["settings"].get("fsync"))
    sends, cycles, lat_rounds = {}, {}, {"notify": [], "stream": [], "wait_for": []}
    for rnd in range(1, ROUNDS + 1):
        log("round %d/%d: sending" % (rnd, ROUNDS))
        for shape, _, _, _ in SEND_SHAPES:
            for clients in (1, 4):
                for key, _, _ in SEND_SYSTEMS:
                    if not send_script(key, shape) or not ONLY.search("send %s %s %d" % (key, shape, clients)):
                        continue
                    r = send_run(key, shape, clients)
                    sends.setdefault((key, shape, clients), []).append(r)
                    log("  send %-12s %4s/tx c=%d: %9.0f rows/s" % (key, shape, clients, r["rows_per_s"]))
        log("round %d/%d: consuming" % (rnd, ROUNDS))
        for mode in ("each", "batch"):
            for consumers in (1, 4):
                for key in ("floor", "axme_sql", "axme", "pgq"):
                    if key == "pgq" and (mode == "each" or consumers != 1):
                        continue
                    if not ONLY.search("cycle %s %s %d" % (key, mode, consumers)):
                        continue
                    r = cycle_run(key, consumers, mode)
                    cycles.setdefault((key, consumers, mode), []).append(r)
                    log("  cycle %-6s %-5s c=%d: %9.0f rows/s (%d rows in %.1fs%s)" % (
                        key, mode, consumers, r["rows_per_s"], r["rows"], r["seconds"],
                        ", DRAINED EARLY" if r["drained_early"] else ""))
        log("round %d/%d: latency" % (rnd, ROUNDS))
        if not ONLY.search("latency"):
            continue
        reset_all()
        lat_rounds["notify"].append(stream_latency(LAT_N, bare=True))
        lat_rounds["stream"].append(stream_latency(LAT_N, bare=False))
        lat_rounds["wait_for"].append(wait_for_latency(WAIT_N))
        for k, v in lat_rounds.items():
            log("  %-8s commit->recv p50 %.3f ms p99 %.3f ms" % (k, v[-1][0]["p50"], v[-1][0]["p99"]))
    # latency: report the round with the median p50 (all rounds are in results.json)
    lat = {}
    for k, v in lat_rounds.items():
        if v:
            v = sorted(v, key=lambda x: x[0]["p50"])
            lat[k] = v[(len(v) - 1) // 2]
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    finished = time.time()
    md = report(info, sends, cycles, lat, started, finished)
    with open(OUT_MD, "w") as f:
        f.write(md)
    with open(OUT_JSON, "w") as f:
        json.dump({"machine": info, "seconds": SECONDS, "rounds": ROUNDS,
                   "send": [{"system": k[0], "shape": k[1], "clients": k[2], "runs": v} for k, v in sends.items()],
                   "cycle": [{"system": k[0], "consumers": k[1], "ack": k[2], "runs": v} for k, v in cycles.items()],
                   "latency_ms": {k: [{"commit_to_received": c, "call_to_received": d} for c, d in v]
                                  for k, v in lat_rounds.items()}}, f, indent=1)
    print(md)
    log("wrote", OUT_MD, "and", OUT_JSON)


if __name__ == "__main__":
    main()
