/*
 * timers.c: the timer queue loop, stream wake-ups for what became due by itself, and the
 * supervision of the internal-handler worker (internal.c).
 *
 * Where the loop lives: in each database's http worker (worker.c calls axme_timers_tick() on
 * every turn of its loop and caps its wait with axme_timers_timeout()).  That loop never runs
 * user code and never blocks on the network (libcurl multi), and a turn is a few short
 * transactions, so a due timer fires within about a second whatever the handlers do; internal
 * handlers, which run arbitrary SQL for up to timeout_ms, get their own process (internal.c),
 * started and stopped by the http worker.
 *
 * Wake-ups: the worker publishes in shared memory when it next looks at the timers (wake_at).
 * A backend that commits a timer due earlier than that, or the first send to an internal agent
 * while no internal worker runs, pokes it (a flag, then the worker's latch).  While the worker
 * scans, wake_at is "unknown" (UINT64_MAX), so nothing committed during a scan is missed.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "axme.h"
#include "delivery.h"
#include "timers.h"
#include "worker_tx.h"

#define TIMER_SLOTS 256
#define TIMER_BATCH 50			/* timers per transaction (keeps subtransactions under 64) */
#define TICK_BUDGET_MS 200		/* then back to the http loop, and again at once */
#define IDLE_MS 60000
#define STREAM_OVERLAP_MS 250
#define MISSING_RECHECK_MS 5000 /* axme 0.3.0 not installed (yet) in this database */
#define WAKE_UNKNOWN PG_UINT64_MAX

PG_FUNCTION_INFO_V1(axme_wake_timers_sql);
PG_FUNCTION_INFO_V1(axme_wake_internal_sql);
PG_FUNCTION_INFO_V1(axme_notify_agent_n);
PG_FUNCTION_INFO_V1(axme_timers_wake_trigger);

static TimerShared *ts = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* ---------------------------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------------------------- */

static void
timers_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(TimerShared) + sizeof(TimerSlot) * TIMER_SLOTS));
}

static void
timers_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ts = ShmemInitStruct("axme timers", sizeof(TimerShared) + sizeof(TimerSlot) * TIMER_SLOTS,
						 &found);
	if (!found)
	{
		memset(ts, 0, sizeof(TimerShared) + sizeof(TimerSlot) * TIMER_SLOTS);
		SpinLockInit(&ts->mutex);
		for (int i = 0; i < TIMER_SLOTS; i++)
		{
			pg_atomic_init_u64(&ts->slots[i].wake_at, 0);
			pg_atomic_init_u32(&ts->slots[i].poke, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init: shared memory when preloading. */
void
axme_timers_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = timers_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = timers_shmem_startup;
}

/* The slot of a database (NULL: none, or no shared memory). */
TimerSlot *
axme_timer_slot(Oid dboid)
{
	static int	cached = -1;
	TimerSlot  *found = NULL;

	if (ts == NULL)
		return NULL;
	SpinLockAcquire(&ts->mutex);
	if (cached >= 0 && ts->slots[cached].dboid == dboid && ts->slots[cached].http_pid != 0)
		found = &ts->slots[cached];
	else
		for (int i = 0; i < TIMER_SLOTS; i++)
			if (ts->slots[i].dboid == dboid && ts->slots[i].http_pid != 0)
			{
				cached = i;
				found = &ts->slots[i];
				break;
			}
	SpinLockRelease(&ts->mutex);
	return found;
}

slock_t *
axme_timer_mutex(void)
{
	return &ts->mutex;
}

/* ---------------------------------------------------------------------------------------------
 * Backends: wake the worker at commit
 * ------------------------------------------------------------------------------------------- */

static bool callback_registered = false;
static bool pending_timer = false;
static TimestampTz pending_due = 0;
static bool pending_internal = false;

static void
poke_http_worker(TimerSlot *slot)
{
	if (slot != NULL)
		pg_atomic_write_u32(&slot->poke, 1);
	axme_worker_wake(MyDatabaseId);
}

static void
timers_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && (pending_timer || pending_internal))
	{
		TimerSlot  *slot = axme_timer_slot(MyDatabaseId);

		if (slot == NULL)
			axme_worker_wake(MyDatabaseId);	/* the launcher starts one */
		else
		{
			bool		poke = false;

			if (pending_timer &&
				(uint64) pending_due < pg_atomic_read_u64(&slot->wake_at))
				poke = true;
			if (pending_internal)
			{
				Latch	   *latch;

				SpinLockAcquire(&ts->mutex);
				latch = slot->internal_latch;
				SpinLockRelease(&ts->mutex);
				if (latch)
					SetLatch(latch);
				else
					poke = true;	/* the http worker starts the internal worker */
			}
			if (poke)
				poke_http_worker(slot);
		}
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		pending_timer = false;
		pending_internal = false;
		pending_due = 0;
	}
}

