#!/bin/bash
# The memory-error check: builds axme with AddressSanitizer and UndefinedBehaviorSanitizer
# (-fsanitize=address,undefined), installs that build, runs the regression and http suites
# (scripts/test.sh regress http) against servers that load the sanitizer runtimes, and fails on
# any sanitizer report.  Afterwards the normal build of this tree is installed again.
#
#     bash scripts/sanitize.sh              (after scripts/setup.sh; scripts/test.sh's suite "sanitize")
#
# Debian's postgres is not built with ASan, so the runtime is preloaded into the server only:
# LD_PRELOAD in an environment file that pg_virtualenv passes to pg_createcluster --environment
# (the regression suite) and that test/http/cluster.py puts in front of pg_ctl (the http suite),
# both through $AXME_TEST_SERVER_ENV.  scripts/asan_early_init.c is preloaded with it (see there
# why postgres hangs at start without it).
#
# What it covers: every access axme's C code makes to memory that malloc, the stack or a global
# owns (libcurl's and OpenSSL's buffers, the worker's stack buffers for addresses, headers and
# signatures, static tables), the string and memory functions ASan intercepts (memcpy, strlen,
# ...) wherever they are called in the server, and undefined behaviour in axme's code (invalid
# shifts, misaligned or null pointer use, out-of-range bool/enum loads, bad casts of floats,
# division by zero; not signed overflow, which -fwrapv, PostgreSQL's flag, defines).  What it does
# not: memory inside palloc chunks is invisible to ASan (PostgreSQL's allocator carves chunks out
# of big malloc'd blocks, so reading past a palloc'd string or using a chunk after its context was
# reset is not reported unless it leaves the block); shared memory (mmap'd, not tracked); code the
# two suites do not reach; leaks (detect_leaks=0: backends exit without freeing, by design).
#
# Reports: the runtimes write them to the server's stderr, that is its log (the log_path of
# ASAN_OPTIONS is not honoured in backends), so every server's log is kept in $OUT/serverlogs
# (AXME_TEST_SERVER_LOGDIR) and searched, as is $OUT/reports (log_path, for what writes there).
# The build, the environment file and the suites' logs stay in $OUT ($AXME_SANITIZE_DIR, default a
# new directory under /tmp).
# AXME_SANITIZE_SUITES chooses other suites of scripts/test.sh (default "regress http"; "isolation
# python dump-restore" also runs clean, in about three more minutes).
# Prints the inner summary, each report, and last a line "N passed, M failed" (reports count as
# failures); exits non-zero when anything failed.  Takes about four minutes on two cores.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
OUT=${AXME_SANITIZE_DIR:-$(mktemp -d /tmp/axme-sanitize.XXXXXX)}
SUITES=${AXME_SANITIZE_SUITES:-regress http}
# -fno-sanitize-recover: undefined behaviour ends the process like a memory error does, whatever
# UBSAN_OPTIONS the runtime sees
SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

# the server runs as postgres: it must reach the reports directory and the preloaded helper
mkdir -p "$OUT/build" "$OUT/reports" "$OUT/logs" "$OUT/serverlogs"
chmod 755 "$OUT"
chmod 1777 "$OUT/reports"
echo "sanitize: work directory $OUT"

# Put the normal build back whatever happens, so later suites and users get the usual library.
restore() {
    if ! { make -s -C "$ROOT" >/dev/null && make -s -C "$ROOT" install >/dev/null; }; then
        echo "sanitize: could not reinstall the normal build of $ROOT"
    fi
}
trap restore EXIT

fail() {
    echo "sanitize: $*"
    echo "0 passed, 1 failed"
    exit 1
}

# Build a copy of the sources, so this tree's objects stay the normal build.
tar -C "$ROOT" --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - \
    Makefile axme.control $(ls META.json.in 2>/dev/null) src sql gateway | tar -C "$OUT/build" -xf - ||
    fail "copying the sources failed"
make -s -C "$OUT/build" clean >/dev/null 2>&1
make -s -C "$OUT/build" COPT="$SANITIZE" >"$OUT/build.log" 2>&1 &&
    make -s -C "$OUT/build" install >>"$OUT/build.log" 2>&1 ||
    { cat "$OUT/build.log"; fail "the sanitizer build failed (log: $OUT/build.log)"; }
gcc -shared -fPIC -O2 -Wall -o "$OUT/asan_early_init.so" scripts/asan_early_init.c -ldl ||
    fail "building scripts/asan_early_init.c failed"
chmod 755 "$OUT/asan_early_init.so"

ASAN_LIB=$(gcc -print-file-name=libasan.so)
[ -e "$ASAN_LIB" ] || fail "no libasan.so (gcc's libasan is needed)"
cat >"$OUT/server.env" <<EOF
# written by scripts/sanitize.sh: the environment of the sanitized servers
LD_PRELOAD = '$ASAN_LIB $OUT/asan_early_init.so'
ASAN_OPTIONS = 'detect_leaks=0:abort_on_error=1:log_path=$OUT/reports/asan'
UBSAN_OPTIONS = 'print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$OUT/reports/ubsan'
EOF

AXME_TEST_SERVER_ENV="$OUT/server.env" AXME_TEST_SERVER_LOGDIR="$OUT/serverlogs" AXME_TEST_SKIP_SETUP=1 AXME_TEST_SUITES="$SUITES" \
    AXME_TEST_LOGDIR="$OUT/logs" bash scripts/test.sh >"$OUT/test.log" 2>&1
rc=$?
sed -n '/^==== axme test summary/,$p' "$OUT/test.log" | grep -vE '^[0-9]+ passed, [0-9]+ failed'
grep -E '^---- ' -A 40 "$OUT/test.log" | head -n 200

line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/test.log" | tail -n 1)
PASSED=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p'); PASSED=${PASSED:-0}
FAILED=$(echo "$line" | sed -nE 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/p'); FAILED=${FAILED:-0}
if [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; then FAILED=1; fi

# A report is a sanitizer's error line in a server log or in a file of $OUT/reports.
PATTERN='ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer|ERROR: LeakSanitizer'
REPORTS=0
for f in "$OUT"/serverlogs/* "$OUT"/reports/*; do
    [ -s "$f" ] || continue
    n=$(grep -cE "$PATTERN" "$f")
    [ "$n" -gt 0 ] || continue
    REPORTS=$(( REPORTS + n ))
    echo "---- sanitizer report(s) in $f"
    grep -E -A 30 "$PATTERN" "$f" | head -n 80 | sed 's/^/    /'
done
servers=$(ls "$OUT"/serverlogs | wc -l)
echo "sanitize: $REPORTS report line(s) in the logs of $servers server(s) ($OUT/serverlogs)"
[ "$servers" -gt 0 ] || { echo "sanitize: no server log was kept"; FAILED=$(( FAILED + 1 )); }
echo "$PASSED passed, $(( FAILED + REPORTS )) failed"
[ "$FAILED" -eq 0 ] && [ "$REPORTS" -eq 0 ]
