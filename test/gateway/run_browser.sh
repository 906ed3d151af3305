#!/bin/sh
# The web inbox's browser test inside a throwaway cluster made by scripts/test.sh (PG* set):
# headless chromium through chromedriver; screenshots in $AXME_TEST_LOGDIR/screenshots.
cd "$(dirname "$0")/../.." || exit 1
ulimit -n 65536 2>/dev/null || true
exec /usr/bin/python3 test/gateway/test_browser.py
