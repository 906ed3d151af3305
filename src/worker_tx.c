/*
 * worker_tx.c: the short transactions of axme's background workers (http claims and records,
 * timers, internal handlers, operations steps).
 *
 * A worker transaction is begun with axme_tx_begin() and ended with axme_tx_commit(), both in
 * the same memory context; on an ERROR in between, the worker's PG_CATCH calls axme_tx_abort()
 * to keep a copy of the error, roll back and carry on (a worker must not exit with requests in
 * flight or timers half-fired).  One transaction at a time per process: they do not nest.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "worker_tx.h"

/* the memory context current at axme_tx_begin(), restored by axme_tx_commit() */
static MemoryContext tx_caller = NULL;

/*
 * Start a transaction, connect SPI, push a snapshot and show `activity` in pg_stat_activity.
 * Errors: ERROR when SPI cannot connect.
 */
void
axme_tx_begin(const char *activity)
{
	tx_caller = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/*
 * Commit the transaction axme_tx_begin() started and return to the memory context current then
 * (CommitTransactionCommand leaves TopMemoryContext current, where a worker's per-iteration
 * allocations would pile up).  Flushes statistics (rate-limited by PostgreSQL).
 */
void
axme_tx_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(tx_caller);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* The memory context axme_tx_begin() was called in (TopMemoryContext before the first one). */
MemoryContext
axme_tx_caller(void)
{
	return tx_caller ? tx_caller : TopMemoryContext;
}

/*
 * In the PG_CATCH of a worker transaction: copy the error into `cxt`, flush it, roll the
 * transaction back (SPI and snapshots with it) and leave `cxt` current.  Returns the copy, which
 * the caller reports and frees (FreeErrorData).
 */
ErrorData *
axme_tx_abort(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return edata;
}
