#!/bin/bash
# The axme test suite in one command, on a fresh Debian bookworm machine (as root, or a user with
# sudo):
#
#     bash scripts/test.sh
#
# Installs what it needs and builds axme (scripts/setup.sh), then runs every suite, each in a
# throwaway PostgreSQL 15 cluster of its own (pg_virtualenv -t, fsync off):
#
#   style              scripts/check-style.sh: tabs in C, spaces in Python and shell, LF, final
#                      newlines, no ticket references (docs/contributing-style.md)
#   layering           scripts/check-layering.sh: no call/include cycle among src/*.c, no call from
#                      the user's side (SQL functions, session hooks) into worker code
#   regress            pg_regress, test/sql against test/expected, shared_preload_libraries=axme
#   regress-nopreload  the same tests and expected output, without preload
#   isolation          isolation specs test/specs (isolationtester), preloaded
#   python             test/python/test_*.py (stream, leases, wait_for), preloaded
#   python-nopreload   test_stream and test_wait_for again without preload
#   dump-restore       test/python/dump_restore.py: pg_dump -Fc, pg_restore into a fresh database
#   http               test/http/run.sh: the webhook worker against a programmable loopback receiver,
#                      signatures checked with npm standardwebhooks (its own clusters)
#   gateway            test/gateway: axme-gateway over HTTP against a real cluster (every endpoint,
#                      errors, SSE resume and restart, 1,000 streams with memory measured)
#   gateway-browser    test/gateway/test_browser.py: the web inbox in headless chromium (selenium),
#                      screenshots in $AXME_TEST_LOGDIR/screenshots
#   docs               test/docs/run.py: every sql block of README.md and docs/*.md (one fresh
#                      database per page), the receivers of examples/receivers/ (Python and Node)
#                      against the cluster, every relative link
#   demo               the README's order demo (scripts/demo.sh), which checks its own outcome
#   sanitize           scripts/sanitize.sh: regress and http again against an AddressSanitizer +
#                      UndefinedBehaviorSanitizer build; fails on any report.  Runs last: it
#                      installs the sanitizer build, and the normal one again when it is done
#
# Prints one line per suite, a summary, and last a line "N passed, M failed" counting test cases;
# exits non-zero when anything failed.  Logs, results and diffs stay in $AXME_TEST_LOGDIR (default:
# a new directory under /tmp).  AXME_TEST_SUITES="regress python" runs only the named suites;
# AXME_TEST_SKIP_SETUP=1 skips scripts/setup.sh.  Takes about nine minutes.  The sanitize suite is not in the
# default list (AXME_TEST_SUITES=sanitize runs it, three to four minutes): on some runs a server
# started with libasan preloaded hangs in `postgres -V` before main(), which would stall CI.
set -uo pipefail
cd "$(dirname "$0")/.."

LOGDIR=${AXME_TEST_LOGDIR:-$(mktemp -d /tmp/axme-test.XXXXXX)}
mkdir -p "$LOGDIR"
SUITES=${AXME_TEST_SUITES:-style layering regress regress-nopreload isolation python python-nopreload dump-restore http gateway gateway-browser docs demo}
PY=/usr/bin/python3
export PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
SUITE_TIMEOUT=540          # seconds; a suite that hangs is killed and counted as failed
SANITIZE_TIMEOUT=1200      # the sanitize suite runs two suites (each with SUITE_TIMEOUT) and a build
export PGISOLATIONTIMEOUT=120

if [ "${AXME_TEST_SKIP_SETUP:-0}" != 1 ]; then
    if ! bash scripts/setup.sh >"$LOGDIR/setup.log" 2>&1; then
        cat "$LOGDIR/setup.log"
        echo "setup failed (log: $LOGDIR/setup.log)"
        echo "0 passed, 1 failed"
        exit 1
    fi
    tail -n 2 "$LOGDIR/setup.log"
fi
echo "logs: $LOGDIR"

