/*
 * counters.h: axme's monotonic counters (counters.c): intents sent and ended, http attempts by
 * outcome, per agent.  Counted in the backend while a transaction runs, added to shared memory
 * at its commit (doorbell.c's commit callback calls in here), flushed to axme.counters by the
 * delivery worker.  The shared table itself is laid out in doorbell.h with the rest.
 */
#ifndef AXME_COUNTERS_H
#define AXME_COUNTERS_H

#include "port/atomics.h"
#include "storage/spin.h"

typedef enum AxmeCounter
{
	AXME_C_SENT = 0,
	AXME_C_COMPLETED,
	AXME_C_FAILED,				/* FAILED, not a dead letter */
	AXME_C_DEAD_LETTERED,
	AXME_C_TIMED_OUT,
	AXME_C_CANCELED,
	AXME_C_ATTEMPT_FIRST,		/* http attempts by outcome, in the order of counters.c's names */
	AXME_C_ATTEMPT_SUCCESS = AXME_C_ATTEMPT_FIRST,
	AXME_C_ATTEMPT_HTTP_4XX,
	AXME_C_ATTEMPT_HTTP_5XX,
	AXME_C_ATTEMPT_HTTP_OTHER,
	AXME_C_ATTEMPT_TIMEOUT,
	AXME_C_ATTEMPT_CONNECT,
	AXME_C_ATTEMPT_DNS,
	AXME_C_ATTEMPT_TLS,
	AXME_C_ATTEMPT_NETWORK,
	AXME_C_ATTEMPT_REDIRECT,
	AXME_C_ATTEMPT_SSRF_BLOCKED,
	AXME_C_ATTEMPT_INVALID_URL,
	AXME_C_ATTEMPT_OTHER,
	AXME_N_COUNTERS
} AxmeCounter;

/* (database, agent) pairs counted at once in shared memory, cluster-wide */
#define AXME_COUNTER_SLOTS 4096

/*
 * One agent of one database.  The key is written before `used` is set; it changes only when the
 * database or its extension is dropped: dboid becomes InvalidOid, and the slot stays taken (open
 * addressing probes past it) until the server restarts, which does not load it back.
 */
typedef struct AxmeCounterSlot
{
	pg_atomic_uint32 used;
	Oid			dboid;
	int64		agent_id;
	pg_atomic_uint64 n[AXME_N_COUNTERS];	/* since `epoch` (doorbell.h, AxmeCounters) */
} AxmeCounterSlot;

typedef struct AxmeCounters
{
	slock_t		mutex;			/* taken only to claim a free slot */
	int64		epoch;			/* new after every start without a clean shutdown's file */
	pg_atomic_uint64 lost;		/* counts not kept: every slot taken */
	AxmeCounterSlot slots[AXME_COUNTER_SLOTS];
} AxmeCounters;

/* --- called by doorbell.c --------------------------------------------------------------------- */
/* at shared memory startup (postmaster): attach, and on a fresh segment load the saved file */
extern void axme_counters_shmem_startup(AxmeCounters *c, bool found);
/* the transaction's counts: added to shared memory at commit, forgotten at abort */
extern void axme_counters_at_commit(void);
extern void axme_counters_at_abort(void);
extern void axme_counters_subxact(bool commit, int level);

/* --- called by ddl.c --------------------------------------------------------------------------- */
/* DROP EXTENSION axme: this database's counters go when the transaction commits */
extern void axme_counters_forget_at_commit(void);
/* DROP DATABASE done: its counters go now */
extern void axme_counters_forget(Oid dboid);

#endif							/* AXME_COUNTERS_H */
