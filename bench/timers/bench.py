"""Timer queue benchmark: throughput and precision of the worker's timer loop.

    pg_virtualenv -t -o shared_preload_libraries=axme /usr/bin/python3 bench/timers/bench.py
    (or any preloaded cluster with PG* set; the cluster should be a throwaway one: it creates a database and roles nothing)

Runs, each in a fresh database:
  1. deadline   N intents (default 100,000) with deadline_at spread evenly over one minute that
                starts once they are all sent; lateness = intent.timed_out event time - deadline_at.
  2. remind     N rows of kind 'remind' spread the same way, fired through axme._timer_remind;
                when that function does not exist (an older build), a stub that only
                records the time is installed and the report says so.
                lateness = time recorded by the function - the row's due_at.
  3. deadline with 1,000,000 pending timers (due in a day) in the queue beside them.
Prints one JSON line per run (p50/p90/p99/max lateness in ms, fire rate) and a Markdown table.
Environment: BENCH_N (100000), BENCH_PENDING (1000000), BENCH_SPREAD_S (60), BENCH_ONLY (regex).
"""
import json
import os
import re
import sys
import time

import psycopg2

N = int(os.environ.get("BENCH_N", "100000"))
PENDING = int(os.environ.get("BENCH_PENDING", "1000000"))
SPREAD = float(os.environ.get("BENCH_SPREAD_S", "60"))
ONLY = os.environ.get("BENCH_ONLY", "")
AGENT = "agent://bench/timers/sink"


def connect(db):
    c = psycopg2.connect(dbname=db)
    c.autocommit = True
    return c


