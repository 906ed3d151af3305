/*
 * handler_worker.c: the axme handler worker of a database: runs the SQL handlers of its internal
 * agents.  Started (and restarted, and stopped) by that database's delivery worker
 * (delivery_worker.c) while internal agents exist.
 *
 * One intent at a time: claim it (axme._internal_claim, its own transaction: DELIVERED with a
 * lease of timeout_ms + 30 s), then in a second transaction run the agent's handler
 * schema.function(intent jsonb) RETURNS jsonb in a subtransaction, as the agent's db_role or
 * else the role that registered it (SetUserIdAndSecContext with SECURITY_LOCAL_USERID_CHANGE and
 * SECURITY_RESTRICTED_OPERATION: the handler cannot SET ROLE back, nor leave session state
 * behind), search_path pinned to pg_catalog, pg_temp, and a statement timeout of timeout_ms; then
 * record the outcome in the same transaction: COMPLETED with the returned jsonb
 * (axme._internal_done), or a failed attempt (axme._internal_failed: retry after the backoff,
 * then dead letter handler_error).  When the intent stopped being this run's meanwhile (its
 * deadline passed, someone canceled it), the whole transaction rolls back, the handler's work
 * with it.  A handler never runs in the delivery worker, so it cannot delay webhooks or timers.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "axme.h"
#include "doorbell.h"
#include "status.h"
#include "worker.h"
#include "worker_tx.h"

#define IDLE_RECHECK_MS 5000L
#define ERROR_TEXT_CAP 2000		/* bytes of a handler's error message kept */

typedef struct Claim
{
	Datum		intent_id;		/* uuid, palloc'd */
	int			attempt;
	char	   *handler;
	char	   *run_as;
	bool		run_as_ok;
	int			timeout_ms;
} Claim;

static AxmeDbSlot *slot = NULL;

/* At exit: the delivery worker notices and starts another one if internal agents remain. */
static void
handler_detach(int code, Datum arg)
{
	AxmeShared *shared = axme_shared();
	Latch	   *delivery_latch;

	SpinLockAcquire(&shared->mutex);
	if (slot->handler_pid == MyProcPid)
	{
		slot->handler_pid = 0;
		slot->handler_latch = NULL;
	}
	delivery_latch = slot->delivery_latch;
	SpinLockRelease(&shared->mutex);
	pg_atomic_write_u32(&slot->poke, 1);
	if (delivery_latch)
		SetLatch(delivery_latch);
}

static void
report_and_abort(MemoryContext cxt, const char *what)
{
	ErrorData  *edata = axme_tx_abort(cxt);

	if (edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE)
		ereport(LOG,
				(errmsg("axme handler worker: %s: %s", what, edata->message),
				 errdetail("The handler's work was rolled back.")));
	else
		ereport(WARNING, (errmsg("axme handler worker: %s failed: %s", what, edata->message)));
	FreeErrorData(edata);
}

/*
 * Claim one due intent.  Returns true with *c filled (in cxt), or false with *next_due set.
 */
static bool
claim(Claim *c, TimestampTz *next_due, MemoryContext cxt)
{
	volatile bool got = false;

	*next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), IDLE_RECHECK_MS);
	PG_TRY();
	{
		bool		isnull;
		bool		ready;

		axme_tx_begin("axme handler worker: claiming");	/* in cxt */
		ready = axme_lock_extension();
		if (ready)
		{
			if (SPI_execute("SELECT pg_catalog.to_regprocedure('axme._internal_claim()') IS NOT NULL",
							true, 1) != SPI_OK_SELECT)
				elog(ERROR, "checking for axme._internal_claim failed");
			ready = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		}
		if (!ready)
		{
			axme_tx_commit();
			proc_exit(0);		/* no axme 0.3.0 here: the delivery worker starts us when needed */
		}
		if (SPI_execute("SELECT intent_id, attempt, handler, run_as, run_as_checked, timeout_ms,"
						" next_due FROM axme._internal_claim()", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "axme._internal_claim failed");
		if (SPI_processed == 1)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			Datum		d;

			d = SPI_getbinval(tup, desc, 7, &isnull);
			if (!isnull)
				*next_due = DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, desc, 1, &isnull);
			if (!isnull)
			{
				MemoryContext old = MemoryContextSwitchTo(cxt);
				pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

				memcpy(id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
				c->intent_id = UUIDPGetDatum(id);
				c->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
				c->handler = SPI_getvalue(tup, desc, 3);
				c->run_as = SPI_getvalue(tup, desc, 4);
				c->run_as_ok = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
				c->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
				MemoryContextSwitchTo(old);
				got = true;
			}
		}
		axme_tx_commit();		/* back in cxt */
	}
	PG_CATCH();
	{
		report_and_abort(cxt, "claiming for internal handlers");
		*next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		got = false;
	}
	PG_END_TRY();
	return got;
}

