/*
 * status.c: what each axme worker is doing, in shared memory, for the view axme.worker_status.
 *
 * A worker takes a slot with axme_status_register(kind) once connected to its database and
 * reports its state, requests in flight, outcomes recorded and last error; the slot is freed
 * when the process exits.  Any worker kind can use it (the http worker says "http").  All calls
 * are no-ops without shared memory (not preloaded) or before registering.
 */
#include "postgres.h"

#include <stdarg.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "delivery.h"
#include "ops.h"

#define STATUS_SLOTS 128
#define RATE_SECONDS 10

typedef struct WorkerStatus
{
	pid_t		pid;			/* 0: free */
	Oid			dboid;
	char		kind[16];
	char		state[128];
	int			in_flight;
	uint64		total;
	int64		bucket_sec[RATE_SECONDS];	/* outcomes recorded per second, a ring */
	uint32		bucket_n[RATE_SECONDS];
	char		last_error[256];
	TimestampTz last_error_at;
	TimestampTz started_at;
} WorkerStatus;

typedef struct StatusShared
{
	slock_t		mutex;
	WorkerStatus w[STATUS_SLOTS];
} StatusShared;

static StatusShared *ss = NULL;
static int	my_status = -1;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(axme_worker_status);

static void
status_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(StatusShared)));
}

static void
status_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ss = ShmemInitStruct("axme worker status", sizeof(StatusShared), &found);
	if (!found)
	{
		memset(ss, 0, sizeof(StatusShared));
		SpinLockInit(&ss->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* From _PG_init while preloading: reserve the shared memory. */
void
axme_status_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = status_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = status_shmem_startup;
}

static void
status_release(int code, Datum arg)
{
	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->mutex);
	ss->w[my_status].pid = 0;
	SpinLockRelease(&ss->mutex);
	my_status = -1;
}

/*
 * Take a status slot for this process (a worker connected to its database).  kind: a short
 * name shown in axme.worker_status ("http", "internal", ...).  Silently does nothing when all
 * slots are taken or without shared memory.
 */
void
axme_status_register(const char *kind)
{
	if (ss == NULL || my_status >= 0)
		return;
	SpinLockAcquire(&ss->mutex);
	for (int i = 0; i < STATUS_SLOTS; i++)
	{
		WorkerStatus *w = &ss->w[i];

		if (w->pid != 0)
			continue;
		memset(w, 0, sizeof(WorkerStatus));
		w->pid = MyProcPid;
		w->dboid = MyDatabaseId;
		strlcpy(w->kind, kind, sizeof(w->kind));
		strlcpy(w->state, "starting", sizeof(w->state));
		w->started_at = GetCurrentTimestamp();
		my_status = i;
		break;
	}
	SpinLockRelease(&ss->mutex);
	if (my_status >= 0)
		before_shmem_exit(status_release, 0);
}

/* Set this worker's state (printf-style), e.g. "idle", "delivering", "cleanup". */
void
axme_status_state(const char *fmt,...)
{
	char		buf[128];
	va_list		ap;

	if (ss == NULL || my_status < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	SpinLockAcquire(&ss->mutex);
	strlcpy(ss->w[my_status].state, buf, sizeof(ss->w[my_status].state));
	SpinLockRelease(&ss->mutex);
}

/* Requests (or deliveries) this worker has in flight now. */
void
axme_status_in_flight(int n)
{
	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->mutex);
	ss->w[my_status].in_flight = n;
	SpinLockRelease(&ss->mutex);
}

/* n more outcomes recorded (deliveries done, whatever their result). */
void
axme_status_delivered(int n)
{
	int64		sec;
	WorkerStatus *w;
	int			b;

	if (ss == NULL || my_status < 0 || n <= 0)
		return;
	sec = GetCurrentTimestamp() / USECS_PER_SEC;
	b = (int) (sec % RATE_SECONDS);
	SpinLockAcquire(&ss->mutex);
	w = &ss->w[my_status];
	w->total += n;
	if (w->bucket_sec[b] != sec)
	{
		w->bucket_sec[b] = sec;
		w->bucket_n[b] = 0;
	}
	w->bucket_n[b] += n;
	SpinLockRelease(&ss->mutex);
}

/* The last error this worker ran into (shown with its time). */
void
axme_status_error(const char *msg)
{
	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->mutex);
	strlcpy(ss->w[my_status].last_error, msg ? msg : "", sizeof(ss->w[my_status].last_error));
	ss->w[my_status].last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&ss->mutex);
}

/*
 * axme._worker_status(): one row per registered worker of the cluster (none without preload).
 */
Datum
axme_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WorkerStatus *copy;
	int			n = 0;
	int64		now_sec = GetCurrentTimestamp() / USECS_PER_SEC;

	InitMaterializedSRF(fcinfo, 0);
	if (ss == NULL)
		PG_RETURN_VOID();
	copy = palloc(sizeof(WorkerStatus) * STATUS_SLOTS);
	SpinLockAcquire(&ss->mutex);
	for (int i = 0; i < STATUS_SLOTS; i++)
		if (ss->w[i].pid != 0)
			copy[n++] = ss->w[i];
	SpinLockRelease(&ss->mutex);

	for (int i = 0; i < n; i++)
	{
		WorkerStatus *w = &copy[i];
		Datum		values[10];
		bool		nulls[10];
		uint64		recent = 0;

		memset(nulls, 0, sizeof(nulls));
		/* the last RATE_SECONDS full seconds */
		for (int b = 0; b < RATE_SECONDS; b++)
			if (w->bucket_sec[b] < now_sec && w->bucket_sec[b] >= now_sec - RATE_SECONDS)
				recent += w->bucket_n[b];
		values[0] = CStringGetTextDatum(w->kind);
		values[1] = ObjectIdGetDatum(w->dboid);
		values[2] = Int32GetDatum(w->pid);
		values[3] = CStringGetTextDatum(w->state);
		values[4] = Int32GetDatum(w->in_flight);
		values[5] = Float8GetDatum((double) recent / RATE_SECONDS);
		values[6] = Int64GetDatum((int64) w->total);
		if (w->last_error_at != 0)
		{
			values[7] = CStringGetTextDatum(w->last_error);
			values[8] = TimestampTzGetDatum(w->last_error_at);
		}
		else
			nulls[7] = nulls[8] = true;
		values[9] = TimestampTzGetDatum(w->started_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	/* databases left without a worker: kind "none", no pid, since when in started_at */
	{
		Oid			dboids[STATUS_SLOTS];
		TimestampTz since[STATUS_SLOTS];
		bool		capped[STATUS_SLOTS];
		int			k = axme_unserved_databases(dboids, since, capped, STATUS_SLOTS);

		for (int i = 0; i < k; i++)
		{
			Datum		values[10];
			bool		nulls[10];

			memset(nulls, 0, sizeof(nulls));
			values[0] = CStringGetTextDatum("none");
			values[1] = ObjectIdGetDatum(dboids[i]);
			nulls[2] = true;
			values[3] = CStringGetTextDatum(capped[i]
											? psprintf("not served: axme.max_database_workers (%d) reached",
													   axme_max_database_workers)
											: "not served: no background worker slot free (max_worker_processes)");
			values[4] = Int32GetDatum(0);
			values[5] = Float8GetDatum(0.0);
			values[6] = Int64GetDatum(0);
			nulls[7] = nulls[8] = true;
			values[9] = TimestampTzGetDatum(since[i]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	PG_RETURN_VOID();
}
