/*
 * delivery_worker.c: the axme delivery worker of a database, started by the launcher.
 *
 * One loop does everything of a database that never runs user code and never blocks: claim due
 * http deliveries (claim.c), send them (http.c), record their outcomes (claim.c), fire timers and
 * send stream wake-ups for what became due by itself (timers.c), alert checks and cleanup
 * (ops.c); then it waits on its latch and curl's sockets, with a timeout only for what is due
 * later.  It also keeps the database's handler worker (handler_worker.c) running while internal
 * agents exist: handlers run arbitrary SQL for up to timeout_ms, so they get their own process.
 * It leaves (exit 0) when its database has no axme 0.2.0+ or is being dropped.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "axme.h"
#include "delivery.h"
#include "doorbell.h"
#include "status.h"
#include "worker.h"

#define IDLE_RECHECK_MS 60000L
#define HANDLER_RESTART_MS 1000

static AxmeShared *ws = NULL;
static int	my_slot = -1;

/* ---------------------------------------------------------------------------------------------
 * The handler worker's supervision
 * ------------------------------------------------------------------------------------------- */

static BackgroundWorkerHandle *handler_handle = NULL;
static TimestampTz handler_started = 0;
static bool warned_no_bgworker = false;
static TimestampTz handler_retry_at = DT_NOEND;	/* supervise again then, if not before */

/*
 * Keep the handler worker running while internal agents exist (the timer loop finds out), at
 * most one start a second.  Returns the latest time to come back (DT_NOEND: no need).
 */
static TimestampTz
supervise_handler_worker(void)
{
	pid_t		pid;

	if (handler_handle != NULL &&
		GetBackgroundWorkerPid(handler_handle, &pid) == BGWH_STOPPED)
	{
		pfree(handler_handle);
		handler_handle = NULL;
	}
	if (!axme_timers_want_handler() || handler_handle != NULL)
		return DT_NOEND;
	if (handler_started != 0 &&
		!TimestampDifferenceExceeds(handler_started, GetCurrentTimestamp(), HANDLER_RESTART_MS))
		return TimestampTzPlusMilliseconds(handler_started, HANDLER_RESTART_MS);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		handler_started = GetCurrentTimestamp();
		if (axme_worker_start(AXME_KIND_HANDLER_WORKER, my_slot, MyDatabaseId, &handler_handle))
			warned_no_bgworker = false;
		else
		{
			handler_handle = NULL;
			if (!warned_no_bgworker)
				ereport(WARNING,
						(errmsg("axme delivery worker: no background worker slot free for the "
								"handler worker of database %u", MyDatabaseId),
						 errhint("Raise max_worker_processes.")));
			warned_no_bgworker = true;
		}
		MemoryContextSwitchTo(old);
	}
	return DT_NOEND;
}

/* ---------------------------------------------------------------------------------------------
 * The loop
 * ------------------------------------------------------------------------------------------- */

/* At exit: the handler worker ends too, the launcher hears of it. */
static void
worker_detach(int code, Datum arg)
{
	if (handler_handle != NULL)
		TerminateBackgroundWorker(handler_handle);
	SpinLockAcquire(&ws->mutex);
	ws->slots[my_slot].delivery_pid = 0;
	ws->slots[my_slot].delivery_latch = NULL;
	SpinLockRelease(&ws->mutex);
	if (ws->launcher_latch)
		SetLatch(ws->launcher_latch);
}

static void
worker_leave(AxmeSlotState state)
{
	SpinLockAcquire(&ws->mutex);
	if (ws->slots[my_slot].state != AXME_SLOT_UNUSED)
		ws->slots[my_slot].state = state;
	SpinLockRelease(&ws->mutex);
	proc_exit(0);
}

/*
 * The loop: one turn handles whatever is ready (finished requests, due claims, timers, operations
 * steps), then waits.  loop_cxt is reset every turn; deliveries live in their own context.
 */
