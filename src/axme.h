/*
 * axme.h: declarations shared by the C files of axme: the version, the settings, and the small
 * helpers every part uses (plans and schema probes, address and type rules, the caller's roles,
 * the retry backoff).
 */
#ifndef AXME_H
#define AXME_H

#include "executor/spi.h"

/* the version, from axme.control's default_version (the Makefile passes -DAXME_VERSION) */
#ifndef AXME_VERSION
#error "AXME_VERSION is not defined: build with the Makefile, which reads it from axme.control"
#endif

/* guc.c */
extern void axme_define_gucs(void);
extern int	axme_max_delivery_attempts;
extern int	axme_max_payload_bytes;
extern int	axme_max_in_flight;
extern int	axme_max_database_workers;
extern int	axme_disable_after;
extern int	axme_cleanup_interval;
extern int	axme_retention_terminal;
extern int	axme_retention_dead_letters;
extern int	axme_idempotency_ttl;
extern int	axme_attempts_retention;
extern int	axme_cleanup_batch_size;
extern int	axme_alert_dead_letter_threshold;
extern double axme_alert_success_rate;
extern bool axme_require_receipts;
extern char *axme_tls_files_directory;

/* schema.c */
extern SPIPlanPtr axme_keep_plan(const char *sql, int nargs, Oid *argtypes);
extern bool axme_schema_has(const char *relname, const char *colname);
extern Oid	axme_schema_column_type(const char *relname, const char *colname);
extern bool axme_lock_extension(void);

/* validate.c */
extern bool axme_address_is_valid(const char *s, size_t len);
extern bool axme_intent_type_is_valid(const char *s, size_t len);
extern void axme_check_address(const char *value, const char *argname);

/* caller.c */
extern char *axme_caller_name(void);
extern bool axme_caller_has(const char *role);
extern void axme_check_caller_may_send(void);
extern void axme_check_from_agent(const char *from_agent);

/* url.c */
extern char *axme_tls_file_problem(const char *value, bool must_exist);

/* backoff.c */
extern int64 axme_backoff(int64 base_ms, int64 max_ms, int failures);

#endif							/* AXME_H */
