"""The herd benchmark: a receiver is down while a backlog piles up, then comes back with a fixed
capacity (CAP requests at once, 429 beyond).  Measures what axme's breaker and slow start do:
peak concurrent requests at the receiver vs CAP, the share of 429s, the drain time vs
backlog / capacity; plots requests/s and in-flight over time (herd.png).

    PG_CONFIG=/path/to/pg_config /usr/bin/python3 bench/herd/herd.py [--down 120 --intents 50000 ...]

Runs its own throwaway cluster (fsync=off) and receiver on loopback.  See bench/herd/README.md.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "test", "http"))
from cluster import Cluster  # noqa: E402
from test_http import free_port_pair  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--down", type=float, default=120, help="seconds the receiver is down")
    ap.add_argument("--intents", type=int, default=50000)
    ap.add_argument("--cap", type=int, default=20, help="requests the receiver serves at once")
    ap.add_argument("--service-ms", type=float, default=25, help="time to serve one request")
    ap.add_argument("--max-in-flight", type=int, default=64, help="the agent's max_in_flight")
    ap.add_argument("--cooldown-ms", type=int, default=2000, help="breaker.cooldown_ms")
    ap.add_argument("--calibrate", type=int, default=10000,
                    help="intents of the calibration run (healthy agent, max_in_flight = cap)")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    bindir = subprocess.run([os.environ.get("PG_CONFIG", "pg_config"), "--bindir"], capture_output=True,
                            text=True, check=True).stdout.strip()
    pg_port = free_port_pair()
    rx_port = pg_port + 1
    capacity = args.cap / (args.service_ms / 1000.0)
    cluster = Cluster(bindir, pg_port)
    rx = None
    rx_log = os.path.join(cluster.dir, "rx.json")
    os.chmod(cluster.dir, 0o777)
    try:
        cluster.start()
        admin = cluster.connect("postgres")
        admin.cursor().execute("CREATE DATABASE herd")
        db = cluster.connect("herd")
        cur = db.cursor()
        cur.execute("CREATE EXTENSION axme")
        addr = "agent://bench/herd/receiver"
        opts = {"max_in_flight": args.max_in_flight, "timeout_ms": 10000,
                "breaker": {"failure_threshold": 10, "cooldown_ms": args.cooldown_ms},
                "retry": {"max_attempts": 1000, "base_delay_ms": 1000, "max_delay_ms": 2000}}
        cur.execute("SELECT axme.register_agent(%s, 'http', %s, %s)",
                    (addr, "http://127.0.0.1:%d/hook" % rx_port, json.dumps(opts)))
        t0 = time.time()
        samples = []
        stop = threading.Event()

        def sampler():
            c = cluster.connect("herd")
            k = c.cursor()
            while not stop.is_set():
                k.execute("""SELECT breaker, floor(conc_limit) FROM axme.endpoint_state es
                             JOIN axme.agents a USING (agent_id) WHERE a.address = %s""", (addr,))
                r = k.fetchone()
                samples.append((time.time() - t0, r[0] if r else "closed", r[1] if r else None))
                stop.wait(0.25)
            c.close()

        threading.Thread(target=sampler, daemon=True).start()
        # the backlog: intents sent evenly while the receiver is down
        batch = 250
        nb = args.intents // batch
        span = max(args.down - 10, 1)
        for b in range(nb):
            cur.execute("""SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.herd.v1',
                                                                          'to_agent', %s, 'payload', jsonb_build_object('n', g))))
                           FROM generate_series(1, %s) g""", (addr, batch))
            time.sleep(max(0, t0 + (b + 1) * span / nb - time.time()))
        sent_at = time.time() - t0
        time.sleep(max(0, t0 + args.down - time.time()))
        cur.execute("SELECT count(*) FROM axme.intents WHERE status <> 'COMPLETED'")
        backlog = cur.fetchone()[0]
        rx = subprocess.Popen([sys.executable, os.path.join(HERE, "receiver.py"), str(rx_port), str(args.cap),
                               str(args.service_ms), rx_log])
        t_up = time.time() - t0
        while True:
            cur.execute("SELECT count(*) FROM axme.intents WHERE status = 'COMPLETED'")
            if cur.fetchone()[0] >= args.intents:
                break
            if time.time() - t0 > args.down + 1800:
                raise RuntimeError("not drained after 30 min")
            time.sleep(0.2)
        t_done = time.time() - t0
        stop.set()
        # calibration: what this worker and receiver achieve at the receiver's cap with no outage,
        # no breaker and no ramp (a healthy agent, max_in_flight = cap), on the same machine now
        cal = "agent://bench/herd/calibrate"
        cur.execute("SELECT axme.register_agent(%s, 'http', %s, %s)",
                    (cal, "http://127.0.0.1:%d/calibrate" % rx_port,
                     json.dumps({"max_in_flight": args.cap, "timeout_ms": 10000})))
        cur.execute("""SELECT count(axme.send_intent(jsonb_build_object('intent_type', 'intent.bench.herd.v1',
                                                                      'to_agent', %s, 'payload', jsonb_build_object('n', g))))
                       FROM generate_series(1, %s) g""", (cal, args.calibrate))
        while True:
            cur.execute("""SELECT count(*) FROM axme.intents i JOIN axme.agents a USING (agent_id)
                           WHERE a.address = %s AND i.status = 'COMPLETED'""", (cal,))
            if cur.fetchone()[0] >= args.calibrate:
                break
            time.sleep(0.2)
        cur.execute("SELECT kind, extract(epoch FROM at)::float8 - %s, details FROM axme.alerts ORDER BY id", (t0,))
        alerts = cur.fetchall()
        cur.execute("""SELECT count(*), coalesce(sum(attempt), 0) FROM axme.intents i JOIN axme.agents a USING (agent_id)
                       WHERE a.address = %s""", (addr,))
        n_intents, charged = cur.fetchone()
        cur.execute("""SELECT count(*) FILTER (WHERE http_status = 429), count(*) FROM axme.delivery_attempts d
                       JOIN axme.agents a USING (agent_id) WHERE a.address = %s""", (addr,))
        db_429, db_attempts = cur.fetchone()
        rx.send_signal(signal.SIGTERM)
        rx.wait(60)
        rx = None
        with open(rx_log) as f:
            full = [(a - t0, b - t0, s, c, sv, p) for a, b, s, c, sv, p in json.load(f)]
        log = [r[:5] for r in full if r[5] == "/hook"]
        cal_log = [r[:5] for r in full if r[5] == "/calibrate"]
    finally:
        if rx:
            rx.kill()
        cluster.destroy()

    closed = [a[1] for a in alerts if a[0] == "breaker_closed" and a[1] >= t_up]
    t_closed = closed[0] if closed else None
    n429 = sum(1 for r in log if r[2] == 429)
    n200 = sum(1 for r in log if r[2] == 200)
    peak_open = max(r[3] for r in log)
    peak_served = max(r[4] for r in log)
    ideal = backlog / capacity
    cal_rate = len(cal_log) / (max(r[1] for r in cal_log) - min(r[0] for r in cal_log))
    cal_429 = sum(1 for r in cal_log if r[2] == 429)
    achievable = backlog / cal_rate
    res = {
        "intents": args.intents, "backlog_at_recovery": backlog, "down_s": args.down,
        "cap": args.cap, "service_ms": args.service_ms, "capacity_per_s": capacity,
        "max_in_flight": args.max_in_flight, "cooldown_ms": args.cooldown_ms,
        "sent_by_s": round(sent_at, 1), "receiver_up_s": round(t_up, 2),
        "breaker_closed_s": round(t_closed, 2) if t_closed else None,
        "drained_s": round(t_done, 2),
        "requests": len(log), "ok": n200, "status_429": n429,
        "share_429": round(n429 / len(log), 4),
        "peak_concurrent_at_receiver": peak_open, "peak_served": peak_served,
        "ideal_drain_s": round(ideal, 1),
        "drain_s_from_up": round(t_done - t_up, 1),
        "drain_s_from_close": round(t_done - t_closed, 1) if t_closed else None,
        "drain_ratio_from_up": round((t_done - t_up) / ideal, 3),
        "drain_ratio_from_close": round((t_done - t_closed) / ideal, 3) if t_closed else None,
        "calibration_intents": len(cal_log), "calibration_rate_per_s": round(cal_rate, 1),
        "calibration_429": cal_429,
        "achievable_drain_s": round(achievable, 1),
        "drain_ratio_from_close_vs_achievable": round((t_done - t_closed) / achievable, 3) if t_closed else None,
        "drain_ratio_from_up_vs_achievable": round((t_done - t_up) / achievable, 3),
        "attempts_charged": charged, "attempt_rows": db_attempts, "attempt_rows_429": db_429,
        "alerts": [(k, round(t, 2)) for k, t, _ in alerts],
        "fsync": "off",
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    plot(log, samples, res, os.path.join(args.out, "herd.png"))


def plot(log, samples, res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = res["receiver_up_s"] - 5
    end = res["drained_s"] + 5
    nb = int((end - start) / 1.0) + 1
    ok = [0] * nb
    busy = [0] * nb
    for a, b, s, c, sv in log:
        i = int((a - start) / 1.0)
        if 0 <= i < nb:
            (ok if s == 200 else busy)[i] += 1
    xs = [start + i + 0.5 for i in range(nb)]
    # in flight at the receiver: the most requests open at once in each 100 ms
    ev = sorted([(a, 1) for a, b, s, c, sv in log] + [(b, -1) for a, b, s, c, sv in log])
    step = 0.1
    nf = int((end - start) / step) + 1
    peak = [0] * nf
    cur = 0
    for t, d in ev:
        cur += d
        i = int((t - start) / step)
        if 0 <= i < nf and cur > peak[i]:
            peak[i] = cur
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.bar(xs, ok, width=1.0, label="200", color="tab:green")
    ax1.bar(xs, busy, width=1.0, bottom=ok, label="429", color="tab:red")
    ax1.axhline(res["capacity_per_s"], color="k", ls="--", lw=1, label="capacity %.0f/s" % res["capacity_per_s"])
    ax1.set_ylabel("requests/s at the receiver")
    ax1.legend(loc="upper right")
    ax2.plot([start + i * step for i in range(nf)], peak, lw=0.8, label="in flight at the receiver (max per 100 ms)")
    sx = [t for t, br, lim in samples if start <= t <= end]
    sl = [(lim if lim is not None else res["max_in_flight"]) if br == "closed" else (1 if br == "half_open" else 0)
          for t, br, lim in samples if start <= t <= end]
    ax2.step(sx, sl, where="post", lw=1, color="tab:orange", label="axme concurrency limit (slow start)")
    ax2.axhline(res["cap"], color="k", ls="--", lw=1, label="receiver cap %d" % res["cap"])
    ax2.set_ylabel("requests in flight")
    ax2.set_xlabel("seconds since the first send (receiver down until %.0f s)" % res["receiver_up_s"])
    ax2.set_ylim(0, max(res["cap"] * 1.6, max(peak) + 2))
    ax2.legend(loc="upper right")
    for ax in (ax1, ax2):
        ax.axvline(res["receiver_up_s"], color="gray", ls=":")
        if res["breaker_closed_s"]:
            ax.axvline(res["breaker_closed_s"], color="tab:blue", ls=":")
        ax.axvline(res["drained_s"], color="gray", ls=":")
    fig.suptitle("axme herd benchmark: %d intents piled up during a %.0f s outage; receiver cap %d, %.0f req/s "
                 "(fsync=off, 2 cores, shared)" % (res["intents"], res["down_s"], res["cap"], res["capacity_per_s"]),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
