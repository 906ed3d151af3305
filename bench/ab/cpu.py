"""On-CPU time of the backend per send: N sends as separate autocommit transactions of one
prepared statement, the backend's run time read from /proc/<pid>/schedstat (nanoseconds on a CPU,
so time spent waiting for one on a busy machine is not counted).  Prints "LABEL cpu_WORKLOAD us".
Run inside pg_virtualenv (PG* set), as a user who may read the server's /proc entries.
    python3 cpu.py LABEL N plain|trace ...
"""
import sys

import psycopg2

DOC = ("jsonb_build_object('intent_type', 'intent.order.process.v1', 'to_agent', 'agent://bench/perf/sink', "
       "'payload', bench.order_payload($1)%s)")
EXTRA = {"plain": "", "trace": ", 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', "
                            "'tracestate', 'rojo=00f067aa0ba902b7'"}


def on_cpu_ns(pid):
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0])


label, n = sys.argv[1], int(sys.argv[2])
conn = psycopg2.connect("dbname=postgres")
conn.autocommit = True
cur = conn.cursor()
cur.execute("SELECT pg_backend_pid()")
pid = cur.fetchone()[0]
for w in sys.argv[3:]:
    cur.execute("PREPARE s_%s(bigint) AS SELECT axme.send_intent(%s)" % (w, DOC % EXTRA[w]))
    for i in range(n // 10):                     # warm-up
        cur.execute("EXECUTE s_%s(%%s)" % w, (i,))
    t0 = on_cpu_ns(pid)
    for i in range(n):
        cur.execute("EXECUTE s_%s(%%s)" % w, (i,))
    print("%s cpu_%s %.2f" % (label, w, (on_cpu_ns(pid) - t0) / n / 1000.0))