static void
deliver_loop(void)
{
	MemoryContext loop_cxt = AllocSetContextCreate(TopMemoryContext, "axme delivery worker loop",
												   ALLOCSET_DEFAULT_SIZES);
	TimestampTz next_due = 0;
	bool		want_claim = true;
	List	   *unrecorded = NIL;
	TimestampTz record_retry_at = 0;

	for (;;)
	{
		MemoryContext old = MemoryContextSwitchTo(loop_cxt);
		List	   *done;
		int			free_slots;
		TimestampTz now;
		long		timeout;
		bool		woke;

		axme_worker_check();
		/* timers and stream wake-ups (timers.c); after a turn of theirs, the handler worker */
		if (axme_timers_tick(my_slot) || GetCurrentTimestamp() >= handler_retry_at)
			handler_retry_at = supervise_handler_worker();

		done = axme_http_collect();
		if (done != NIL)
		{
			/* kept in TopMemoryContext until recorded: a failed record is tried again */
			MemoryContextSwitchTo(TopMemoryContext);
			unrecorded = list_concat(unrecorded, done);
			MemoryContextSwitchTo(loop_cxt);
			list_free(done);
		}
		if (unrecorded != NIL &&
			(record_retry_at == 0 || GetCurrentTimestamp() >= record_retry_at))
		{
			int			rc = axme_queue_record(unrecorded);

			if (rc == AXME_RECORD_GONE)
				worker_leave(AXME_SLOT_NO_EXT);
			if (rc == AXME_RECORD_OK)
			{
				axme_status_delivered(list_length(unrecorded));
				unrecorded = NIL;
				record_retry_at = 0;
				want_claim = true;	/* slots freed; retries may be due earlier */
			}
			else
				record_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 500);
		}

		/*
		 * Claim also when the pipeline is full: agents with nothing in flight may still take one
		 * each (see axme._http_claim), so endpoints that hang and fill axme.max_in_flight never
		 * hold up the others.  A full pipeline is then re-checked on wake-ups and completions.
		 */
		free_slots = Max(axme_max_in_flight - axme_http_in_flight(), 0);
		now = GetCurrentTimestamp();
		if (want_claim || now >= next_due)
		{
			int64	   *agents;
			int		   *counts;
			int			nbusy = axme_http_busy(&agents, &counts);
			bool		gone;
			List	   *claimed;
			ListCell   *lc;

			want_claim = false;
			claimed = axme_queue_claim(free_slots, nbusy, agents, counts, &next_due, &gone);
			if (gone)
				worker_leave(AXME_SLOT_NO_EXT);
			foreach(lc, claimed)
				axme_http_start(lfirst(lc));
			if (list_length(claimed) >= free_slots)
				want_claim = true;
		}

		axme_ops_tick();		/* alerts, cleanup (ops.c) when due */

		now = GetCurrentTimestamp();
		if (unrecorded != NIL)
			timeout = 500;		/* a failed record is tried again soon */
		else if (want_claim && axme_max_in_flight > axme_http_in_flight())
			timeout = 0;
		else if (next_due == DT_NOEND)
			timeout = IDLE_RECHECK_MS;
		else if (next_due <= now)
			timeout = axme_http_in_flight() >= axme_max_in_flight ? IDLE_RECHECK_MS : 0;
		else
			timeout = Min(IDLE_RECHECK_MS, (long) ((next_due - now) / 1000) + 1);

		timeout = axme_timers_timeout(timeout);
		if (handler_retry_at != DT_NOEND)
			timeout = Min(timeout, (long) Max((handler_retry_at - now) / 1000 + 1, 0));
		timeout = Min(timeout, axme_ops_next_ms());
		axme_status_in_flight(axme_http_in_flight());
		axme_status_state(axme_http_in_flight() > 0 ? "delivering" : "idle");
		pgstat_report_activity(STATE_IDLE, NULL);
		if (axme_http_wait(timeout, &woke) > 0 || woke)
			want_claim = true;
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_cxt);
	}
}

/*
 * An axme older than the library is installed (or none): wait, saying why in the log and in
 * axme.worker_status, until ALTER EXTENSION axme UPDATE (whose commit wakes us; we also look
 * every 5 s).  Leaves when the extension is not there at all or the database is being dropped.
 */
static void
wait_for_update(void)
{
	char		installed[64];
	bool		logged = false;

	for (;;)
	{
		int			v = axme_ops_check_version(installed, sizeof(installed));

		if (v < 0)
			worker_leave(AXME_SLOT_NO_EXT);
		if (v > 0)
			return;
		if (!logged)
			ereport(LOG,
					(errmsg("axme delivery worker: database \"%s\" has axme %s installed, older than the library (%s); "
							"waiting for ALTER EXTENSION axme UPDATE",
							axme_ops_dbname,
							installed, AXME_VERSION)));
		logged = true;
		SpinLockAcquire(&ws->mutex);
		ws->slots[my_slot].state = AXME_SLOT_SERVE;
		SpinLockRelease(&ws->mutex);
		axme_status_state("waiting for ALTER EXTENSION axme UPDATE (installed %s, library %s)",
						  installed, AXME_VERSION);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5000L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		axme_worker_check();
	}
}

/*
 * Entry point of the delivery worker (started by the launcher; bgw_main_arg: its slot,
 * bgw_extra: the database).  Leaves at once when the slot is not, or no longer, its own.
 */
void
axme_delivery_worker_main(Datum arg)
{
	Oid			dboid;
	bool		taken;

	my_slot = DatumGetInt32(arg);
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	ws = axme_shared();
	axme_worker_init_signals();

	SpinLockAcquire(&ws->mutex);
	taken = ws->slots[my_slot].dboid != dboid || ws->slots[my_slot].delivery_pid != 0 ||
		ws->slots[my_slot].leave || ws->slots[my_slot].state == AXME_SLOT_UNUSED;
	if (!taken)
	{
		ws->slots[my_slot].delivery_pid = MyProcPid;
		ws->slots[my_slot].delivery_latch = MyLatch;
		pg_atomic_write_u64(&ws->slots[my_slot].wake_at, 0);
		ws->slots[my_slot].seen_gen = ws->slots[my_slot].signal_gen;
	}
	SpinLockRelease(&ws->mutex);
	if (taken)
		proc_exit(0);
	before_shmem_exit(worker_detach, 0);
	axme_worker_set_slot(my_slot);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	axme_doorbell_is_delivery_worker();
	pgstat_report_appname(AXME_DELIVERY_WORKER);
	axme_status_register(AXME_DELIVERY_WORKER_KIND);
	wait_for_update();

	if (!axme_queue_ready(true))
		worker_leave(AXME_SLOT_NO_EXT);
	SpinLockAcquire(&ws->mutex);
	ws->slots[my_slot].state = AXME_SLOT_SERVE;
	SpinLockRelease(&ws->mutex);

	axme_http_init();
	deliver_loop();
}
