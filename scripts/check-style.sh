#!/bin/bash
# The part of the code style (.editorconfig, docs/contributing-style.md) a script can check
# without reformatting anything; scripts/test.sh runs it as the suite "style".
#   - C (src/*.c, src/*.h, scripts/*.c): indentation with tabs, never 4 or more leading spaces
#     (pgindent's layout; block comments' " * " lines are fine)
#   - Python and shell: indentation with spaces, no tabs at the start of a line
#   - every tracked text file: LF line ends, a final newline
#   - no ticket references (the word issue and a number, or the ticket system's name) outside the
#     frozen SQL scripts and the docs
# Prints one line per failed check with the offending lines, and last "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
check() {                # check NAME OUTPUT: passes when OUTPUT is empty
    if [ -z "$2" ]; then
        PASSED=$(( PASSED + 1 ))
    else
        FAILED=$(( FAILED + 1 ))
        echo "FAIL $1"
        echo "$2" | head -n 20 | sed 's/^/    /'
    fi
}

files() { git ls-files -- "$@" | grep -v '/node_modules/'; }

c_files=$(files 'src/*.c' 'src/*.h' 'scripts/*.c')
check "C: indent with tabs" "$(grep -nE '^ {4,}' $c_files)"

py_sh=$(files '*.py' '*.sh' .ci/run)
check "Python and shell: indent with spaces" "$(grep -nP '^\t' $py_sh)"

text=$(files | grep -vE '\.(png|zip)$')
check "LF line ends" "$(grep -lP '\r$' $text)"
# benchmark results are written by json.dump, which ends without one
check "final newline" "$(for f in $(echo "$text" | grep -vE '^bench/.*results[^/]*\.json$'); do [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ] && echo "$f"; done)"

# the three frozen scripts keep their words byte for byte; the docs speak for themselves
shipped=$(echo "$text" | grep -vE '^sql/axme--0\.1\.0\.sql$|^sql/axme--0\.1\.0--0\.2\.0\.sql$|^sql/axme--0\.2\.0--0\.3\.0\.sql$|^README\.md$|^CHANGELOG\.md$|^docs/')
words='\bissues? ?#?[0-9]|\btrack''er\b'      # split, so this line does not match itself
check "no ticket references" "$(grep -niE "$words" $shipped)"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