/* An error message cut to ERROR_TEXT_CAP bytes on a character boundary. */
static char *
clip(const char *msg)
{
	int			len = strlen(msg);

	if (len <= ERROR_TEXT_CAP)
		return pstrdup(msg);
	len = pg_mbcliplen(msg, len, ERROR_TEXT_CAP);
	return psprintf("%.*s... (%d bytes cut)", len, msg, (int) strlen(msg) - len);
}

/*
 * Run the handler of a claimed intent and record the outcome, in one transaction.
 */
static void
run(Claim *c, MemoryContext cxt)
{
	PG_TRY();
	{
		Oid			argtypes[6] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, BOOLOID};
		Datum		args[6];
		char		nulls[7] = "      ";
		bool		isnull;
		Jsonb	   *volatile doc = NULL;
		volatile Oid fn = InvalidOid;
		volatile Oid role = InvalidOid;
		volatile Datum result = (Datum) 0;
		volatile bool result_null = true;
		volatile bool ok = false;
		const char *volatile reason = "handler_error";
		const char *volatile sqlstate = NULL;
		char	   *volatile message = NULL;
		volatile bool retry = true;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, c->handler);
		if (!axme_lock_extension())
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("extension \"axme\" was dropped")));
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		args[0] = c->intent_id;
		args[1] = CStringGetTextDatum(c->handler);
		args[2] = CStringGetTextDatum(c->run_as);
		{
			Oid			t3[3] = {UUIDOID, TEXTOID, TEXTOID};

			if (SPI_execute_with_args(
					"SELECT axme.get_intent($1),"
					" pg_catalog.to_regprocedure($2 OPERATOR(pg_catalog.||) '(jsonb)')::pg_catalog.oid,"
					/* 0.4.0 claims name the role by OID (a digit string), older ones by name */
					" (SELECT r.oid FROM pg_catalog.pg_roles r WHERE CASE"
					"   WHEN $3 OPERATOR(pg_catalog.~) '^[0-9]+$'"
					"   THEN r.oid OPERATOR(pg_catalog.=) $3::pg_catalog.oid"
					"   ELSE r.rolname OPERATOR(pg_catalog.=) $3 END)",
					3, t3, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "reading the intent for its handler failed");
		}
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			doc = DatumGetJsonbP(SPI_datumTransfer(d, false, -1));
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
			if (!isnull)
				fn = DatumGetObjectId(d);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
			if (!isnull)
				role = DatumGetObjectId(d);
		}
		SPI_finish();
		if (OidIsValid(role))	/* the name, for the messages (the claim may give an OID) */
			c->run_as = MemoryContextStrdup(cxt, GetUserNameFromId(role, false));

		if (!OidIsValid(fn))
			message = psprintf("handler %s(jsonb) does not exist", c->handler);
		else if (!OidIsValid(role))
			message = psprintf("role %s the handler runs as does not exist", c->run_as);
		else if (!c->run_as_ok)
		{
			message = psprintf("refused: handler %s would run as superuser \"%s\" (option db_role)",
							   c->handler, c->run_as);
			retry = false;
		}
		else if (pg_proc_aclcheck(fn, role, ACL_EXECUTE) != ACLCHECK_OK)
			message = psprintf("role \"%s\" may not execute handler %s", c->run_as, c->handler);
		if (message != NULL)
			sqlstate = "42501";
		else
		{
			MemoryContext oldcontext = CurrentMemoryContext;
			ResourceOwner oldowner = CurrentResourceOwner;
			Oid			save_user;
			int			save_sec;

			GetUserIdAndSecContext(&save_user, &save_sec);
			BeginInternalSubTransaction(NULL);
			MemoryContextSwitchTo(oldcontext);
			PG_TRY();
			{
				int			nest;
				FmgrInfo	flinfo;

				LOCAL_FCINFO(fcinfo, 1);

				SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
									   SECURITY_RESTRICTED_OPERATION);
				nest = NewGUCNestLevel();
				(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
										 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
				PushActiveSnapshot(GetTransactionSnapshot());
				fmgr_info(fn, &flinfo);
				InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
				fcinfo->args[0].value = JsonbPGetDatum(doc);
				fcinfo->args[0].isnull = false;
				enable_timeout_after(STATEMENT_TIMEOUT, c->timeout_ms);
				result = FunctionCallInvoke(fcinfo);
				result_null = fcinfo->isnull;
				disable_timeout(STATEMENT_TIMEOUT, false);
				QueryCancelPending = false; /* a timeout that fired just after the return */
				if (!result_null)
				{
					MemoryContextSwitchTo(oldcontext);
					result = JsonbPGetDatum(DatumGetJsonbPCopy(result));
				}
				PopActiveSnapshot();
				AtEOXact_GUC(true, nest);
				SetUserIdAndSecContext(save_user, save_sec);
				ReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(oldcontext);
				CurrentResourceOwner = oldowner;
				ok = true;
			}
			PG_CATCH();
			{
				ErrorData  *edata;

				disable_timeout(STATEMENT_TIMEOUT, false);
				QueryCancelPending = false;
				MemoryContextSwitchTo(oldcontext);
				edata = CopyErrorData();
				FlushErrorState();
				RollbackAndReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(oldcontext);
				CurrentResourceOwner = oldowner;
				SetUserIdAndSecContext(save_user, save_sec);
				sqlstate = unpack_sql_state(edata->sqlerrcode);
				if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
				{
					reason = "timeout";
					message = psprintf("handler %s ran longer than timeout_ms (%d ms)",
									   c->handler, c->timeout_ms);
				}
				else
					message = clip(edata->message ? edata->message : "(no message)");
				FreeErrorData(edata);
			}
			PG_END_TRY();
		}

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		args[1] = Int32GetDatum(c->attempt);
		if (ok)
		{
			Oid			t3[3] = {UUIDOID, INT4OID, JSONBOID};

			args[2] = result;
			nulls[2] = result_null ? 'n' : ' ';
			if (SPI_execute_with_args("SELECT axme._internal_done($1, $2, $3)", 3, t3, args, nulls,
									  false, 1) != SPI_OK_SELECT)
				elog(ERROR, "axme._internal_done failed");
		}
		else
		{
			args[2] = CStringGetTextDatum(reason);
			args[3] = CStringGetTextDatum(sqlstate);
			args[4] = CStringGetTextDatum(message);
			args[5] = BoolGetDatum(retry);
			if (SPI_execute_with_args(
					"SELECT axme._internal_failed($1, $2, pg_catalog.jsonb_build_object("
					"'reason', $3, 'sqlstate', $4, 'message', $5), $6)",
					6, argtypes, args, nulls, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "axme._internal_failed failed");
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		report_and_abort(cxt, "recording a handler run");
	}
	PG_END_TRY();
}