static void
register_callback(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(timers_xact_callback, NULL);
		callback_registered = true;
	}
}

/*
 * A timer row due at `due` was written in this transaction: at commit, wake the worker if it
 * plans to look later than that.  No-op without preload.
 */
void
axme_timers_note_due(TimestampTz due)
{
	if (ts == NULL)
		return;
	register_callback();
	if (!pending_timer || due < pending_due)
		pending_due = due;
	pending_timer = true;
}

/* An intent for an internal agent became due in this transaction: wake its worker at commit. */
void
axme_internal_note_due(void)
{
	if (ts == NULL)
		return;
	register_callback();
	pending_internal = true;
}

/* axme._wake_timers(): see axme_timers_note_due (due now). */
Datum
axme_wake_timers_sql(PG_FUNCTION_ARGS)
{
	axme_timers_note_due(0);
	PG_RETURN_VOID();
}

/* axme._wake_internal(): see axme_internal_note_due. */
Datum
axme_wake_internal_sql(PG_FUNCTION_ARGS)
{
	axme_internal_note_due();
	PG_RETURN_VOID();
}

/*
 * AFTER INSERT OR UPDATE OF due_at row trigger on axme.timers: whoever writes a timer row (send,
 * the reminder and escalation functions, an operator), the worker hears of it at commit when it
 * is due sooner than the worker planned to look.  No SPI, no catalog access: a few comparisons.
 */
Datum
axme_timers_wake_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	bool		isnull;
	Datum		due;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("axme._timers_wake_trigger() must be called as a trigger")));
	if (ts == NULL)
		return PointerGetDatum(NULL);
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	due = heap_getattr(tup, 3, td->tg_relation->rd_att, &isnull);	/* (intent_id, kind, due_at) */
	axme_timers_note_due(isnull ? 0 : DatumGetTimestampTz(due));
	return PointerGetDatum(NULL);
}

/*
 * axme._notify_agent_n(agent_id bigint, intent_id uuid, n bigint): queue the stream wake-up of
 * an agent counting n intents (one NOTIFY per agent at commit, see wakeup.c).
 */
