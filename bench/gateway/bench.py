"""axme-gateway benchmark: POST /v1/intents and SSE wake-up latency through the gateway, against
the same work in SQL (ratios).  Run inside a throwaway cluster: bench/gateway/run.sh.

1. send: N intents, C concurrent clients, each with one kept-alive connection:
   SQL      psycopg2, `SELECT axme.send_intent(%s)` in autocommit (one transaction each), as shop
   gateway  http.client, POST /v1/intents (the gateway runs BEGIN; SET LOCAL ROLE shop; send; COMMIT)
2. wake-up: the time from the commit of a change to its announcement reaching a waiting client,
   M samples:
   SQL      LISTEN on a stream agent's channel; the sender's commit -> the NOTIFY arrives
   gateway  an intent's SSE stream; a receiver's commit (ack) -> the event arrives
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.extensions

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BINARY = os.path.join(ROOT, "gateway", "axme-gateway")
AGENT = "agent://bench/prod/orders"
STREAM_AGENT = "agent://bench/prod/streamer"
WAKE_AGENT = "agent://bench/prod/wake"


def psql(sql):
    r = subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], input=sql,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def setup():
    psql("""
CREATE EXTENSION IF NOT EXISTS axme;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gw') THEN
    CREATE ROLE gw LOGIN NOINHERIT PASSWORD 'gw'; GRANT axme_gateway TO gw;
    CREATE ROLE shop LOGIN PASSWORD 'shop'; GRANT axme_sender TO shop; GRANT shop TO gw;
    CREATE ROLE rx LOGIN PASSWORD 'rx'; GRANT axme_agent TO rx; GRANT rx TO gw;
  END IF; END $$;
