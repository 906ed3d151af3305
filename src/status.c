/*
 * status.c: what each axme worker is doing, in shared memory, for the view axme.worker_status.
 *
 * A worker takes a slot with axme_status_register(kind) once connected to its database and
 * reports its state, requests in flight, outcomes recorded and last error; the slot is freed
 * when the process exits.  kind is the process kind without "axme " (AXME_DELIVERY_WORKER_KIND,
 * worker.h).  The rows live in shared memory laid out by doorbell.h.  All calls are no-ops
 * without shared memory (not preloaded) or before registering.
 */
#include "postgres.h"

#include <stdarg.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "axme.h"
#include "doorbell.h"
#include "status.h"

static int	my_status = -1;

PG_FUNCTION_INFO_V1(axme_worker_status);

static void
status_release(int code, Datum arg)
{
	AxmeShared *ss = axme_shared();

	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->status_mutex);
	ss->status[my_status].pid = 0;
	SpinLockRelease(&ss->status_mutex);
	my_status = -1;
}

/*
 * Take a status slot for this process (a worker connected to its database).  kind: a short
 * name shown in axme.worker_status ("delivery worker", ...).  Silently does nothing when all
 * slots are taken or without shared memory.
 */
void
axme_status_register(const char *kind)
{
	AxmeShared *ss = axme_shared();

	if (ss == NULL || my_status >= 0)
		return;
	SpinLockAcquire(&ss->status_mutex);
	for (int i = 0; i < AXME_STATUS_SLOTS; i++)
	{
		AxmeWorkerStatus *w = &ss->status[i];

		if (w->pid != 0)
			continue;
		memset(w, 0, sizeof(AxmeWorkerStatus));
		w->pid = MyProcPid;
		w->dboid = MyDatabaseId;
		strlcpy(w->kind, kind, sizeof(w->kind));
		strlcpy(w->state, "starting", sizeof(w->state));
		w->started_at = GetCurrentTimestamp();
		my_status = i;
		break;
	}
	SpinLockRelease(&ss->status_mutex);
	if (my_status >= 0)
		before_shmem_exit(status_release, 0);
}

/* Set this worker's state (printf-style), e.g. "idle", "delivering", "cleanup". */
void
axme_status_state(const char *fmt,...)
{
	AxmeShared *ss = axme_shared();
	char		buf[128];
	va_list		ap;

	if (ss == NULL || my_status < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	SpinLockAcquire(&ss->status_mutex);
	strlcpy(ss->status[my_status].state, buf, sizeof(ss->status[my_status].state));
	SpinLockRelease(&ss->status_mutex);
}

/* Requests (or deliveries) this worker has in flight now. */
void
axme_status_in_flight(int n)
{
	AxmeShared *ss = axme_shared();

	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->status_mutex);
	ss->status[my_status].in_flight = n;
	SpinLockRelease(&ss->status_mutex);
}

/* n more outcomes recorded (deliveries done, whatever their result). */
void
axme_status_delivered(int n)
{
	AxmeShared *ss = axme_shared();
	int64		sec;
	AxmeWorkerStatus *w;
	int			b;

	if (ss == NULL || my_status < 0 || n <= 0)
		return;
	sec = GetCurrentTimestamp() / USECS_PER_SEC;
	b = (int) (sec % AXME_STATUS_RATE_SECONDS);
	SpinLockAcquire(&ss->status_mutex);
	w = &ss->status[my_status];
	w->total += n;
	if (w->bucket_sec[b] != sec)
	{
		w->bucket_sec[b] = sec;
		w->bucket_n[b] = 0;
	}
	w->bucket_n[b] += n;
	SpinLockRelease(&ss->status_mutex);
}

/* The last error this worker ran into (shown with its time). */
void
axme_status_error(const char *msg)
{
	AxmeShared *ss = axme_shared();

	if (ss == NULL || my_status < 0)
		return;
	SpinLockAcquire(&ss->status_mutex);
	strlcpy(ss->status[my_status].last_error, msg ? msg : "", sizeof(ss->status[my_status].last_error));
	ss->status[my_status].last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&ss->status_mutex);
}

/*
 * axme._worker_status(): one row per registered worker of the cluster (none without preload).
 */
Datum
axme_worker_status(PG_FUNCTION_ARGS)
{
	AxmeShared *ss = axme_shared();
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AxmeWorkerStatus *copy;
	int			n = 0;
	int64		now_sec = GetCurrentTimestamp() / USECS_PER_SEC;

	InitMaterializedSRF(fcinfo, 0);
	if (ss == NULL)
		PG_RETURN_VOID();
	copy = palloc(sizeof(AxmeWorkerStatus) * AXME_STATUS_SLOTS);
	SpinLockAcquire(&ss->status_mutex);
	for (int i = 0; i < AXME_STATUS_SLOTS; i++)
		if (ss->status[i].pid != 0)
			copy[n++] = ss->status[i];
	SpinLockRelease(&ss->status_mutex);

	for (int i = 0; i < n; i++)
	{
		AxmeWorkerStatus *w = &copy[i];
		Datum		values[10];
		bool		nulls[10];
		uint64		recent = 0;

		memset(nulls, 0, sizeof(nulls));
		/* the last AXME_STATUS_RATE_SECONDS full seconds */
		for (int b = 0; b < AXME_STATUS_RATE_SECONDS; b++)
			if (w->bucket_sec[b] < now_sec && w->bucket_sec[b] >= now_sec - AXME_STATUS_RATE_SECONDS)
				recent += w->bucket_n[b];
		values[0] = CStringGetTextDatum(w->kind);
		values[1] = ObjectIdGetDatum(w->dboid);
		values[2] = Int32GetDatum(w->pid);
		values[3] = CStringGetTextDatum(w->state);
		values[4] = Int32GetDatum(w->in_flight);
		values[5] = Float8GetDatum((double) recent / AXME_STATUS_RATE_SECONDS);
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

	/* databases left without a delivery worker: kind "none", no pid, since when in started_at */
	{
		Oid			dboids[AXME_DB_SLOTS];
		TimestampTz since[AXME_DB_SLOTS];
		bool		capped[AXME_DB_SLOTS];
		int			k = axme_unserved_databases(dboids, since, capped, AXME_DB_SLOTS);

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
