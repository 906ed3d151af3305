"""http delivery benchmark: axme vs nginx's ceiling (wrk) vs a hand-written Python sender.

Run through bench/http/run.sh.  Prints a markdown table.  The cluster runs with fsync=off (the
numbers measure axme, not the disk); every delivery is still committed and recorded.
"""
import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "http"))
from cluster import Cluster  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NGINX_DIR = "/tmp/axme_bench_nginx"
PORT = 18088
N = 20000


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def start_nginx():
    os.makedirs(NGINX_DIR, exist_ok=True)
    stop_nginx()
    for f in ("latency.log",):
        try:
            os.remove(os.path.join(NGINX_DIR, f))
        except OSError:
            pass
    subprocess.run(["nginx", "-c", os.path.join(HERE, "nginx.conf")], check=True)
    time.sleep(0.3)


def stop_nginx():
    try:
        with open(os.path.join(NGINX_DIR, "nginx.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 15)
        time.sleep(0.3)
    except (OSError, ValueError):
        pass


def wrk_ceiling():
    out = subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-s", os.path.join(HERE, "post.lua"),
                          "http://127.0.0.1:%d/" % PORT], capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(m.group(1)) if m else None


CPU_SPLIT = []


def cpu_ticks(pid):
    """utime + stime of a process in clock ticks (0 when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def server_cpu(db):
    """{pid: ticks} of every server process pg_stat_activity lists, and the http worker's pid."""
    rows = q(db, "SELECT pid, backend_type FROM pg_stat_activity")
    worker = [r[0] for r in rows if r[1] == "axme worker"]
    return {r[0]: cpu_ticks(r[0]) for r in rows}, (worker[0] if worker else None)


def axme_throughput(db, n):
    addr = "agent://acme/bench/nginx"
    q(db, "SELECT axme.register_agent(%s, 'http', %s, '{\"max_in_flight\": 256}')",
      (addr, "http://127.0.0.1:%d/throughput" % PORT))
    db.autocommit = False
    t_send = time.time()
    q(db, """SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.v1',
                 'to_agent', %s, 'payload', jsonb_build_object('n', g))))
             FROM generate_series(1, %s) g""", (addr, n))
    cpu0, worker = server_cpu(db)
    perf = None
    if os.environ.get("BENCH_PERF") and worker:
        # BENCH_PERF=file: perf record of the http worker during the first 2 s of delivery
        perf = subprocess.Popen(["perf", "record", "-g", "-p", str(worker), "-o", os.environ["BENCH_PERF"],
                                 "--", "sleep", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    db.commit()
    t_commit = time.time()
    db.autocommit = True
    end = time.time() + 600
    while time.time() < end:
        done = q(db, "SELECT count(*) FROM axme.intents WHERE to_agent = %s AND status = 'COMPLETED'", (addr,))[0][0]
        if done >= n:
            break
        time.sleep(0.05)
    last = q(db, "SELECT extract(epoch FROM max(updated_at)) FROM axme.intents WHERE to_agent = %s", (addr,))[0][0]
    cpu1, _ = server_cpu(db)
    if perf:
        perf.wait()
    # CPU per delivery from the commit to the end: the http worker, and every other server process
    # (backends, walwriter, checkpointer, autovacuum ...; this polling session included)
    hz = os.sysconf("SC_CLK_TCK")
    w = (cpu1.get(worker, 0) - cpu0.get(worker, 0)) if worker else 0
    rest = sum(cpu1[p] - cpu0.get(p, 0) for p in cpu1 if p != worker)
    CPU_SPLIT[:] = [w / hz / n * 1e6, rest / hz / n * 1e6]
    attempts = q(db, "SELECT count(*) FROM axme.delivery_attempts a JOIN axme.agents g USING (agent_id) WHERE g.address = %s", (addr,))[0][0]
    return n / (float(last) - t_commit), float(last) - t_commit, attempts, t_commit - t_send


def axme_latency(db, count=300):
    addr = "agent://acme/bench/latency"
    q(db, "SELECT axme.register_agent(%s, 'http', %s, '{}')", (addr, "http://127.0.0.1:%d/latency" % PORT))
    committed = {}
    for i in range(count):
        db.autocommit = False
        iid = q(db, "SELECT axme.send_intent(%s)", (json.dumps(
            {"intent_type": "intent.bench.v1", "to_agent": addr, "payload": {"i": i}}),))[0][0]
        db.commit()
        committed[iid] = time.time()
        db.autocommit = True
        time.sleep(0.02)
    time.sleep(1)
    lat = []
    with open(os.path.join(NGINX_DIR, "latency.log")) as f:
        for line in f:
            t, wid = line.split()
            if wid in committed:
                lat.append((float(t) - committed[wid]) * 1000)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1], len(lat)


def python_sender(n, threads):
    secret = base64.b64decode(base64.b64encode(os.urandom(32)))
    local = threading.local()

    def conn():
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=15)
        return local.c

    def deliver(i):
        body = json.dumps({"intent_id": str(uuid.uuid4()), "intent_type": "intent.bench.v1",
                           "payload": {"n": i}}).encode()
        mid = str(uuid.uuid4())
        for attempt in range(5):
            ts = str(int(time.time()))
            sig = base64.b64encode(hmac.new(secret, ("%s.%s." % (mid, ts)).encode() + body,
                                            hashlib.sha256).digest()).decode()
            try:
                c = conn()
                c.request("POST", "/python", body, {"content-type": "application/json",
                                                    "webhook-id": mid, "webhook-timestamp": ts,
                                                    "webhook-signature": "v1," + sig})
                r = c.getresponse()
                r.read()
                if 200 <= r.status < 300:
                    return True
            except (OSError, http.client.HTTPException):
                local.__dict__.pop("c", None)
            time.sleep(0.1 * 2 ** attempt)
        return False

    t0 = time.time()
    if threads == 1:
        ok = sum(deliver(i) for i in range(n))
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            ok = sum(ex.map(deliver, range(n), chunksize=64))
    return ok / (time.time() - t0)


def worker_rss_kb(admin, dbname):
    rows = q(admin, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'axme delivery worker' AND datname = %s", (dbname,))
    if not rows:
        return None
    with open("/proc/%d/status" % rows[0][0]) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return None


def backlog(db, admin, n, outage_s):
    """n intents sent while the receiver is down for outage_s seconds, then drained."""
    addr = "agent://acme/bench/backlog"
    cap = 64
    q(db, "SELECT axme.register_agent(%s, 'http', %s, %s)",
      (addr, "http://127.0.0.1:%d/backlog" % PORT,
       json.dumps({"max_in_flight": cap, "timeout_ms": 5000,
                   "retry": {"max_attempts": 100, "base_delay_ms": 2000, "max_delay_ms": 30000}})))
    agent_id = q(db, "SELECT agent_id FROM axme.agents WHERE address = %s", (addr,))[0][0]
    rss_before = worker_rss_kb(admin, "axbench")
    peak = [0]
    stop = threading.Event()
    mon = cluster_conn[0]("axbench")

    def monitor():
        while not stop.is_set():
            v = q(mon, """SELECT count(*) FROM axme.intents WHERE agent_id = %s AND status = 'DELIVERED'
                          AND lease_until IS NOT NULL""", (agent_id,))[0][0]
            peak[0] = max(peak[0], v)
            time.sleep(0.05)

    th = threading.Thread(target=monitor, daemon=True)
    th.start()
    stop_nginx()
    t_down = time.time()
    db.autocommit = False
    for start in range(0, n, 5000):
        q(db, """SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.v1',
                     'to_agent', %s, 'payload', jsonb_build_object('n', g))))
                 FROM generate_series(%s, %s) g""", (addr, start + 1, min(n, start + 5000)))
        db.commit()
    db.autocommit = True
    time.sleep(max(0, outage_s - (time.time() - t_down)))
    failed_attempts = q(db, "SELECT count(*) FROM axme.delivery_attempts WHERE agent_id = %s", (agent_id,))[0][0]
    start_nginx()
    t_up = time.time()
    end = t_up + 900
    while time.time() < end:
        done = q(db, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND status = 'COMPLETED'", (agent_id,))[0][0]
        if done >= n:
            break
        time.sleep(0.2)
    stop.set()
    th.join()
    last = float(q(db, "SELECT extract(epoch FROM max(updated_at)) FROM axme.intents WHERE agent_id = %s",
                   (agent_id,))[0][0])
    dead = q(db, "SELECT count(*) FROM axme.intents WHERE agent_id = %s AND status <> 'COMPLETED'", (agent_id,))[0][0]
    return {"drain_s": last - t_up, "rate": n / (last - t_up), "peak": peak[0], "cap": cap,
            "rss_before": rss_before, "rss_after": worker_rss_kb(admin, "axbench"),
            "failed_attempts": failed_attempts, "not_completed": dead}


cluster_conn = [None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--port", type=int, default=5495)
    ap.add_argument("-n", type=int, default=N)
    ap.add_argument("--backlog", type=int, default=0, metavar="SECONDS",
                    help="also build a 50,000-intent backlog during a receiver outage this long, then drain it")
    ap.add_argument("--backlog-n", type=int, default=50000)
    args = ap.parse_args()

    start_nginx()
    cluster = Cluster(args.bindir, args.port, extra_conf="shared_buffers = 256MB\nmax_wal_size = 4GB\n")
    try:
        cluster.start()
        admin = cluster.connect("postgres")
        q(admin, "CREATE DATABASE axbench")
        db = cluster.connect("axbench")
        q(db, "CREATE EXTENSION axme")
        time.sleep(1.5)
        ceiling = wrk_ceiling()
        rate, secs, attempts, send_s = axme_throughput(db, args.n)
        p50, p99, nlat = axme_latency(db)
        py1 = python_sender(args.n, 1)
        py16 = python_sender(args.n, 16)
        cluster_conn[0] = cluster.connect
        bl = backlog(db, admin, args.backlog_n, args.backlog) if args.backlog else None
        rss = q(admin, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'axme delivery worker' AND datname = 'axbench'")
        rss_kb = None
        if rss:
            with open("/proc/%d/status" % rss[0][0]) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        rss_kb = int(line.split()[1])
        print("| what | result |")
        print("|---|---|")
        print("| nginx ceiling (wrk -t2 -c64, POST) | %.0f requests/s |" % ceiling)
        print("| axme: %d intents, commit -> last recorded delivery | %.0f deliveries/s (%.2f s, %d attempt rows; sending them took %.2f s) |"
              % (args.n, rate, secs, attempts, send_s))
        if CPU_SPLIT:
            print("| axme: CPU per delivery from the commit to the last record | http worker %.0f µs, the rest of PostgreSQL %.0f µs |"
                  % tuple(CPU_SPLIT))
        print("| axme: commit -> receiver latency, idle (%d sends) | p50 %.1f ms, p99 %.1f ms |" % (nlat, p50, p99))
        print("| hand-written Python sender, 1 keep-alive connection | %.0f requests/s |" % py1)
        print("| hand-written Python sender, 16 threads | %.0f requests/s |" % py16)
        print("| axme delivery worker private memory (RssAnon) after the run | %s kB |" % rss_kb)
        if bl:
            print("| backlog: %d intents sent during a %d s receiver outage (%d failed attempts meanwhile), drained after it | %.0f deliveries/s (%.1f s); peak in flight %d (cap %d); %d not completed |"
                  % (args.backlog_n, args.backlog, bl["failed_attempts"], bl["rate"], bl["drain_s"], bl["peak"], bl["cap"], bl["not_completed"]))
            print("| axme delivery worker private memory (RssAnon) before / after the backlog | %s kB / %s kB |" % (bl["rss_before"], bl["rss_after"]))
        print("\n(fsync=off; 2-core machine shared with other work; nginx, PostgreSQL and the senders on one host)")
    finally:
        cluster.destroy()
        stop_nginx()


if __name__ == "__main__":
    main()
