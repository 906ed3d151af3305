# axme: built with PGXS.  `make && make install`, then see README.md.
EXTENSION    = axme
MODULE_big   = axme
OBJS         = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA         = $(sort $(wildcard sql/axme--*.sql))
PG_CONFIG   ?= pg_config

PG_CPPFLAGS  = -Isrc
PG_CFLAGS    = -Wall -Wextra -Wno-unused-parameter -Werror
SHLIB_LINK   = -lcurl -lcrypto

# pg_regress suites; scripts/test.sh runs them with and without preload.
REGRESS      = $(sort $(basename $(notdir $(wildcard test/sql/*.sql))))
REGRESS_OPTS = --inputdir=test --outputdir=test
ISOLATION    = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --inputdir=test --outputdir=test/output_iso

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
