#!/usr/bin/python3
"""The docs test: every example in README.md and docs/*.md runs, every receiver works, every link resolves.

Run inside a throwaway cluster with shared_preload_libraries=axme (scripts/test.sh, suite "docs";
connection from the PG* variables):

    /usr/bin/python3 test/docs/run.py [-k WORD]

1. SQL. For each page, in a fresh database, every ```sql block runs in order through one
   `psql -X -v ON_ERROR_STOP=1` session (so \\gset, SET ROLE and LISTEN carry from block to
   block). A block passes when it succeeds; a block fenced ```sql expect=XXXXX passes when it
   fails with exactly that SQLSTATE (and nothing else in it failed); a fenced ```output block
   right after a block must appear, line for line, in what psql printed. ```sql norun REASON is not
   run (at most MAX_NORUN of them in all, each with a reason). A page whose blocks never say
   CREATE EXTENSION gets `CREATE EXTENSION axme` before its first block. psql variable `receiver`
   is the base URL of a local webhook receiver that answers 200 (test/http/receiver.py). Roles a
   page creates are dropped after it.
2. Included files. A fenced block preceded by `<!-- include: PATH -->` must equal that file
   (`run.py --sync` copies the files into the pages).
3. Receivers. Every file under examples/receivers/ runs against the cluster (test/docs/receivers.py).
4. Links. Every relative link (and #anchor) in README.md, docs/*.md and CHANGELOG.md resolves.

Prints one line per test and closes with "N passed, M failed".
"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "test", "http"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MAX_NORUN = 5
MAX_README_LINES = 300
PSQL_TIMEOUT = 180

results = []          # (ok, name, detail)


def report(ok, name, detail=""):
    results.append((ok, name, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""), flush=True)


def pages():
    """README.md first, then docs/*.md by name."""
    out = ["README.md"]
    docs = os.path.join(ROOT, "docs")
    out += sorted("docs/" + f for f in os.listdir(docs) if f.endswith(".md"))
    return out


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def blocks(text):
    """Fenced blocks of a markdown text: (line number, info string, body, preceding line)."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        start = i
        body = []
        i += 1
        while i < len(lines):
            c = FENCE.match(lines[i])
            if c and c.group(2)[0] == fence[0] and len(c.group(2)) >= len(fence) and not c.group(3).strip():
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        prev = ""
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0:
            prev = lines[j].strip()
        out.append((start + 1, info, "\n".join(body) + "\n", prev))
        i += 1
    return out


def sql_blocks(text):
    """The sql blocks of a page: (line, kind, arg, body, output) with kind run | expect | norun.

    output is the body of a fenced `output` block right after the sql block, or None."""
    out = []
    allb = blocks(text)
    for i, (line, info, body, _) in enumerate(allb):
        words = info.split(None, 1)
        if not words or words[0] != "sql":
            continue
        output = None
        if i + 1 < len(allb) and allb[i + 1][1] == "output" and allb[i + 1][3].startswith("```"):
            output = allb[i + 1][2]
        rest = words[1].strip() if len(words) > 1 else ""
        if rest.startswith("expect="):
            out.append((line, "expect", rest[len("expect="):].split()[0], body, output))
        elif rest.startswith("norun"):
            out.append((line, "norun", rest[len("norun"):].strip(), body, output))
        elif rest == "":
            out.append((line, "run", "", body, output))
        else:
            out.append((line, "bad", rest, body, output))
    return out


def shows(segment, output):
    """Whether the lines of an output block appear, in order and together, in a block's output."""
    want = [ln.rstrip() for ln in output.rstrip("\n").split("\n")]
    got = [ln.rstrip() for ln in segment]
    return any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def psql(args, **kw):
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", *args], capture_output=True,
                          text=True, timeout=PSQL_TIMEOUT, **kw)


def admin(sql, db="postgres"):
    r = psql(["-Atqc", sql, db])
    if r.returncode != 0:
        raise RuntimeError(f"{sql}: {r.stderr.strip()}")
    return r.stdout.strip()


def run_page(page, blist, receiver_url, logdir):
    """Run the sql blocks of one page in a fresh database; report one result per block."""
    db = "docs_" + re.sub(r"[^a-z0-9]+", "_", page.lower()).strip("_")
    admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    admin(f"CREATE DATABASE {db}")
    roles_before = set(admin("SELECT string_agg(rolname, ' ') FROM pg_roles").split())
    script = ["\\set receiver '" + receiver_url + "'"]
    if not any("CREATE EXTENSION axme" in b[3] for b in blist):
        script.append("CREATE EXTENSION axme;")
    for n, (line, kind, arg, body, output) in enumerate(blist):
        if kind == "norun":
            continue
        script.append(f"\\echo @@BEGIN {n}")
        if kind == "expect":
            script.append("\\set ON_ERROR_STOP 0")
            script.append("\\set LAST_ERROR_SQLSTATE 00000")
        script.append(body.rstrip("\n"))
        script.append("")
        script.append(f"\\echo @@END {n} :ERROR :SQLSTATE :LAST_ERROR_SQLSTATE")
        if kind == "expect":
            script.append("\\set ON_ERROR_STOP 1")
    text = "\n".join(script) + "\n"
    with open(os.path.join(logdir, db + ".sql"), "w") as f:
        f.write(text)
    try:
        r = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", "-", db], input=text,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=PSQL_TIMEOUT)
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), -1
    with open(os.path.join(logdir, db + ".out"), "w") as f:
        f.write(out)
    ends = {}
    begun = set()
    current = None
    segments = {}
    for ln in out.split("\n"):
        m = re.match(r"^@@BEGIN (\d+)$", ln)
        if m:
            current = int(m.group(1))
            begun.add(current)
            segments[current] = []
            continue
        m = re.match(r"^@@END (\d+) (\S+) (\S+) (\S+)$", ln)
        if m:
            ends[int(m.group(1))] = (m.group(2), m.group(3), m.group(4))
            current = None
            continue
        if current is not None:
            segments[current].append(ln)
    for n, (line, kind, arg, body, output) in enumerate(blist):
        name = f"{page}:{line} sql" + (f" expect={arg}" if kind == "expect" else "")
        if kind == "norun":
            continue
        if kind == "bad":
            report(False, name, f"unknown fence info '{arg}'")
            continue
        seg = "\n".join(segments.get(n, []))[-1500:]
        last = [ln.split("--")[0].rstrip() for ln in body.split("\n") if ln.split("--")[0].strip()]
        if last and not (last[-1].endswith(";") or last[-1].lstrip().startswith("\\")
                         or "\\g" in last[-1]):
            report(False, name, "the block's last statement has no terminating ';' (it would run with the next block)")
            continue
        if n not in begun:
            report(False, name, "not run: an earlier block stopped the page")
            continue
        if n not in ends:
            report(False, name, "failed:\n" + seg)
            continue
        error, sqlstate, last = ends[n]
        if kind == "run":
            if error == "false" and output is not None and not shows(segments.get(n, []), output):
                report(False, name, "its output differs from the output block below it:\n" + seg)
            else:
                report(error == "false", name, "failed:\n" + seg)
        else:
            ok = error == "true" and sqlstate == arg and last == arg
            report(ok, name, f"expected SQLSTATE {arg}, got ERROR={error} SQLSTATE={sqlstate} "
                             f"(last error {last}):\n" + seg)
    if rc not in (0, 3):
        report(False, f"{page} psql", f"psql exited {rc}")
    # tidy up: the database and the roles the page created
    admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    roles_after = set(admin("SELECT string_agg(rolname, ' ') FROM pg_roles").split())
    for role in sorted(roles_after - roles_before):
        if not role.startswith("axme_"):
            admin(f'DROP ROLE "{role}"')


def check_includes(page, text):
    for line, info, body, prev in blocks(text):
        m = re.match(r"^<!--\s*include:\s*(\S+)\s*-->$", prev)
        if not m:
            continue
        path = m.group(1)
        name = f"{page}:{line} include {path}"
        full = os.path.join(ROOT, path)
        if not os.path.isfile(full):
            report(False, name, "no such file")
            continue
        with open(full) as f:
            want = f.read()
        report(body == want, name, "the block differs from the file (copy the file into the page)")


def sync_includes(page):
    """Rewrite every included block of a page from its file (run.py --sync)."""
    full = os.path.join(ROOT, page)
    with open(full) as f:
        lines = f.read().split("\n")
    out, i = [], 0
    while i < len(lines):
        out.append(lines[i])
        m = re.match(r"^<!--\s*include:\s*(\S+)\s*-->$", lines[i].strip())
        i += 1
        if not m:
            continue
        while i < len(lines) and not lines[i].strip():
            out.append(lines[i])
            i += 1
        f = FENCE.match(lines[i]) if i < len(lines) else None
        if not f:
            continue
        out.append(lines[i])
        i += 1
        while i < len(lines) and not (FENCE.match(lines[i]) and not FENCE.match(lines[i]).group(3).strip()):
            i += 1
        with open(os.path.join(ROOT, m.group(1))) as src:
            out.extend(src.read().rstrip("\n").split("\n"))
    with open(full, "w") as f:
        f.write("\n".join(out))


def slug(heading):
    """GitHub's anchor of a heading."""
    h = heading.strip().lower()
    h = re.sub(r"`", "", h)
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    with open(path) as f:
        text = f.read()
    out = set()
    seen = {}
    in_fence = False
    for ln in text.split("\n"):
        if FENCE.match(ln):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", ln)
        if m:
            s = slug(m.group(1))
            k = seen.get(s, 0)
            seen[s] = k + 1
            out.add(s if k == 0 else f"{s}-{k}")
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def check_links(page):
    full = os.path.join(ROOT, page)
    with open(full) as f:
        text = f.read()
    # drop fenced blocks and inline code
    kept, fence = [], None
    for ln in text.split("\n"):
        m = FENCE.match(ln)
        if fence is None and m:
            fence = m.group(2)
        elif fence is not None and m and m.group(2).startswith(fence) and not m.group(3).strip():
            fence = None
        elif fence is None:
            kept.append(ln)
    text = re.sub(r"`[^`\n]*`", "", "\n".join(kept))
    bad = []
    n = 0
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue
        n += 1
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(full), path)) if path else full
        if not os.path.exists(dest):
            bad.append(f"{target} (no such file)")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor})")
    report(not bad, f"{page} links ({n} relative)", "; ".join(bad))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", help="run only tests whose page or name contains this")
    ap.add_argument("--logdir", default=os.environ.get("AXME_DOCS_LOGDIR", "/tmp/axme-docs"))
    ap.add_argument("--sync", action="store_true",
                    help="copy the included files into the pages, then exit")
    args = ap.parse_args()
    if args.sync:
        for page in pages():
            sync_includes(page)
        return 0
    os.makedirs(args.logdir, exist_ok=True)
    start = time.time()

    # the webhook pages deliver to loopback
    admin("ALTER SYSTEM SET axme.http_allowed_networks = '127.0.0.0/8'")
    admin("SELECT pg_reload_conf()")

    from receiver import Receiver
    rcv = Receiver()
    rcv.set_default("/hooks/axme", {"status": 200, "body": '{"status": "COMPLETED", "result": {"received": true}}'})
    receiver_url = f"http://127.0.0.1:{rcv.port}"

    with open(os.path.join(ROOT, "README.md")) as f:
        nlines = f.read().count("\n")
    report(nlines <= MAX_README_LINES, f"README.md has {nlines} lines (at most {MAX_README_LINES})")

    norun = []
    for page in pages():
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        blist = sql_blocks(text)
        norun += [(page, b[0], b[2]) for b in blist if b[1] == "norun"]
        if args.k and args.k not in page:
            continue
        check_includes(page, text)
        if blist:
            run_page(page, blist, receiver_url, args.logdir)
    without_reason = [f"{p}:{l}" for p, l, r in norun if not r]
    report(len(norun) <= MAX_NORUN and not without_reason,
           f"{len(norun)} norun blocks (at most {MAX_NORUN}, each with a reason)",
           ", ".join(f"{p}:{l}" for p, l, _ in norun) + (" without reason: " + ", ".join(without_reason)
                                                          if without_reason else ""))

    for page in pages() + ["CHANGELOG.md"]:
        check_links(page)

    import receivers
    receivers.run_all(report, args.k)
    rcv.server.shutdown()

    passed = sum(1 for r in results if r[0])
    failed = len(results) - passed
    print(f"docs: {time.time() - start:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
