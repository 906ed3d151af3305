/*
 * unserved.c: the alert worker.  A database left without a delivery worker (axme.max_database_workers
 * reached, or no background worker slot free) is not only a WARNING in the server log: the launcher
 * keeps it in shared memory (axme.worker_status shows a row of kind "none", metrics()
 * axme_database_unserved) and starts this short-lived worker once per such episode, which connects
 * to that database and writes an alert row (kind database_unserved) into its axme.alerts, then
 * exits.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

#include "axme.h"
#include "doorbell.h"
#include "worker.h"

/*
 * The alert worker: one transaction in its database, an alert row when axme 0.4.0+ is there
 * (axme._alert exists), then exit 0 (never restarted).
 */
void
axme_alert_worker_main(Datum arg)
{
	int			slot = DatumGetInt32(arg);
	AxmeShared *ss = axme_shared();
	bool		capped;
	Oid			dboid;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	SpinLockAcquire(&ss->mutex);
	capped = ss->slots[slot].unserved_capped;
	SpinLockRelease(&ss->mutex);
	axme_worker_init_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname(AXME_ALERT_WORKER);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (axme_lock_extension())
	{
		Oid			argtypes[2] = {TEXTOID, INT4OID};
		Datum		args[2];

		args[0] = CStringGetTextDatum(capped ? "max_database_workers" : "max_worker_processes");
		args[1] = Int32GetDatum(axme_max_database_workers);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args(
				"SELECT axme._alert(NULL, 'database_unserved', pg_catalog.jsonb_build_object("
				"  'reason', $1, 'max_database_workers', $2, 'message',"
				"  CASE $1 WHEN 'max_database_workers'"
				"    THEN 'axme.max_database_workers is reached: no axme worker serves this database'"
				"    ELSE 'no background worker slot is free (max_worker_processes): no axme worker serves this database' END))"
				" WHERE pg_catalog.to_regprocedure('axme._alert(text,text,jsonb)') IS NOT NULL"
				"   AND pg_catalog.to_regclass('axme.alerts') IS NOT NULL",
				2, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "recording the database_unserved alert failed");
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}