Datum
axme_notify_agent_n(PG_FUNCTION_ARGS)
{
	int64		agent_id = PG_GETARG_INT64(0);
	pg_uuid_t  *id = PG_GETARG_UUID_P(1);
	int64		n = Min(PG_GETARG_INT64(2), 1000000);

	for (int64 k = 0; k < n; k++)
		axme_queue_notify(agent_id, id);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------------------------
 * The http worker's side: the timer loop and the internal worker's supervision
 * ------------------------------------------------------------------------------------------- */

static TimerSlot *my_slot = NULL;
static int	my_slot_index = -1;
static TimestampTz next_run = 0;
static TimestampTz stream_since = DT_NOBEGIN;
static bool want_internal = false;
static BackgroundWorkerHandle *internal_handle = NULL;
static TimestampTz internal_started = 0;
static bool warned_no_slot = false;

static void
tick_detach(int code, Datum arg)
{
	if (internal_handle != NULL)
		TerminateBackgroundWorker(internal_handle);
	SpinLockAcquire(&ts->mutex);
	my_slot->http_pid = 0;
	my_slot->http_latch = NULL;
	SpinLockRelease(&ts->mutex);
}

static bool
attach_slot(void)
{
	int			free_i = -1;

	SpinLockAcquire(&ts->mutex);
	for (int i = 0; i < TIMER_SLOTS; i++)
	{
		if (ts->slots[i].dboid == MyDatabaseId)
		{
			free_i = i;
			break;
		}
		if (free_i < 0 && ts->slots[i].http_pid == 0 && ts->slots[i].internal_pid == 0)
			free_i = i;
	}
	if (free_i >= 0)
	{
		TimerSlot  *s = &ts->slots[free_i];

		s->dboid = MyDatabaseId;
		s->http_pid = MyProcPid;
		s->http_latch = MyLatch;
		pg_atomic_write_u64(&s->wake_at, 0);
		my_slot = s;
		my_slot_index = free_i;
	}
	SpinLockRelease(&ts->mutex);
	if (my_slot == NULL)
		return false;
	before_shmem_exit(tick_detach, 0);
	return true;
}

static bool
timers_installed(void)
{
	bool		isnull;

	if (!axme_lock_extension())
		return false;
	if (SPI_execute("SELECT pg_catalog.to_regprocedure('axme._fire_timers(integer)') IS NOT NULL",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking for axme._fire_timers failed");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

static TimestampTz
get_ts(int col, TimestampTz if_null)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? if_null : DatumGetTimestampTz(d);
}

/* One turn of the timer loop; returns when to come back. */
static TimestampTz
run_tick(void)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz next;
	int			fired = TIMER_BATCH;
	bool		installed;
	Datum		args[2];
	Oid			argtypes[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};

	/* fire what is due, in batches of short transactions, within the turn's budget */
	while (fired == TIMER_BATCH)
	{
		bool		isnull;

		axme_tx_begin("axme: firing timers");
		installed = timers_installed();
		if (!installed)
		{
			axme_tx_commit();
			want_internal = false;
			return TimestampTzPlusMilliseconds(start, MISSING_RECHECK_MS);
		}
		if (SPI_execute("SELECT axme._fire_timers(" CppAsString2(TIMER_BATCH) ")", false, 1)
			!= SPI_OK_SELECT)
			elog(ERROR, "axme._fire_timers failed");
		fired = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		axme_tx_commit();
		if (fired == TIMER_BATCH &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), TICK_BUDGET_MS))
			return 0;			/* more due: back at once, after the http loop's turn */
	}

	/* stream wake-ups, due inbox tasks, the next due time, whether internal agents exist */
	axme_tx_begin("axme: stream wake-ups");
	if (!axme_lock_extension())
	{
		axme_tx_commit();				/* dropped meanwhile */
		want_internal = false;
		return TimestampTzPlusMilliseconds(start, MISSING_RECHECK_MS);
	}
	{
		TimestampTz upto = GetCurrentTimestamp();

		args[0] = TimestampTzGetDatum(stream_since);
		args[1] = TimestampTzGetDatum(upto);
		if (SPI_execute_with_args("SELECT next_due, internal_agents FROM axme._timers_turn($1, $2)",
								  2, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "axme._timers_turn failed");
		next = get_ts(1, DT_NOEND);
		{
			bool		isnull;

			want_internal = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 2, &isnull));
		}

		/*
		 * A transaction that committed a due time just behind `upto` is caught next time (the
		 * windows overlap by STREAM_OVERLAP_MS; an agent may then hear twice of one intent).
		 */
		stream_since = TimestampTzPlusMilliseconds(upto, -STREAM_OVERLAP_MS);
	}
	axme_tx_commit();
	return Min(next, TimestampTzPlusMilliseconds(GetCurrentTimestamp(), IDLE_MS));
}