SELECT axme.register_agent('%s', 'poll', NULL, '{"db_role": "rx"}');
SELECT axme.register_agent('%s', 'stream', NULL, '{"db_role": "rx"}');
SELECT axme.register_agent('%s', 'poll', NULL, '{"db_role": "rx"}');
""" % (AGENT, STREAM_AGENT, WAKE_AGENT))
    return {"shop": psql("SELECT axme.create_api_key('shop', 'bench')"),
            "rx": psql("SELECT axme.create_api_key('rx', 'bench')")}


def dsn(user):
    return "host=127.0.0.1 port=%s dbname=postgres user=%s password=%s" % (os.environ.get("PGPORT", "5432"), user, user)


def doc(i):
    return json.dumps({"intent_type": "intent.order.process.v1", "to_agent": AGENT, "payload": {"n": i}})


def run_clients(c, n, work):
    """n operations over c threads; returns (seconds, sorted latencies in ms)."""
    lat = []
    lock = threading.Lock()
    per = n // c

    def client(k):
        mine = []
        op = work(k)
        for i in range(per):
            t0 = time.perf_counter()
            op(k * per + i)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sorted(lat)


def sql_sender(k):
    conn = psycopg2.connect(dsn("shop"))
    conn.autocommit = True
    cur = conn.cursor()

    def op(i):
        cur.execute("SELECT axme.send_intent(%s)", (doc(i),))
        cur.fetchone()
    return op


def http_sender(port, key):
    def make(k):
        c = http.client.HTTPConnection("127.0.0.1", port)

        def op(i):
            c.request("POST", "/v1/intents", body=doc(i), headers={"x-api-key": key, "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        return op
    return make


def pct(lat, p):
    return lat[min(len(lat) - 1, int(len(lat) * p))]


def wake_sql(m):
    """LISTEN on a stream agent's channel; time from the sender's commit to the NOTIFY."""
    lconn = psycopg2.connect(dsn("rx"))
    lconn.autocommit = True
    lc = lconn.cursor()
    lc.execute("SELECT axme.channel(%s)", (STREAM_AGENT,))
    lc.execute("LISTEN %s" % lc.fetchone()[0])
    sconn = psycopg2.connect(dsn("shop"))
    sc = sconn.cursor()
    out = []
    import select
    for i in range(m):
        sc.execute("SELECT axme.send_intent(%s)", (json.dumps({"intent_type": "intent.a.v1", "to_agent": STREAM_AGENT, "payload": {}}),))
        t0 = time.perf_counter()
        sconn.commit()
        while True:
            if select.select([lconn], [], [], 5) == ([], [], []):
                raise RuntimeError("no NOTIFY")
            lconn.poll()
            if lconn.notifies:
                lconn.notifies.clear()
                break
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    lconn.close()
    sconn.close()
    return sorted(out)


def wake_gateway(m, port, keys):
    """An intent's SSE stream; time from a receiver's commit (ack) to the event on the stream."""
    rconn = psycopg2.connect(dsn("rx"))
    rc = rconn.cursor()
    out = []
    for i in range(m):
        c = http.client.HTTPConnection("127.0.0.1", port)
        body = json.dumps({"intent_type": "intent.a.v1", "to_agent": WAKE_AGENT, "payload": {}})
        c.request("POST", "/v1/intents", body=body, headers={"x-api-key": keys["shop"], "Content-Type": "application/json"})
        iid = json.loads(c.getresponse().read())["intent_id"]
        c.close()
        rc.execute("SELECT intent_id, attempt FROM axme.poll(%s, 10)", (WAKE_AGENT,))
        attempts = {str(r[0]): r[1] for r in rc.fetchall()}
        rconn.commit()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(("GET /v1/intents/%s/events/stream?since=3&wait_seconds=10 HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n\r\n"
                   % (iid, keys["shop"])).encode())
        buf = b""
        while b"retry: 2000" not in buf:
            buf += s.recv(65536)
        time.sleep(0.01)        # the stream is suspended and waiting
        rc.execute("SELECT axme.ack(%s, %s)", (iid, attempts.get(iid, 1)))
        t0 = time.perf_counter()
        rconn.commit()
        while b"intent.acknowledged" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("stream closed")
            buf += chunk
        out.append((time.perf_counter() - t0) * 1000)
        s.close()
    rconn.close()
    return sorted(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=4000, help="intents sent per side")
    ap.add_argument("-c", type=int, default=8, help="concurrent clients")
    ap.add_argument("-m", type=int, default=200, help="wake-up samples per side")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    a = ap.parse_args()
    keys = setup()
    res = {"n": a.n, "c": a.c, "m": a.m}

    def send_case(name, work):
        run_clients(a.c, a.c * 20, work)                 # warm-up
        secs, lat = run_clients(a.c, a.n, work)
        res["send_" + name] = {"per_s": round(a.n / secs), "p50_ms": round(pct(lat, 0.5), 2),
                               "p99_ms": round(pct(lat, 0.99), 2)}

    # the send path's cost of the change channel: no gateway listening (the triggers read one
    # small table and return) against the runs below, where a listener is registered and every
    # send NOTIFYs axme_changes at commit
    send_case("sql_no_gateway", sql_sender)
    port = int(subprocess.check_output([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]))
    gw = subprocess.Popen([BINARY, "--dsn", dsn("gw"), "--listen", "127.0.0.1:%d" % port, "--quiet",
                           "--pool-size", str(a.c)], stderr=open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "axme-bench-gateway.log"), "w"))
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    try:
        send_case("sql", sql_sender)
        send_case("gateway", http_sender(port, keys["shop"]))
        for name, fn in (("sql", lambda: wake_sql(a.m)), ("gateway", lambda: wake_gateway(a.m, port, keys))):
            lat = fn()
            res["wake_" + name] = {"p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
                                   "max_ms": round(lat[-1], 2)}
        res["ratio_send_sql_listening_over_not"] = round(res["send_sql"]["per_s"] / res["send_sql_no_gateway"]["per_s"], 2)
        res["ratio_send_throughput_gateway_over_sql"] = round(res["send_gateway"]["per_s"] / res["send_sql"]["per_s"], 2)
        res["ratio_send_p50_gateway_over_sql"] = round(res["send_gateway"]["p50_ms"] / res["send_sql"]["p50_ms"], 2)
        res["ratio_wake_p50_gateway_over_sql"] = round(res["wake_gateway"]["p50_ms"] / res["wake_sql"]["p50_ms"], 2)
        print(json.dumps(res, indent=2))
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    finally:
        gw.terminate()
        gw.wait()


if __name__ == "__main__":
    main()
