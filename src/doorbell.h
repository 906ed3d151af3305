/*
 * doorbell.h: axme's shared memory and the wake-ups sent at commit (doorbell.c).
 *
 * Backends ring the doorbell: what they write (a send, a timer, a terminal status, a change of
 * agents) is remembered while their transaction runs and announced at commit.  Workers answer:
 * they keep their latch and their plans in the per-database slot and read the flags set there.
 * Everything in shared memory is laid out here (the counters' slots in counters.h, included
 * below); it exists only when the library is in shared_preload_libraries (axme_shared() is NULL
 * otherwise, and every ring is a no-op).
 */
#ifndef AXME_DOORBELL_H
#define AXME_DOORBELL_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/uuid.h"

#include "counters.h"

/* databases served at once (one slot each) */
#define AXME_DB_SLOTS 256
/* wait_for callers sleep on one of these, chosen by a hash of the intent id */
#define AXME_WAIT_BUCKETS 128
/* rows of axme.worker_status */
#define AXME_STATUS_SLOTS 128
#define AXME_STATUS_RATE_SECONDS 10

/* wake_at while the delivery worker scans the timers: any commit of a timer rings */
#define AXME_WAKE_UNKNOWN PG_UINT64_MAX

typedef enum AxmeSlotState
{
	AXME_SLOT_UNUSED = 0,
	AXME_SLOT_SERVE,			/* should have a delivery worker (extension present or not yet known) */
	AXME_SLOT_NO_EXT			/* probed: no axme 0.2.0+; started again only on a new ring */
} AxmeSlotState;

/*
 * One database: its delivery worker (started by the launcher; it runs http, timers, operations
 * and stream wake-ups) and its handler worker (started by the delivery worker).  Fields other
 * than the atomics are protected by AxmeShared.mutex.
 */
typedef struct AxmeDbSlot
{
	Oid			dboid;
	AxmeSlotState state;
	uint32		signal_gen;		/* bumped by every ring at commit */
	uint32		seen_gen;		/* signal_gen when the delivery worker last started */
	bool		leave;			/* DROP DATABASE in progress: workers leave, none starts */
	pid_t		delivery_pid;	/* 0: no delivery worker attached */
	Latch	   *delivery_latch;
	pid_t		handler_pid;	/* 0: no handler worker */
	Latch	   *handler_latch;
	pg_atomic_uint64 wake_at;	/* when the timer loop looks next (TimestampTz; see above) */
	pg_atomic_uint32 poke;		/* set by backends: the timer loop looks now */
	TimestampTz unserved_since;	/* left without a delivery worker since (0: served or not wanted) */
	bool		unserved_capped;	/* because of axme.max_database_workers (else no bgworker slot) */
	bool		unserved_alerted;	/* the alert worker ran for this episode */
} AxmeDbSlot;

/* One row of axme.worker_status (status.c).  Protected by AxmeShared.status_mutex. */
typedef struct AxmeWorkerStatus
{
	pid_t		pid;			/* 0: free */
	Oid			dboid;
	char		kind[16];
	char		state[128];
	int			in_flight;
	uint64		total;
	int64		bucket_sec[AXME_STATUS_RATE_SECONDS];	/* outcomes recorded per second, a ring */
	uint32		bucket_n[AXME_STATUS_RATE_SECONDS];
	char		last_error[256];
	TimestampTz last_error_at;
	TimestampTz started_at;
} AxmeWorkerStatus;

typedef struct AxmeShared
{
	slock_t		mutex;			/* protects the slots, launcher_latch and rescan */
	Latch	   *launcher_latch;
	bool		rescan;			/* the launcher lists pg_database again */
	pg_atomic_uint32 agents_gen;	/* bumped at the commit of a change of agents' modes */
	AxmeDbSlot	slots[AXME_DB_SLOTS];
	ConditionVariable waiters[AXME_WAIT_BUCKETS];
	slock_t		status_mutex;
	AxmeWorkerStatus status[AXME_STATUS_SLOTS];
	AxmeCounters counters;		/* the totals of axme_*_total, per database and agent (counters.c) */
} AxmeShared;

/* set up from _PG_init: the commit callbacks always, the shared memory hooks when preloading */
extern void axme_doorbell_init(void);

/* ddl.c: the utility hook (DROP DATABASE, DROP EXTENSION, CREATE DATABASE), when preloading */
extern void axme_ddl_init(void);

/* The shared state, or NULL when the library was not preloaded (then there is none). */
extern AxmeShared *axme_shared(void);

/* the slot of a database in use (state not UNUSED), or -1; caller holds the mutex */
extern int	axme_slot_find(Oid dboid);

/*
 * The databases left without a delivery worker now (at most max), for axme.worker_status: their
 * OIDs, since when, and whether axme.max_database_workers is the cause.  Any backend; 0 without
 * preload.
 */
extern int	axme_unserved_databases(Oid *dboids, TimestampTz *since, bool *capped, int max);

/* --- rung by backends: announced at commit --------------------------------------------------- */
extern int	axme_wait_bucket(const pg_uuid_t *id);
extern void axme_ring_stream(int64 agent_id, const pg_uuid_t *id);
extern void axme_ring_delivery(void);
extern void axme_ring_timer(TimestampTz due);
extern void axme_ring_handler(void);

/* --- answered by workers --------------------------------------------------------------------- */
/* this process is a database's delivery worker: its own commits ring nobody */
extern void axme_doorbell_is_delivery_worker(void);

#endif							/* AXME_DOORBELL_H */
