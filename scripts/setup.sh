#!/bin/bash
# setup.sh: install everything axme needs on Debian bookworm, then build and install it.
#
# Idempotent: apt runs only when a package below is missing, so reruns take seconds.
# Run as root, or as a user with sudo.  Used by scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every package the build, the tests, the demo and the benchmark use, by name.
PACKAGES=(
    build-essential            # gcc, make
    postgresql-15              # server, pg_virtualenv (postgresql-common)
    postgresql-client-15       # psql, pg_dump, pg_restore
    postgresql-common          # pg_virtualenv, pg_createcluster
    postgresql-server-dev-15   # PGXS, headers, pg_regress, pg_isolation_regress
    libcurl4-openssl-dev       # the http worker (libcurl)
    libssl-dev                 # webhook signatures (OpenSSL)
    python3                    # /usr/bin/python3 for the Python tests and the demo
    python3-psycopg2           # psycopg2 for the Python tests and the demo
    postgresql-15-pgq3         # PgQ, the benchmark's comparison queue
    nodejs                     # the npm standardwebhooks verifier in the http tests
    openssl                    # the http tests' private CA and TLS certificates
    prometheus                 # promtool: checks the example alert rules and metrics() output
    ca-certificates
    libmicrohttpd-dev          # axme-gateway's HTTP server (epoll, suspend/resume for SSE)
    libpq-dev                  # axme-gateway's database connections
    chromium                   # the web inbox's browser test (headless)
    chromium-driver            # ... driven by selenium through chromedriver
    python3-selenium
)

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully installed package
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q "${PACKAGES[@]}"
else
    echo "setup: all ${#PACKAGES[@]} packages already installed"
fi

# Debian's nodejs comes without npm (nodesource's includes it)
if ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing npm"
    "${SUDO[@]}" apt-get install -y -q npm
fi

# Build (with -Werror, see Makefile) and install into the PostgreSQL 15 tree.
make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
"${SUDO[@]}" make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install
echo "setup: axme built and installed into $(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)"