def q(c, sql, args=None):
    with c.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def fresh_db(name):
    admin = connect("postgres")
    q(admin, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    q(admin, 'CREATE DATABASE "%s"' % name)
    admin.close()
    c = connect(name)
    q(c, "CREATE EXTENSION axme")
    q(c, "SELECT axme.register_agent(%s, 'poll')", (AGENT,))
    return c


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def summary(name, lates_ms, first_due, last_fired, extra=None):
    r = {"run": name, "n": len(lates_ms),
         "p50_ms": round(pct(lates_ms, 50), 1), "p90_ms": round(pct(lates_ms, 90), 1),
         "p99_ms": round(pct(lates_ms, 99), 1), "max_ms": round(max(lates_ms), 1),
         "min_ms": round(min(lates_ms), 1),
         "fired_per_s": round(len(lates_ms) / max(last_fired - first_due, 1e-6), 0)}
    r.update(extra or {})
    print(json.dumps(r), flush=True)
    return r


def wait_until(c, sql, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if q(c, sql)[0][0]:
            return True
        time.sleep(0.5)
    return False


def run_deadline(name, pending=0):
    c = fresh_db("bench_timers")
    extra = {}
    if pending:
        t0 = time.monotonic()
        q(c, """INSERT INTO axme.timers (intent_id, kind, due_at)
                SELECT gen_random_uuid(), 'deadline', now() + interval '1 day' + g * interval '1 millisecond'
                FROM generate_series(1, %s) g""", (pending,))
        q(c, "VACUUM ANALYZE axme.timers")
        extra["pending"] = pending
        extra["pending_insert_s"] = round(time.monotonic() - t0, 1)
    # the minute starts once everything is sent: measure the send rate first on 2 % of N
    t0 = time.monotonic()
    lead = 30.0 + N / 2000.0      # generous: sends run at several thousand per second
    start = q(c, "SELECT extract(epoch FROM clock_timestamp())::float8 + %s", (lead,))[0][0]
    batch = 10000
    for off in range(0, N, batch):
        q(c, """SELECT count(axme.send_intent(jsonb_build_object(
                    'intent_type', 'intent.bench.timer.v1', 'to_agent', %s, 'payload', jsonb_build_object('n', g),
                    'deadline_at', to_timestamp(%s + (g - 1) * %s / %s))))
                FROM generate_series(%s, %s) g""",
          (AGENT, start, SPREAD, N, off + 1, min(off + batch, N)))
    sent_s = time.monotonic() - t0
    now = q(c, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
    if now >= start:
        print("WARNING: sending took longer than the lead time; the first timers were due during sends",
              file=sys.stderr)
    extra["send_s"] = round(sent_s, 1)
    ok = wait_until(c, "SELECT NOT EXISTS (SELECT FROM axme.intents WHERE status <> 'TIMED_OUT')",
                    (start - now) + SPREAD + 600)
    if not ok:
        print("WARNING: not all fired", file=sys.stderr)
    rows = q(c, """SELECT extract(epoch FROM e.at - i.deadline_at)::float8 * 1000,
                          extract(epoch FROM e.at)::float8
                   FROM axme.intents i JOIN axme.events e USING (intent_id)
                   WHERE e.event_type = 'intent.timed_out'""")
    if pending:
        extra["pending_left"] = q(c, "SELECT count(*) FROM axme.timers")[0][0]
        # what one idle turn of the loop costs with that many pending: the firing query finding
        # nothing due and the next-due probe (best of 3 x 200 calls each)
        for label, sql in (("idle_fire_ms", "SELECT axme._fire_timers(50)"),
                           ("next_due_ms", "SELECT min(due_at) FROM axme.timers")):
            best = None
            for _ in range(3):
                t1 = time.perf_counter()
                for _ in range(200):
                    q(c, sql)
                per = (time.perf_counter() - t1) / 200 * 1000
                best = per if best is None else min(best, per)
            extra[label] = round(best, 3)
    c.close()
    return summary(name, [r[0] for r in rows], start, max(r[1] for r in rows), extra)


def run_remind(name):
    c = fresh_db("bench_timers")
    extra = {}
    have = q(c, "SELECT to_regprocedure('axme._timer_remind(uuid)') IS NOT NULL")[0][0]
    q(c, "CREATE TABLE public.bench_fired (intent_id uuid, at timestamptz DEFAULT clock_timestamp())")
    if have:
        c.close()
        return run_remind_real(name)
    # the real function is not here: a stub with the same signature that only records when
    # it ran (the real one does more per reminder: an event, a NOTIFY, the next timer row), so this run
    # measures the loop and the dispatch (one subtransaction per reminder), not b's function
    q(c, """CREATE FUNCTION axme._timer_remind(intent_id uuid) RETURNS void LANGUAGE sql AS
            $$ INSERT INTO public.bench_fired (intent_id) VALUES ($1) $$""")
    extra["reminder_function"] = "stub"
    t0 = time.monotonic()
    lead = 30.0 + N / 2000.0
    start = q(c, "SELECT extract(epoch FROM clock_timestamp())::float8 + %s", (lead,))[0][0]
    q(c, """SELECT count(axme.send_intent(jsonb_build_object(
                'intent_type', 'intent.bench.remind.v1', 'to_agent', %s, 'payload', jsonb_build_object('n', g))))
            FROM generate_series(1, %s) g""", (AGENT, N))
    q(c, "CREATE TABLE public.bench_due AS SELECT intent_id, to_timestamp(%s + (row_number() OVER () - 1) * %s / %s) AS due_at "
         "FROM axme.intents", (start, SPREAD, N))
    q(c, "INSERT INTO axme.timers (intent_id, kind, due_at) SELECT intent_id, 'remind', due_at FROM public.bench_due")
    extra["send_s"] = round(time.monotonic() - t0, 1)
    now = q(c, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
    if not wait_until(c, "SELECT (SELECT count(*) FROM public.bench_fired) >= %d" % N,
                      (start - now) + SPREAD + 600):
        print("WARNING: not all fired", file=sys.stderr)
    rows = q(c, """SELECT extract(epoch FROM f.at - d.due_at)::float8 * 1000, extract(epoch FROM f.at)::float8
                   FROM public.bench_due d JOIN public.bench_fired f USING (intent_id)""")
    c.close()
    return summary(name, [r[0] for r in rows], start, max(r[1] for r in rows), extra)


def run_remind_real(name):
    """N intents sent in one statement with remind_after_seconds spread over SPREAD seconds (whole
    seconds: about N / SPREAD reminders fall due at each second), fired by the real
    axme._timer_remind (an intent.reminder event, a NOTIFY, the next timer row).  Lateness =
    the intent.reminder event's time - (created_at + remind_after_seconds)."""
    c = fresh_db("bench_timers")
    lead = int(30 + N / 2000)
    t0 = time.monotonic()
    q(c, """SELECT count(axme.send_intent(jsonb_build_object(
                'intent_type', 'intent.bench.remind.v1', 'to_agent', %s, 'payload', jsonb_build_object('n', g),
                'remind_after_seconds', %s + (g %% %s), 'remind_interval_seconds', 86400,
                'max_reminders', 1)))
            FROM generate_series(1, %s) g""", (AGENT, lead, int(SPREAD), N))
    extra = {"reminder_function": "axme._timer_remind", "send_s": round(time.monotonic() - t0, 1),
             "granularity": "1 s (remind_after_seconds is whole seconds)"}
    start = q(c, "SELECT extract(epoch FROM min(created_at + remind_after_seconds * interval '1 second'))::float8 "
                 "FROM axme.intents")[0][0]
    now = q(c, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
    if not wait_until(c, "SELECT (SELECT count(*) FROM axme.events WHERE event_type = 'intent.reminder') >= %d" % N,
                      (start - now) + SPREAD + 600):
        print("WARNING: not all fired", file=sys.stderr)
    rows = q(c, """SELECT extract(epoch FROM e.at - (i.created_at + i.remind_after_seconds * interval '1 second'))::float8 * 1000,
                          extract(epoch FROM e.at)::float8
                   FROM axme.intents i JOIN axme.events e USING (intent_id)
                   WHERE e.event_type = 'intent.reminder'""")
    c.close()
    return summary(name, [r[0] for r in rows], start, max(r[1] for r in rows), extra)


def main():
    runs = [
        ("deadline %d over %gs" % (N, SPREAD), lambda n: run_deadline(n)),
        ("remind %d over %gs" % (N, SPREAD), lambda n: run_remind(n)),
        ("deadline %d over %gs, %d pending" % (N, SPREAD, PENDING), lambda n: run_deadline(n, PENDING)),
    ]
    results = []
    for name, fn in runs:
        if ONLY and not re.search(ONLY, name):
            continue
        r = fn(name)
        if r:
            results.append(r)
    print()
    print("| run | n | p50 ms | p90 ms | p99 ms | max ms | fired/s | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        notes = ", ".join("%s=%s" % (k, v) for k, v in r.items()
                          if k not in ("run", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "min_ms", "fired_per_s"))
        print("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            r["run"], r["n"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"], r["fired_per_s"], notes))
    admin = connect("postgres")
    q(admin, 'DROP DATABASE IF EXISTS "bench_timers" WITH (FORCE)')


if __name__ == "__main__":
    main()