/*
 * Entry point of the handler worker (started by the delivery worker of the database;
 * bgw_main_arg: the database's slot, bgw_extra: the database).
 */
void
axme_handler_worker_main(Datum arg)
{
	Oid			dboid;
	bool		taken;
	MemoryContext cxt;

	AxmeShared *shared = axme_shared();
	int			index = DatumGetInt32(arg);

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	axme_worker_init_signals();
	if (shared == NULL || index < 0 || index >= AXME_DB_SLOTS)
		proc_exit(0);
	slot = &shared->slots[index];
	SpinLockAcquire(&shared->mutex);
	taken = slot->dboid != dboid || slot->leave ||
		(slot->handler_pid != 0 && kill(slot->handler_pid, 0) == 0);
	if (!taken)
	{
		slot->handler_pid = MyProcPid;
		slot->handler_latch = MyLatch;
	}
	SpinLockRelease(&shared->mutex);
	if (taken)
		proc_exit(0);
	before_shmem_exit(handler_detach, 0);
	axme_worker_set_slot(index);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(AXME_HANDLER_WORKER);
	axme_set_actor("axme:handler-worker");	/* the actor of its events (actor.c) */
	axme_status_register(AXME_HANDLER_WORKER_KIND);
	cxt = AllocSetContextCreate(TopMemoryContext, "axme handler worker", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		Claim		c;
		TimestampTz next_due;
		TimestampTz now;
		long		timeout;

		MemoryContextSwitchTo(cxt);
		axme_worker_check();
		if (claim(&c, &next_due, cxt))
		{
			axme_status_state("handling");
			axme_status_in_flight(1);
			run(&c, cxt);
			axme_status_in_flight(0);
			axme_status_delivered(1);
			MemoryContextReset(cxt);
			continue;
		}
		axme_status_state("idle");
		MemoryContextReset(cxt);
		now = GetCurrentTimestamp();
		if (next_due <= now)
			continue;
		timeout = Min(IDLE_RECHECK_MS, (long) ((next_due - now + 999) / 1000));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