static void
supervise_internal(void)
{
	pid_t		pid;

	if (internal_handle != NULL &&
		GetBackgroundWorkerPid(internal_handle, &pid) == BGWH_STOPPED)
	{
		pfree(internal_handle);
		internal_handle = NULL;
	}
	if (!want_internal || internal_handle != NULL)
		return;
	if (internal_started != 0 &&
		!TimestampDifferenceExceeds(internal_started, GetCurrentTimestamp(), 1000))
	{
		/* restarted less than a second ago: again on the next turn after that */
		next_run = Min(next_run, TimestampTzPlusMilliseconds(internal_started, 1000));
		return;
	}
	{
		BackgroundWorker w;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		memset(&w, 0, sizeof(w));
		w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		w.bgw_start_time = BgWorkerStart_RecoveryFinished;
		w.bgw_restart_time = BGW_NEVER_RESTART;	/* this worker restarts it */
		strlcpy(w.bgw_library_name, "axme", BGW_MAXLEN);
		strlcpy(w.bgw_function_name, "axme_internal_main", BGW_MAXLEN);
		snprintf(w.bgw_name, BGW_MAXLEN, "axme internal worker for database %u", MyDatabaseId);
		strlcpy(w.bgw_type, "axme internal worker", BGW_MAXLEN);
		w.bgw_main_arg = Int32GetDatum(my_slot_index);
		memcpy(w.bgw_extra, &MyDatabaseId, sizeof(Oid));
		w.bgw_notify_pid = MyProcPid;
		internal_started = GetCurrentTimestamp();
		if (RegisterDynamicBackgroundWorker(&w, &internal_handle))
			warned_no_slot = false;
		else if (!warned_no_slot)
		{
			internal_handle = NULL;
			warned_no_slot = true;
			ereport(WARNING,
					(errmsg("axme: no background worker slot free for the internal worker of database %u",
							MyDatabaseId),
					 errhint("Raise max_worker_processes.")));
		}
		MemoryContextSwitchTo(old);
	}
}

/*
 * Called by the http worker on every turn of its loop: fires due timers, sends stream wake-ups,
 * keeps the internal worker running while internal agents exist.  Cheap when nothing is due
 * (a clock read and an atomic exchange).  Errors are reported as WARNINGs and retried a second
 * later; they never end the http worker.
 */
void
axme_timers_tick(void)
{
	TimestampTz now;
	bool		poked;
	const char *previous_actor;

	if (ts == NULL)
		return;
	if (my_slot == NULL && !attach_slot())
		return;
	now = GetCurrentTimestamp();
	poked = pg_atomic_exchange_u32(&my_slot->poke, 0) != 0;
	if (!poked && now < next_run)
		return;

	/* while scanning, any commit of a timer pokes us (see the header comment) */
	pg_atomic_write_u64(&my_slot->wake_at, WAKE_UNKNOWN);
	pg_memory_barrier();
	previous_actor = axme_set_actor("axme:timer");	/* the actor of its events (actor.c) */
	PG_TRY();
	{
		next_run = run_tick();
	}
	PG_CATCH();
	{
		ErrorData  *edata = axme_tx_abort(axme_tx_caller());

		ereport(WARNING,
				(errmsg("axme: timer loop failed, will retry: %s", edata->message)));
		FreeErrorData(edata);
		next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
	}
	PG_END_TRY();
	axme_set_actor(previous_actor);
	supervise_internal();
	pg_atomic_write_u64(&my_slot->wake_at, (uint64) next_run);
}

/* The http worker's wait, capped by when the timer loop wants to run next (ms). */
long
axme_timers_timeout(long timeout_ms)
{
	TimestampTz now;
	long		ms;

	if (ts == NULL || my_slot == NULL)
		return timeout_ms;
	if (pg_atomic_read_u32(&my_slot->poke) != 0)
		return 0;
	now = GetCurrentTimestamp();
	if (next_run <= now)
		return 0;
	ms = (long) ((next_run - now + 999) / 1000);
	return Min(timeout_ms, ms);
}

/* The slot at an index (for the internal worker, which gets its index from the http worker). */
TimerSlot *
axme_timer_slot_at(int index)
{
	if (ts == NULL || index < 0 || index >= TIMER_SLOTS)
		return NULL;
	return &ts->slots[index];
}
