#!/bin/bash
# Checks the layering of the C code from the built objects and the sources:
#
#   1. no cycle among src/*.c: file A depends on file B when A's object uses a symbol (function or
#      variable) that B's object defines (nm: the calls and data references that are really
#      made); and no cycle among the headers src/*.h including each other;
#   2. the user-facing side (every file with a SQL-callable function, PG_FUNCTION_INFO_V1, the
#      files of hooks that run in a user's session (SESSION_HOOKS), and
#      every file it reaches) never reaches worker code (the WORKER files below) and never
#      includes a worker header (worker.h, worker_tx.h);
#   3. no SQL-callable function lives in a worker file.
#
# axme.c (_PG_init, which registers the launcher) is the one root allowed to reach both sides.
# Usage: bash scripts/check-layering.sh   (builds first when an object is missing or stale)
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
make -s PG_CONFIG="$PG_CONFIG" >/dev/null

exec /usr/bin/python3 - "$@" <<'EOF'
import glob, os, re, subprocess, sys

# the background processes' code, which no user session may call into
WORKER = {"bgworker", "launcher", "delivery_worker", "handler_worker", "unserved", "timers", "ops", "claim",
          "http", "worker_tx"}
WORKER_HEADERS = {"worker.h", "worker_tx.h"}
ROOT = "axme"
# files whose hooks run in a user's session (utility hook, commit callbacks): user-facing too
SESSION_HOOKS = {"ddl", "doorbell"}

files = sorted(os.path.basename(p)[:-2] for p in glob.glob("src/*.c"))
defined, used = {}, {}
for f in files:
    out = subprocess.run(["nm", "src/%s.o" % f], check=True, capture_output=True, text=True).stdout
    defined[f], used[f] = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRCV":
            defined[f].add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            used[f].add(parts[1])
owner = {}
for f in files:
    for s in defined[f]:
        owner[s] = f

deps = {f: {} for f in files}      # f -> {g: why}
for f in files:
    for s in used[f]:
        g = owner.get(s)
        if g and g != f:
            deps[f].setdefault(g, "uses %s" % s)

includes = {}
for p in sorted(glob.glob("src/*.[ch]")):
    includes[os.path.basename(p)] = set(re.findall(r'#include "([a-z_]+\.h)"', open(p).read()))

problems = []

# 1. cycles (depth-first search; report each cycle once)
color, stack = {}, []
def visit(f):
    color[f] = 1
    stack.append(f)
    for g in sorted(deps.get(f, {})):
        if g not in deps:
            continue
        if color.get(g) == 1:
            cyc = stack[stack.index(g):] + [g]
            problems.append("cycle: " + " -> ".join(
                "%s.c" % a + (" (%s)" % deps[a][b]) for a, b in zip(cyc, cyc[1:])) + " -> %s.c" % g)
        elif not color.get(g):
            visit(g)
    stack.pop()
    color[f] = 2
for f in files:
    if not color.get(f):
        visit(f)

# headers including headers
hcolor = {}
def hvisit(h, path):
    hcolor[h] = 1
    for g in sorted(includes.get(h, ())):
        if hcolor.get(g) == 1:
            problems.append("include cycle: " + " -> ".join(path[path.index(g):] + [g]))
        elif not hcolor.get(g):
            hvisit(g, path + [g])
    hcolor[h] = 2
for h in includes:
    if h.endswith(".h") and not hcolor.get(h):
        hvisit(h, [h])

# 2. and 3. the user-facing side
sql_callable = {f for f in files if any(s.startswith("pg_finfo_") for s in defined[f])}
for f in sorted(sql_callable & WORKER):
    problems.append("%s.c is worker code but defines SQL-callable functions" % f)
user = set()
todo = [f for f in (sql_callable | SESSION_HOOKS) & set(files) if f != ROOT]
paths = {f: [f] for f in todo}
while todo:
    f = todo.pop()
    if f in user:
        continue
    user.add(f)
    for h in sorted(includes["%s.c" % f] & WORKER_HEADERS):
        problems.append("user-facing file includes a worker header: %s -> %s.c includes %s"
                        % (" -> ".join("%s.c" % p for p in paths[f]), f, h))
    for g, why in deps[f].items():
        if g in WORKER:
            problems.append("user-facing path reaches worker code: %s -> %s (%s)"
                            % (" -> ".join("%s.c" % p for p in paths[f]), g, why))
        elif g not in user:
            paths.setdefault(g, paths[f] + [g])
            todo.append(g)

for f in sorted(set(files) - user - WORKER - {ROOT}):
    problems.append("%s.c is on neither side: list it in WORKER or reach it from the user's side" % f)

edges = sum(len(d) for d in deps.values())
print("%d files, %d dependencies; SQL-callable: %s" % (len(files), edges, " ".join(sorted(sql_callable))))
print("user-facing side: %s" % " ".join(sorted(user)))
print("worker side: %s" % " ".join(sorted(WORKER & set(files))))
if "-v" in sys.argv:
    for f in files:
        print("  %s.c -> %s" % (f, ", ".join(sorted(g for g in deps[f]))))
for p in problems:
    print("FAIL " + p)
print("layering: %s" % ("ok" if not problems else "%d problem(s)" % len(problems)))
sys.exit(1 if problems else 0)
EOF
