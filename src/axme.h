/*
 * axme.h: declarations shared by the C files of axme.
 */
#ifndef AXME_H
#define AXME_H

#include "executor/spi.h"
#include "storage/condition_variable.h"
#include "utils/uuid.h"

#define AXME_VERSION "0.4.0"

/* wait_for callers sleep on one of these, chosen by a hash of the intent id */
#define AXME_WAIT_BUCKETS 128

typedef struct AxmeShared
{
	ConditionVariable waiters[AXME_WAIT_BUCKETS];
} AxmeShared;

/* GUCs (axme.c) */
extern int	axme_max_delivery_attempts;
extern int	axme_max_payload_bytes;

/* axme.c */
extern AxmeShared *axme_shmem(void);
extern SPIPlanPtr axme_keep_plan(const char *sql, int nargs, Oid *argtypes);
extern bool axme_lock_extension(void);

/* wakeup.c */
extern void axme_wakeup_init(void);
extern int	axme_wait_bucket(const pg_uuid_t *id);
extern void axme_queue_notify(int64 agent_id, const pg_uuid_t *id);

/* validate.c */
extern bool axme_address_is_valid(const char *s, size_t len);
extern bool axme_intent_type_is_valid(const char *s, size_t len);
extern void axme_check_address(const char *value, const char *argname);

/* caller.c */
extern char *axme_caller_name(void);
extern bool axme_caller_has(const char *role);
extern void axme_check_caller_may_send(void);
extern void axme_check_from_agent(const char *from_agent);
extern bool axme_schema_has(const char *relname, const char *colname);

/* actor.c */
extern const char *axme_set_actor(const char *actor);
extern const char *axme_actor(void);

/* render.c */
extern bool axme_reserved_send(void);

/* trace.c */
extern bool axme_traceparent_is_valid(const char *s);
extern bool axme_tracestate_is_valid(const char *s);

/* backoff.c */
extern int64 axme_backoff(int64 base_ms, int64 max_ms, int failures);

#endif							/* AXME_H */
