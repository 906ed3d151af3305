/*
 * wait.c: axme.wait_for(intent_id, timeout), the sender's blocking wait for a terminal status.
 *
 * The waiter sleeps on the condition variable of its intent's bucket; the transaction that makes
 * the intent terminal broadcasts it at commit (doorbell.c).  Every sleep is also capped at one
 * second, so a wake-up that cannot come (a prepared transaction, a row changed by hand) only
 * delays the return.  Without shared memory (library not preloaded) it re-checks every 50 ms.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "axme.h"
#include "doorbell.h"

PG_FUNCTION_INFO_V1(axme_wait_for);

#define MAX_WAIT_MS (3600 * 1000L)
#define RECHECK_MS 1000L
#define FALLBACK_RECHECK_MS 50L

static SPIPlanPtr status_plan = NULL;
static SPIPlanPtr status_plan_legacy = NULL;
static SPIPlanPtr document_plan = NULL;

/*
 * Convert the timeout argument to milliseconds; 22023 outside 0 .. 1 hour.
 */
static long
timeout_ms(Interval *span)
{
	int64		us;

	if (span->month != 0 ||
		pg_mul_s64_overflow((int64) span->day, USECS_PER_DAY, &us) ||
		pg_add_s64_overflow(us, span->time, &us) ||
		us < 0 || us > MAX_WAIT_MS * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"timeout\" must be between 0 and 1 hour, got %s",
						DatumGetCString(DirectFunctionCall1(interval_out,
															IntervalPGetDatum(span))))));
	return (long) ((us + 999) / 1000);
}

/*
 * Look the intent up with a fresh snapshot.  Returns true when it is terminal; sets *mine when
 * the row version was written by the current transaction (which nobody else can see yet).
 */
static bool
check_intent(Datum id, bool *mine)
{
	Datum		args[1] = {id};
	bool		isnull;
	char	   *status;
	TransactionId xmin;
	bool		terminal;

	/* SQL older than 0.3.0 (before ALTER EXTENSION UPDATE) has no read checks to make */
	bool		secured = axme_schema_has("agents", "db_role");
	Oid			argtypes[1] = {UUIDOID};

	if (secured && status_plan == NULL)
		status_plan = axme_keep_plan("SELECT status, xmin, axme._can_read_intent(sender_role, agent_id)"
									 " FROM axme.intents WHERE intent_id = $1",
									 1, argtypes);
	if (!secured && status_plan_legacy == NULL)
		status_plan_legacy = axme_keep_plan("SELECT status, xmin FROM axme.intents WHERE intent_id = $1",
											1, argtypes);
	if (SPI_execute_plan(secured ? status_plan : status_plan_legacy, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "intent status query failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("intent %s does not exist",
						DatumGetCString(DirectFunctionCall1(uuid_out, id)))));
	/* read access: the sending role, the receiver's role, admins (42501, as get_intent) */
	if (secured && !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for intent %s",
						DatumGetCString(DirectFunctionCall1(uuid_out, id))),
				 errdetail("Only its sending role, its receiver's role (agent option db_role) and "
						   "members of axme_admin may read an intent.")));
	status = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	terminal = strcmp(status, "COMPLETED") == 0 || strcmp(status, "FAILED") == 0 ||
		strcmp(status, "CANCELED") == 0 || strcmp(status, "TIMED_OUT") == 0;
	*mine = TransactionIdIsCurrentTransactionId(xmin);
	SPI_freetuptable(SPI_tuptable);
	return terminal;
}

/*
 * axme.wait_for(intent_id uuid, timeout interval) RETURNS jsonb
 *
 * Blocks until the intent is terminal and returns its get_intent document, or NULL after timeout.
 * Errors: 22023 NULL argument or timeout outside 0 .. 1 hour; P0002 unknown intent; 42501 the caller
 * may not read the intent (not its sender's or receiver's role, not an admin); 55000 when
 * called in the transaction that last wrote the intent, or above READ COMMITTED, while the intent
 * is not terminal yet (no commit could ever become visible to the caller).
 * Honours statement_timeout and query cancel.
 */
Datum
axme_wait_for(PG_FUNCTION_ARGS)
{
	Datum		id;
	long		budget_ms;
	TimestampTz start;
	AxmeShared *shared = axme_shared();
	ConditionVariable *cv = NULL;
	Datum		result = (Datum) 0;
	bool		found = false;
	bool		first = true;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"intent_id\" must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"timeout\" must not be null")));
	id = PG_GETARG_DATUM(0);
	budget_ms = timeout_ms(PG_GETARG_INTERVAL_P(1));
	start = GetCurrentTimestamp();

	if (shared != NULL)
		cv = &shared->waiters[axme_wait_bucket(DatumGetUUIDP(id))];

	SPI_connect();
	if (document_plan == NULL)
	{
		Oid			argtypes[1] = {UUIDOID};

		document_plan = axme_keep_plan("SELECT axme._document(i) FROM axme.intents i WHERE i.intent_id = $1",
									   1, argtypes);
	}

	for (;;)
	{
		bool		mine;
		long		remaining;

		/* Prepare before checking, so a broadcast between check and sleep is not lost. */
		if (cv != NULL)
			ConditionVariablePrepareToSleep(cv);

		if (check_intent(id, &mine))
		{
			Datum		args[1] = {id};
			bool		isnull;

			if (SPI_execute_plan(document_plan, args, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "get_intent query failed");
			if (SPI_processed != 1)		/* deleted since check_intent (cleanup, by hand) */
				ereport(ERROR,
						(errcode(ERRCODE_NO_DATA_FOUND),
						 errmsg("intent %s does not exist",
								DatumGetCString(DirectFunctionCall1(uuid_out, id)))));
			result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			result = SPI_datumTransfer(result, false, -1);
			found = true;
			break;
		}
		if (first)
		{
			if (mine)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("wait_for cannot wait in the transaction that sent or changed the intent"),
						 errdetail("The intent's current state was written by this transaction, which has not committed."),
						 errhint("Commit first, then call wait_for.")));
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("wait_for requires the READ COMMITTED isolation level"),
						 errdetail("Under a transaction snapshot the terminal transition could never become visible."),
						 errhint("Call wait_for in autocommit or in a READ COMMITTED transaction.")));
			first = false;
		}

		remaining = budget_ms - (long) ((GetCurrentTimestamp() - start) / 1000);
		if (remaining <= 0)
			break;

		if (cv != NULL)
			(void) ConditionVariableTimedSleep(cv, Min(remaining, RECHECK_MS), PG_WAIT_EXTENSION);
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(remaining, FALLBACK_RECHECK_MS), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}

	if (cv != NULL)
		ConditionVariableCancelSleep();
	SPI_finish();

	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
