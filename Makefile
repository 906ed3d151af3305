# axme: built with PGXS.  `make && make install`, then see README.md.
EXTENSION    = axme
MODULE_big   = axme
OBJS         = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
# The schema's current definition lives in sql/src/NN_<concern>.sql; make concatenates them in
# order into the fresh install script.  Released scripts (the first full script and every upgrade
# script axme--A--B.sql) are installed as they are.
DATA         = sql/axme--0.1.0.sql $(sort $(wildcard sql/axme--*--*.sql))
DATA_built   = sql/axme--$(EXTVERSION).sql
SQL_SRC      = $(sort $(wildcard sql/src/*.sql))
PG_CONFIG   ?= pg_config

PG_CPPFLAGS  = -Isrc
PG_CFLAGS    = -Wall -Wextra -Wno-unused-parameter -Werror
SHLIB_LINK   = -lcurl -lcrypto

# ---- Version: axme.control's default_version is the one place it is written by hand. ----
# The C code gets it as AXME_VERSION; META.json (PGXN) is made from META.json.in.
EXTVERSION  := $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" axme.control)
ifeq ($(EXTVERSION),)
$(error no default_version in axme.control)
endif
PG_CPPFLAGS += -DAXME_VERSION=\"$(EXTVERSION)\"
# ---- end of the version block (its rules follow the include of PGXS) ----

# Tests (scripts/test.sh runs them all, each suite in its own throwaway cluster).
# pg_regress: test/sql + test/expected, run with and without shared_preload_libraries=axme.
# Isolation: test/specs, expected output also in test/expected.
# `make installcheck` runs both against the server in PG*; REGRESS= or ISOLATION= skips one.
# REGRESS_OUTDIR / ISOLATION_OUTDIR choose where results and diffs go.
REGRESS_OUTDIR   ?= test
ISOLATION_OUTDIR ?= test/output_iso
REGRESS        = $(sort $(basename $(notdir $(wildcard test/sql/*.sql))))
REGRESS_OPTS   = --inputdir=test --outputdir=$(REGRESS_OUTDIR)
ISOLATION      = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --inputdir=test --outputdir=$(ISOLATION_OUTDIR)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild every object when a header changes (a stale object
# with an old struct layout reads the wrong fields).
$(OBJS): $(wildcard src/*.h)

sql/axme--$(EXTVERSION).sql: $(SQL_SRC) axme.control
	{ echo '-- axme $(EXTVERSION), the fresh install script: built by make from sql/src/*.sql (edit those).'; \
	  echo '\\echo Use "CREATE EXTENSION axme" to load this file. \\quit'; \
	  echo; echo "SET LOCAL check_function_bodies = off;"; \
	  for f in $(SQL_SRC); do echo; echo "-- ---- $$f"; echo; cat $$f; done; } > $@

# axme-gateway (gateway/): a PGXS PROGRAM with its own Makefile, built and installed with axme.
all: gateway-all
install: gateway-install
clean: gateway-clean
gateway-all gateway-install gateway-clean:
	$(MAKE) -C gateway $(patsubst gateway-%,%,$@) PG_CONFIG=$(PG_CONFIG)
.PHONY: gateway-all gateway-install gateway-clean
# ---- Version rules ----
# Every object is rebuilt when the version changes; META.json is built with the library and
# git-ignored; `make dist` makes the PGXN zip of HEAD with it.
$(OBJS): axme.control
all: META.json
META.json: META.json.in axme.control
	sed 's/@EXTVERSION@/$(EXTVERSION)/g' $< >$@
EXTRA_CLEAN += META.json
dist: META.json
	git archive --format zip --prefix=axme-$(EXTVERSION)/ --add-file META.json \
		-o axme-$(EXTVERSION).zip HEAD
.PHONY: dist
# ---- end of the version rules ----
