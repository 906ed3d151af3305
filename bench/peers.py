#!/usr/bin/python3
"""axme side by side with its peers (the table of docs/performance.md), in one interleaved run.

Run by `bash bench/run.sh peers` inside a throwaway cluster (pg_virtualenv -t, fsync=off).
Systems: the floor (a bare INSERT into a table shaped like axme.intents), axme, PgQ (Debian
package postgresql-15-pgq3, always) and pgmq (only when its extension is installed: see
bench/README.md for building it from its sources in a scratch folder; skipped with a message
otherwise).  Writes bench/PEERS.md and bench/peers.json.

Rows (rows/s unless said otherwise; every cell the median over BENCH_ROUNDS rounds, every system
once per round, rounds interleaved):
  send, 1 per transaction, 1 and 4 clients          (pgbench -M prepared)
  send 100 in one statement, 1 and 4 clients        (axme send_intents; pgmq send_batch; PgQ and
                                                     axme send_intent called 100 times)
  consume N prefilled, 1 consumer                   (axme poll 100 + complete_many with receipts;
                                                     pgmq read 100 + archive / delete)
  complete, one per transaction                     (axme.complete vs the 0.3.0 body, same run)
  WAL bytes per lifecycle (send -> claim -> complete, 100 per transaction, after a CHECKPOINT)
  send 1 per transaction, 1 client, with fsync=on   (the durable figure)
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONSUME_N = int(os.environ.get("BENCH_CONSUME_N", "30000"))
COMPLETE_N = int(os.environ.get("BENCH_COMPLETE_N", "2000"))
WAL_N = int(os.environ.get("BENCH_WAL_N", "10000"))
ONLY = os.environ.get("BENCH_ONLY")
GENERATED = None        # the run's time when the report is rewritten from peers.json

SINK = "agent://bench/perf/sink"
WORKER = "agent://bench/perf/worker"
DOC = ("jsonb_build_object('intent_type', 'intent.order.process.v1', 'to_agent', '%s', "
       "'payload', bench.order_payload(%s))")

SEND1 = {
    "floor": "INSERT INTO bench.floor_intents (intent_id, agent_id, intent_type, to_agent, sender_role,"
             " correlation_id, payload, status, max_delivery_attempts, due_at)"
             " VALUES (gen_random_uuid(), 1, 'intent.order.process.v1', '%s', current_user::text::regrole,"
             " gen_random_uuid(), bench.order_payload(:n), 'SUBMITTED', 5, now());" % SINK,
    "axme": "SELECT axme.send_intent(%s);" % (DOC % (SINK, ":n")),
    "pgmq": "SELECT pgmq.send('bench_q', bench.order_payload(:n));",
    "pgq": "SELECT pgq.insert_event('bench_pgq', 'intent.order.process.v1', bench.order_payload(:n)::text);",
}
SEND100 = {
    "floor": "INSERT INTO bench.floor_intents (intent_id, agent_id, intent_type, to_agent, sender_role,"
             " correlation_id, payload, status, max_delivery_attempts, due_at)"
             " SELECT gen_random_uuid(), 1, 'intent.order.process.v1', '%s', current_user::text::regrole,"
             " gen_random_uuid(), bench.order_payload(:n + g), 'SUBMITTED', 5, now()"
             " FROM generate_series(1, 100) g;" % SINK,
    "axme send_intents": "SELECT count(*) FROM axme.send_intents(ARRAY(SELECT %s FROM generate_series(1, 100) g));"
                         % (DOC % (SINK, ":n + g")),
    "axme send_intent x100": "SELECT count(axme.send_intent(%s)) FROM generate_series(1, 100) g;"
                             % (DOC % (SINK, ":n + g")),
    "pgmq": "SELECT count(*) FROM pgmq.send_batch('bench_q', ARRAY(SELECT bench.order_payload(:n + g) FROM generate_series(1, 100) g));",
    "pgq": "SELECT count(pgq.insert_event('bench_pgq', 'intent.order.process.v1', bench.order_payload(:n + g)::text))"
           " FROM generate_series(1, 100) g;",
}

# axme.complete as it was in 0.3.0 (three statements and three PL/pgSQL calls), for the ratio.
COMPLETE_OLD = """
CREATE OR REPLACE FUNCTION bench.complete_0_3(intent_id uuid, result jsonb DEFAULT '{}', attempt integer DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i axme.intents := axme._lock_intent(intent_id, attempt);
BEGIN
    i.result := result;
    PERFORM axme._transition(i, 'COMPLETED', 'intent.completed', jsonb_build_object('attempt', i.attempt));
END $$;
-- n completes, each its own transaction, timed inside the server (no client round trip); the
-- caller claimed them first.  Returns microseconds per call, commit included.
CREATE OR REPLACE FUNCTION bench.claimed(n integer, OUT ids uuid[], OUT atts integer[]) LANGUAGE sql AS $$
    SELECT array_agg(intent_id), array_agg(attempt) FROM axme.poll('agent://bench/perf/worker', n, '10 minutes')
$$;
CREATE OR REPLACE PROCEDURE bench.complete_each_new(ids uuid[], atts integer[], INOUT us double precision DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    FOR k IN 1 .. cardinality(ids) LOOP
        PERFORM axme.complete(ids[k], '{}', atts[k]);
        COMMIT;
    END LOOP;
    us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / cardinality(ids);
END $$;
CREATE OR REPLACE PROCEDURE bench.complete_each_old(ids uuid[], atts integer[], INOUT us double precision DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    FOR k IN 1 .. cardinality(ids) LOOP
        PERFORM bench.complete_0_3(ids[k], '{}', atts[k]);
        COMMIT;
    END LOOP;
    us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / cardinality(ids);
END $$;
"""


def connect():
    c = psycopg2.connect(dbname=os.environ.get("PGDATABASE", "postgres"))
    c.autocommit = True
    return c


def q(c, sql, args=None):
    with c.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def wanted(name):
    return ONLY is None or __import__("re").search(ONLY, name)


def pgbench(script, clients, rows_per_tx):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("\\set n random(1, 1000000000)\n" + script + "\n")
        path = f.name
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-T", str(SECONDS), "-c", str(clients),
                          "-j", str(clients), "-f", path], capture_output=True, text=True)
    os.unlink(path)
    for line in out.stdout.splitlines():
        if line.startswith("tps"):
            return float(line.split()[2]) * rows_per_tx
    raise RuntimeError("pgbench failed: " + out.stderr[-2000:])


def setup(c, have_pgmq):
    subprocess.run(["psql", "-qX", "-f", os.path.join(HERE, "sql", "setup.sql")], check=True,
                   stdout=subprocess.DEVNULL)
    q(c, "SELECT pgq.create_queue('bench_pgq')")
    q(c, COMPLETE_OLD)
    if have_pgmq:
        q(c, "CREATE EXTENSION IF NOT EXISTS pgmq")
        q(c, "SELECT pgmq.create('bench_q')")
        q(c, "SELECT pgmq.create('bench_c')")


def reset_tables(c, have_pgmq):
    """Empty what the send rows filled, so every round starts alike."""
    q(c, "TRUNCATE bench.floor_intents")
    q(c, "SELECT axme._delete_intents(ARRAY(SELECT intent_id FROM axme.intents))")
    q(c, "TRUNCATE axme.idempotency_keys")
    if have_pgmq:
        q(c, "SELECT pgmq.purge_queue('bench_q')")
        q(c, "SELECT pgmq.purge_queue('bench_c')")
    q(c, "VACUUM ANALYZE")


def prefill_axme(c, n, agent=WORKER):
    for i in range(0, n, 1000):
        q(c, "SELECT count(*) FROM axme.send_intents(ARRAY(SELECT %s FROM generate_series(%%s, %%s) g))"
          % (DOC % (agent, "g")), (i + 1, min(n, i + 1000)))


def consume_axme(c):
    with c.cursor() as cur:
        cur.execute("PREPARE claim AS SELECT intent_id, attempt FROM axme.poll($1, 100, interval '5 minutes')")
        cur.execute("PREPARE done(uuid[], int[]) AS SELECT count(*) FROM axme.complete_many($1, $2)")
        n = 0
        t0 = time.perf_counter()
        while True:
            cur.execute("EXECUTE claim(%s)", (WORKER,))
            rows = cur.fetchall()
            if not rows:
                break
            cur.execute("EXECUTE done(%s::uuid[], %s::int[])", ([r[0] for r in rows], [r[1] for r in rows]))
            n += len(rows)
        dt = time.perf_counter() - t0
        cur.execute("DEALLOCATE ALL")
    return n / dt


def consume_pgmq(c, how):
    with c.cursor() as cur:
        cur.execute("PREPARE claim AS SELECT msg_id FROM pgmq.read('bench_c', 300, 100)")
        cur.execute("PREPARE done(bigint[]) AS SELECT count(*) FROM pgmq.%s('bench_c', $1)" % how)
        n = 0
        t0 = time.perf_counter()
        while True:
            cur.execute("EXECUTE claim")
            rows = cur.fetchall()
            if not rows:
                break
            cur.execute("EXECUTE done(%s::bigint[])", ([r[0] for r in rows],))
            n += len(rows)
        dt = time.perf_counter() - t0
        cur.execute("DEALLOCATE ALL")
    return n / dt


def complete_each(c, which):
    """µs per complete, one per transaction, receipts passed, timed in the server (a PL/pgSQL
    procedure loop with COMMIT after each call: no client round trip in the figure)."""
    prefill_axme(c, COMPLETE_N)
    ids, atts = q(c, "SELECT * FROM bench.claimed(%s)", (COMPLETE_N,))[0]
    return q(c, "CALL bench.complete_each_%s(%%s::uuid[], %%s::int[])" % which, (ids, atts))[0][0]


def wal_lifecycles(c, system):
    """WAL bytes per lifecycle: send -> claim -> complete, 100 per transaction, WAL_N of them."""
    q(c, "CHECKPOINT")
    lsn0 = q(c, "SELECT pg_current_wal_lsn()")[0][0]
    if system == "axme":
        for i in range(0, WAL_N, 100):
            q(c, "SELECT count(*) FROM axme.send_intents(ARRAY(SELECT %s FROM generate_series(%%s, %%s) g))"
              % (DOC % (WORKER, "g")), (i + 1, i + 100))
        while True:
            r = q(c, "SELECT intent_id, attempt FROM axme.poll(%s, 100)", (WORKER,))
            if not r:
                break
            q(c, "SELECT count(*) FROM axme.complete_many(%s::uuid[], %s::int[])",
              ([x[0] for x in r], [x[1] for x in r]))
    elif system == "pgmq":
        for i in range(0, WAL_N, 100):
            q(c, "SELECT count(*) FROM pgmq.send_batch('bench_c', ARRAY(SELECT bench.order_payload(g) FROM generate_series(%s, %s) g))",
              (i + 1, i + 100))
        while True:
            r = q(c, "SELECT msg_id FROM pgmq.read('bench_c', 300, 100)")
            if not r:
                break
            q(c, "SELECT count(*) FROM pgmq.archive('bench_c', %s::bigint[])", ([x[0] for x in r],))
    elif system == "pgq":
        q(c, "SELECT pgq.register_consumer('bench_pgq', 'walc')")
        q(c, "SELECT pgq.ticker('bench_pgq')")
        for i in range(0, WAL_N, 100):
            q(c, "SELECT count(pgq.insert_event('bench_pgq', 'intent.order.process.v1', bench.order_payload(g)::text))"
                 " FROM generate_series(%s, %s) g", (i + 1, i + 100))
            q(c, "SELECT pgq.force_tick('bench_pgq')")
            q(c, "SELECT pgq.ticker('bench_pgq')")
        while True:
            b = q(c, "SELECT pgq.next_batch('bench_pgq', 'walc')")[0][0]
            if b is None:
                break
            q(c, "SELECT count(*) FROM pgq.get_batch_events(%s)", (b,))
            q(c, "SELECT pgq.finish_batch(%s)", (b,))
        q(c, "SELECT pgq.unregister_consumer('bench_pgq', 'walc')")
    elif system == "floor":
        for i in range(0, WAL_N, 100):
            q(c, "INSERT INTO bench.lease_queue (message) SELECT bench.order_payload(g) FROM generate_series(%s, %s) g",
              (i + 1, i + 100))
        while True:
            r = q(c, "UPDATE bench.lease_queue SET vt = now() + interval '5 minutes', read_ct = read_ct + 1"
                     " WHERE msg_id IN (SELECT msg_id FROM bench.lease_queue WHERE vt <= now() ORDER BY msg_id"
                     " LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING msg_id")
            if not r:
                break
            q(c, "DELETE FROM bench.lease_queue WHERE msg_id = ANY(%s::bigint[])", ([x[0] for x in r],))
    lsn1 = q(c, "SELECT pg_current_wal_lsn()")[0][0]
    return q(c, "SELECT pg_wal_lsn_diff(%s, %s)", (lsn1, lsn0))[0][0] / WAL_N


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, unit=""):
    if v is None:
        return "—"
    v = float(v)
    return ("{:,.0f}".format(v) if v >= 100 else "{:,.1f}".format(v)) + unit


def main():
    c = connect()
    have_pgmq = bool(q(c, "SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'"))
    if not have_pgmq:
        print("pgmq is not installed: its columns are skipped (bench/README.md says how to build it)")
    setup(c, have_pgmq)
    settings = {k: q(c, "SELECT current_setting(%s)", (k,))[0][0]
                for k in ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers")}
    versions = {
        "server": q(c, "SELECT version()")[0][0],
        "axme": q(c, "SELECT extversion FROM pg_extension WHERE extname = 'axme'")[0][0],
        "pgq": q(c, "SELECT extversion FROM pg_extension WHERE extname = 'pgq'")[0][0],
        "pgmq": have_pgmq and q(c, "SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")[0][0],
    }
    res = {}

    def add(key, v):
        v = float(v)
        res.setdefault(key, []).append(v)
        print("  %-50s %s" % (key, fmt(v)), flush=True)

    t_start = time.time()
    for rnd in range(ROUNDS):
        print("round %d" % (rnd + 1), flush=True)
        reset_tables(c, have_pgmq)
        for clients in (1, 4):
            for name, script in SEND1.items():
                if name == "pgmq" and not have_pgmq:
                    continue
                key = "send1 %s %d" % (name, clients)
                if wanted(key):
                    add(key, pgbench(script, clients, 1))
            for name, script in SEND100.items():
                if name == "pgmq" and not have_pgmq:
                    continue
                key = "send100 %s %d" % (name, clients)
                if wanted(key):
                    add(key, pgbench(script, clients, 100))
        reset_tables(c, have_pgmq)
        if wanted("consume axme"):
            prefill_axme(c, CONSUME_N)
            q(c, "VACUUM ANALYZE axme.intents")
            add("consume axme", consume_axme(c))
        if have_pgmq:
            for how in ("archive", "delete"):
                if wanted("consume pgmq " + how):
                    for i in range(0, CONSUME_N, 1000):
                        q(c, "SELECT count(*) FROM pgmq.send_batch('bench_c', ARRAY(SELECT bench.order_payload(g) FROM generate_series(%s, %s) g))",
                          (i + 1, min(CONSUME_N, i + 1000)))
                    q(c, "VACUUM ANALYZE")
                    add("consume pgmq " + how, consume_pgmq(c, how))
        if wanted("complete"):
            add("complete us axme.complete", complete_each(c, "new"))
            add("complete us 0.3.0 complete", complete_each(c, "old"))
    reset_tables(c, have_pgmq)
    for system in ("floor", "axme", "pgmq", "pgq"):
        if system == "pgmq" and not have_pgmq:
            continue
        if wanted("wal " + system):
            add("wal " + system, wal_lifecycles(c, system))
    if wanted("fsync"):
        q(c, "ALTER SYSTEM SET fsync = on")
        q(c, "SELECT pg_reload_conf()")
        time.sleep(1)
        for name in ("floor", "axme", "pgmq", "pgq"):
            if name == "pgmq" and not have_pgmq:
                continue
            add("fsync=on send1 %s 1" % name, pgbench(SEND1[name], 1, 1))
        q(c, "ALTER SYSTEM RESET fsync")
        q(c, "SELECT pg_reload_conf()")
    elapsed = time.time() - t_start

    m = {k: med(v) for k, v in res.items()}
    json.dump({"settings": settings, "versions": versions, "raw": res, "median": m,
               "seconds": SECONDS, "rounds": ROUNDS, "consume_n": CONSUME_N, "elapsed": elapsed,
               "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              open(os.path.join(HERE, "peers.json"), "w"), indent=1, default=str)
    write_md(m, res, settings, versions, have_pgmq, elapsed)


def write_md(m, res, settings, versions, have_pgmq, elapsed):
    def g(k):
        return m.get(k)

    def rng(k):
        v = res.get(k)
        return " (%s–%s)" % (fmt(min(map(float, v))), fmt(max(map(float, v)))) if v and len(v) > 1 else ""

    def ratio(a, b):
        return "%.2f" % (float(a) / float(b)) if a and b else "—"

    def rr(num, dens):
        """Median over rounds of num / (the best of dens in the same round)."""
        xs = []
        for i, v in enumerate(res.get(num, [])):
            best = max([float(res[d][i]) for d in dens if d in res and i < len(res[d])] or [0])
            if best:
                xs.append(float(v) / best)
        return "%.2f" % med(xs) if xs else "—"

    L = []
    L.append("# axme next to its peers\n")
    L.append("Generated by `bash bench/run.sh peers` on %s (%.0f minutes): %d interleaved rounds, "
             "pgbench runs of %d s, medians (range over rounds in parentheses). **fsync=%s**, "
             "synchronous_commit=%s, full_page_writes=%s, wal_level=%s, shared_buffers=%s; a "
             "throwaway cluster on a shared 2-core machine, clients on the same cores. %s; axme %s; "
             "PgQ %s; pgmq %s. Payload: `bench.order_payload` (~110 bytes of JSON).\n"
             % (GENERATED or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), elapsed / 60, ROUNDS, SECONDS,
                settings["fsync"], settings["synchronous_commit"], settings["full_page_writes"],
                settings["wal_level"], settings["shared_buffers"], versions["server"].split(" on ")[0],
                versions["axme"], versions["pgq"],
                versions["pgmq"] or "not installed (skipped; see bench/README.md)"))
    L.append("| work | floor (bare INSERT) | axme | pgmq | PgQ | axme / best peer |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for clients in (1, 4):
        a, p, k = g("send1 axme %d" % clients), g("send1 pgmq %d" % clients), g("send1 pgq %d" % clients)
        L.append("| send, 1 per transaction, %d client%s | %s | **%s**%s | %s | %s | **%s** |" % (
            clients, "s" if clients > 1 else "", fmt(g("send1 floor %d" % clients)), fmt(a),
            rng("send1 axme %d" % clients), fmt(p), fmt(k),
            rr("send1 axme %d" % clients, ["send1 pgmq %d" % clients, "send1 pgq %d" % clients])))
    for clients in (1, 4):
        a, p, k = (g("send100 axme send_intents %d" % clients), g("send100 pgmq %d" % clients),
                   g("send100 pgq %d" % clients))
        peers = ["send100 pgmq %d" % clients, "send100 pgq %d" % clients]
        L.append("| send 100 in one statement, %d client%s (axme `send_intents`; pgmq `send_batch`; PgQ 100 × `insert_event`) | %s | **%s**%s | %s | %s | **%s** |" % (
            clients, "s" if clients > 1 else "", fmt(g("send100 floor %d" % clients)), fmt(a),
            rng("send100 axme send_intents %d" % clients), fmt(p), fmt(k),
            rr("send100 axme send_intents %d" % clients, peers)))
        L.append("| … the same with 100 × axme `send_intent` (before `send_intents`) | | %s | | | %s |" % (
            fmt(g("send100 axme send_intent x100 %d" % clients)),
            rr("send100 axme send_intent x100 %d" % clients, peers)))
    a = g("consume axme")
    pa, pd = g("consume pgmq archive"), g("consume pgmq delete")
    L.append("| consume %s prefilled, 1 consumer: axme `poll` 100 + `complete_many` (receipts); pgmq `read` 100 + `archive` / `delete` | — | **%s**%s | %s / %s | — | **%s** (vs archive) |" % (
        "{:,}".format(CONSUME_N), fmt(a), rng("consume axme"), fmt(pa), fmt(pd),
        rr("consume axme", ["consume pgmq archive"])))
    L.append("")
    new, old = g("complete us axme.complete"), g("complete us 0.3.0 complete")
    L.append("**One `complete` per transaction** (receipt passed, %d intents per round, timed inside the "
             "server with a COMMIT after each call): %s µs per call against %s µs for 0.3.0's `complete` "
             "in the same run: **%s ×** faster (median of the rounds' ratios; target 3 ×)."
             % (COMPLETE_N, fmt(new), fmt(old), rr("complete us 0.3.0 complete", ["complete us axme.complete"])))
    L.append("")
    L.append("**WAL bytes per lifecycle** (send → claim → complete, 100 per transaction, %s lifecycles "
             "after a CHECKPOINT, the same settings for every system; `pg_wal_lsn_diff`):\n" % "{:,}".format(WAL_N))
    L.append("| floor (lease table: INSERT, UPDATE … SKIP LOCKED, DELETE) | axme (send_intents, poll, complete_many) | pgmq (send_batch, read, archive) | PgQ (insert_event, next_batch, finish_batch) | axme / pgmq |")
    L.append("|---:|---:|---:|---:|---:|")
    L.append("| %s | **%s** | %s | %s | **%s** |" % (fmt(g("wal floor")), fmt(g("wal axme")), fmt(g("wal pgmq")),
                                                     fmt(g("wal pgq")), ratio(g("wal axme"), g("wal pgmq"))))
    L.append("")
    L.append("**With fsync=on** (send, 1 per transaction, 1 client; every commit waits for its WAL flush): "
             "floor %s/s, axme %s/s, pgmq %s/s, PgQ %s/s.\n" % (
                 fmt(g("fsync=on send1 floor 1")), fmt(g("fsync=on send1 axme 1")),
                 fmt(g("fsync=on send1 pgmq 1")), fmt(g("fsync=on send1 pgq 1"))))
    L.append("Ratios are medians over rounds of axme's figure divided by the best peer's in the same "
             "round. Raw per-round figures: `bench/peers.json`.\n")
    open(os.path.join(HERE, "PEERS.md"), "w").write("\n".join(L))
    print("\n".join(L))


def report():
    """Rewrite PEERS.md from peers.json (after a change to the report only)."""
    d = json.load(open(os.path.join(HERE, "peers.json")))
    global ROUNDS, SECONDS, CONSUME_N
    global GENERATED
    ROUNDS, SECONDS, CONSUME_N = d["rounds"], d["seconds"], d["consume_n"]
    GENERATED = d.get("generated", "2026-12-04 18:52 UTC")
    write_md(d["median"], d["raw"], d["settings"], d["versions"], bool(d["versions"].get("pgmq")),
             d.get("elapsed", 0))


if __name__ == "__main__":
    sys.exit(report() if sys.argv[1:] == ["--report"] else main())
