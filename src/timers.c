/*
 * timers.c: the timer loop: fires due timers (deadlines, reminders, escalations: axme._fire_timers)
 * and sends stream wake-ups for intents that became due by themselves (a not_before, a retry
 * backoff: axme._timers_turn).
 *
 * It runs in each database's delivery worker (delivery_worker.c calls axme_timers_tick() on every
 * turn of its loop and caps its wait with axme_timers_timeout()).  That loop never runs user code
 * and never blocks on the network (libcurl multi), and a turn is a few short transactions, so a
 * due timer fires within about a second whatever internal handlers do.
 *
 * Wake-ups: the loop publishes in its database slot when it next looks (wake_at); a backend that
 * commits a timer due earlier pokes it (doorbell.c).  While it scans, wake_at is
 * AXME_WAKE_UNKNOWN, so nothing committed during a scan is missed.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "port/atomics.h"
#include "utils/timestamp.h"

#include "axme.h"
#include "doorbell.h"
#include "worker.h"
#include "worker_tx.h"

#define TIMER_BATCH 50			/* timers per transaction (keeps subtransactions under 64) */
#define TICK_BUDGET_MS 200		/* then back to the delivery loop, and again at once */
#define IDLE_MS 60000
#define STREAM_OVERLAP_MS 250
#define MISSING_RECHECK_MS 5000 /* axme 0.3.0 not installed (yet) in this database */

static AxmeDbSlot *my_slot = NULL;
static TimestampTz next_run = 0;
static TimestampTz stream_since = DT_NOBEGIN;
static bool want_handler = false;

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

		axme_tx_begin("axme delivery worker: firing timers");
		installed = timers_installed();
		if (!installed)
		{
			axme_tx_commit();
			want_handler = false;
			return TimestampTzPlusMilliseconds(start, MISSING_RECHECK_MS);
		}
		if (SPI_execute("SELECT axme._fire_timers(" CppAsString2(TIMER_BATCH) ")", false, 1)
			!= SPI_OK_SELECT)
			elog(ERROR, "axme._fire_timers failed");
		fired = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		axme_tx_commit();
		if (fired == TIMER_BATCH &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), TICK_BUDGET_MS))
			return 0;			/* more due: back at once, after the delivery loop's turn */
	}

	/* stream wake-ups, due inbox tasks, the next due time, whether internal agents exist */
	axme_tx_begin("axme delivery worker: stream wake-ups");
	if (!axme_lock_extension())
	{
		axme_tx_commit();				/* dropped meanwhile */
		want_handler = false;
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

			want_handler = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
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

/*
 * Called by the delivery worker on every turn of its loop, outside any transaction: fires due
 * timers and sends stream wake-ups when poked or when due.  Cheap otherwise (a clock read and an
 * atomic exchange).  Errors are reported as WARNINGs and retried a second later; they never end
 * the worker.  Returns whether a turn ran.
 */
bool
axme_timers_tick(int slot)
{
	TimestampTz now;
	bool		poked;

	if (axme_shared() == NULL || slot < 0)
		return false;
	my_slot = &axme_shared()->slots[slot];
	now = GetCurrentTimestamp();
	poked = pg_atomic_exchange_u32(&my_slot->poke, 0) != 0;
	if (!poked && now < next_run)
		return false;

	/* while scanning, any commit of a timer pokes us (see the header comment) */
	pg_atomic_write_u64(&my_slot->wake_at, AXME_WAKE_UNKNOWN);
	pg_memory_barrier();
	PG_TRY();
	{
		next_run = run_tick();
	}
	PG_CATCH();
	{
		ErrorData  *edata = axme_tx_abort(axme_tx_caller());

		ereport(WARNING,
				(errmsg("axme delivery worker: timer loop failed, will retry: %s", edata->message)));
		FreeErrorData(edata);
		next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
	}
	PG_END_TRY();
	pg_atomic_write_u64(&my_slot->wake_at, (uint64) next_run);
	return true;
}

/* The delivery worker's wait, capped by when the timer loop wants to run next (ms). */
long
axme_timers_timeout(long timeout_ms)
{
	TimestampTz now;
	long		ms;

	if (my_slot == NULL)
		return timeout_ms;
	if (pg_atomic_read_u32(&my_slot->poke) != 0)
		return 0;
	now = GetCurrentTimestamp();
	if (next_run <= now)
		return 0;
	ms = (long) ((next_run - now + 999) / 1000);
	return Min(timeout_ms, ms);
}

/* Whether this database has internal agents (as of the last turn): a handler worker should run. */
bool
axme_timers_want_handler(void)
{
	return want_handler;
}