# A port that is free now, for the next throwaway cluster (pg_virtualenv would take the first
# free one from 5432 up, which runs started at the same moment can both pick).
free_port() {
    $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# in_cluster preload|nopreload COMMAND...: run COMMAND in a throwaway cluster, after checking that
# shared_preload_libraries is what the suite expects.
in_cluster() {
    local mode=$1
    shift
    local opts=() want=""
    if [ "$mode" = preload ]; then
        opts=(-o shared_preload_libraries=axme)
        want=axme
    fi
    # $AXME_TEST_SERVER_ENV: an environment file for the server (pg_createcluster --environment),
    # which scripts/sanitize.sh uses to preload the sanitizer runtimes into the server only;
    # $AXME_TEST_SERVER_LOGDIR: where to keep a copy of the server's log when the command is done
    if [ -n "${AXME_TEST_SERVER_ENV:-}" ]; then
        opts+=(-c "--environment=$AXME_TEST_SERVER_ENV")
    fi
    PGPORT=$(free_port) timeout --kill-after=30 "$SUITE_TIMEOUT" \
        pg_virtualenv -t -v 15 "${opts[@]}" bash -c '
            got=$(psql -XAtc "SHOW shared_preload_libraries" postgres) || exit 3
            echo "shared_preload_libraries = \"$got\""
            [ "$got" = "$0" ] || { echo "expected shared_preload_libraries = \"$0\""; exit 3; }
            [ -n "${AXME_TEST_SERVER_LOGDIR:-}" ] || exec "$@"
            "$@"; rc=$?
            cp "${PG_CLUSTER_CONF_ROOT%/*}"/log/*.log "$AXME_TEST_SERVER_LOGDIR/$PGPORT.log"
            exit $rc' "$want" "$@"
}

# Counts of one suite's test cases, from its log: sets PASSED and FAILED.
count_pg_regress() {     # "test name ... ok" / "... FAILED" lines of pg_regress
    PASSED=$(grep -cE '^test .* \.\.\. +ok' "$1")
    FAILED=$(grep -cE '^test .* \.\.\. +FAILED' "$1")
}
count_unittest() {       # "Ran N tests" and "FAILED (failures=F, errors=E, ...)" of unittest
    local ran bad
    ran=$(sed -nE 's/^Ran ([0-9]+) tests? in .*/\1/p' "$1" | tail -n 1)
    FAILED=0
    for bad in $(sed -nE 's/^FAILED \((.*)\)$/\1/p' "$1" | tail -n 1 |
                 grep -oE '(failures|errors)=[0-9]+' | cut -d= -f2); do
        FAILED=$(( FAILED + bad ))
    done
    PASSED=$(( ${ran:-0} - FAILED ))
}
count_plain() {          # a closing "N passed, M failed" line
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
    PASSED=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p'); PASSED=${PASSED:-0}
    FAILED=$(echo "$line" | sed -nE 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/p'); FAILED=${FAILED:-0}
}
count_one() {            # a suite that is one test
    if [ "$2" -eq 0 ]; then PASSED=1; FAILED=0; else PASSED=0; FAILED=1; fi
}

run_suite() {
    local name=$1
    local log="$LOGDIR/$name.log"
    local start rc ms
    start=$(date +%s%3N)
    case $name in
        style)
            bash scripts/check-style.sh >"$log" 2>&1 ;;
        regress)
            mkdir -p "$LOGDIR/regress"
            in_cluster preload make -s installcheck ISOLATION= REGRESS_OUTDIR="$LOGDIR/regress" >"$log" 2>&1 ;;
        regress-nopreload)
            mkdir -p "$LOGDIR/regress-nopreload"
            in_cluster nopreload make -s installcheck ISOLATION= REGRESS_OUTDIR="$LOGDIR/regress-nopreload" >"$log" 2>&1 ;;
        isolation)
            mkdir -p "$LOGDIR/isolation"
            in_cluster preload make -s installcheck REGRESS= ISOLATION_OUTDIR="$LOGDIR/isolation" >"$log" 2>&1 ;;
        python)
            in_cluster preload $PY -m unittest discover -v -s test/python -p 'test_*.py' >"$log" 2>&1 ;;
        python-nopreload)
            in_cluster nopreload env PYTHONPATH=test/python $PY -m unittest -v test_stream test_wait_for >"$log" 2>&1 ;;
        dump-restore)
            in_cluster preload env PYTHONPATH=test/python $PY -m unittest -v dump_restore >"$log" 2>&1 ;;
        docs)
            in_cluster preload $PY test/docs/run.py --logdir "$LOGDIR/docs" >"$log" 2>&1 ;;
        http)
            timeout --kill-after=30 "$SUITE_TIMEOUT" sh test/http/run.sh >"$log" 2>&1 ;;
        gateway)
            in_cluster preload env AXME_TEST_LOGDIR="$LOGDIR" sh test/gateway/run.sh >"$log" 2>&1 ;;
        gateway-browser)
            in_cluster preload env AXME_TEST_LOGDIR="$LOGDIR" sh test/gateway/run_browser.sh >"$log" 2>&1 ;;
        layering)
            bash scripts/check-layering.sh >"$log" 2>&1 ;;
        demo)
            AXME_DEMO_SKIP_SETUP=1 AXME_TEST_LOGDIR="$LOGDIR" timeout --kill-after=30 "$SUITE_TIMEOUT" bash scripts/demo.sh >"$log" 2>&1 ;;
        sanitize)
            AXME_SANITIZE_DIR="$LOGDIR/sanitize" timeout --kill-after=30 "$SANITIZE_TIMEOUT" \
                bash scripts/sanitize.sh >"$log" 2>&1 ;;
        *)
            echo "unknown suite $name" >"$log"; false ;;
    esac
    rc=$?
    ms=$(( $(date +%s%3N) - start ))
    case $name in
        regress*|isolation) count_pg_regress "$log" ;;
        python*|dump-restore) count_unittest "$log" ;;
        http|gateway|gateway-browser|docs|sanitize|style) count_plain "$log" ;;
        *) count_one "$log" "$rc" ;;
    esac
    # a non-zero exit always fails the suite, and so does a suite that ran no test
    if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then FAILED=1; fi
    if [ "$rc" -eq 0 ] && [ "$PASSED" -eq 0 ]; then FAILED=1; fi
    TOTAL_PASSED=$(( TOTAL_PASSED + PASSED ))
    TOTAL_FAILED=$(( TOTAL_FAILED + FAILED ))
    local verdict=PASS
    if [ "$FAILED" -ne 0 ]; then
        verdict=FAIL
        FAILED_SUITES+=("$name")
    fi
    SUMMARY+=("$(printf '%-18s %-4s %4d passed %3d failed %5d.%d s' "$name" "$verdict" "$PASSED" "$FAILED" \
                 $(( ms / 1000 )) $(( ms % 1000 / 100 )))")
    echo "${SUMMARY[-1]}"
    if [ "$verdict" = FAIL ]; then
        echo "---- $name: last lines of $log"
        grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+ UTC \[' "$log" | tail -n 40 | sed 's/^/    /'
        for diffs in "$LOGDIR/$name/regression.diffs"; do
            if [ -s "$diffs" ]; then
                echo "---- $name: $diffs (first 80 lines)"
                head -n 80 "$diffs" | sed 's/^/    /'
            fi
        done
        echo "----"
    fi
}

TOTAL_PASSED=0
TOTAL_FAILED=0
SUMMARY=()
FAILED_SUITES=()
START=$(date +%s)
for s in $SUITES; do
    run_suite "$s"
done

echo
echo "==== axme test summary ($(( $(date +%s) - START )) s; logs in $LOGDIR)"
printf '%s\n' "${SUMMARY[@]}"
if [ ${#FAILED_SUITES[@]} -gt 0 ]; then
    echo "failed suites: ${FAILED_SUITES[*]}"
fi
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
