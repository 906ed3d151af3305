/*
 * ops.c: operations: the periodic cleanup and alert checks the delivery worker runs between
 * deliveries, and the check of the installed SQL version against the library's (the settings
 * they read are in guc.c).
 *
 * The worker calls axme_ops_tick() on every turn of its loop; it does something only when an
 * alert check and a copy of the counters into axme.counters (every 10 s) or a cleanup batch
 * (every axme.cleanup_interval, then batch after batch until nothing is left, one short
 * transaction each) is due, and bounds the worker's sleep with axme_ops_next_ms().  Errors are reported as WARNINGs and in axme.worker_status; they never
 * end the worker.
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "axme.h"
#include "status.h"
#include "worker.h"
#include "worker_tx.h"

#define ALERT_CHECK_MS 10000

char		axme_ops_dbname[NAMEDATALEN] = "";

static TimestampTz next_alert_check = 0;
static TimestampTz last_cleanup = 0;	/* start of the last cleanup run */
static bool cleanup_more = false;

/* When the next cleanup run is due (axme.cleanup_interval after the last; SIGHUP applies). */
static TimestampTz
next_cleanup(void)
{
	if (last_cleanup == 0)		/* first turn: clean up 30 s after the worker started */
		last_cleanup = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   30000 - (int64) axme_cleanup_interval * 1000);
	return TimestampTzPlusMilliseconds(last_cleanup, (int64) axme_cleanup_interval * 1000);
}

/* "1.2.3" as a number to compare: 1002003 (parts above 999 are clamped). */
static long
version_number(const char *v)
{
	long		parts[3] = {0, 0, 0};
	int			k = 0;

	for (const char *p = v; *p && k < 3; p++)
	{
		if (*p >= '0' && *p <= '9')
			parts[k] = Min(parts[k] * 10 + (*p - '0'), 999);
		else if (*p == '.')
			k++;
		else
			break;
	}
	return parts[0] * 1000000 + parts[1] * 1000 + parts[2];
}

/*
 * Compare the axme installed in this database with the library (AXME_VERSION): -1 when the
 * extension is not installed, 0 when it is older (installed gets its version), 1 otherwise.
 * Opens and commits its own transaction.
 */
int
axme_ops_check_version(char *installed, size_t len)
{
	int			result = -1;

	axme_tx_begin("axme delivery worker: checking the extension version");
	strlcpy(axme_ops_dbname, get_database_name(MyDatabaseId) ? get_database_name(MyDatabaseId) : "?",
			sizeof(axme_ops_dbname));
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'axme'",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the axme version failed");
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		strlcpy(installed, v ? v : "", len);
		result = version_number(installed) >= version_number(AXME_VERSION) ? 1 : 0;
	}
	axme_tx_commit();
	return result;
}

/*
 * Run one SQL statement returning one value in a transaction of its own; errors become a
 * WARNING and the worker's last error.  Returns the value as text (palloc'd in the caller's
 * context) or NULL.
 */
static char *
run_step(const char *sql, const char *what)
{
	MemoryContext caller = CurrentMemoryContext;
	char	   *volatile result = NULL;

	PG_TRY();
	{
		axme_tx_begin(sql);
		if (axme_lock_extension())
		{
			/*
			 * These steps read many tables: give way to DDL (DROP EXTENSION, DROP TABLE ...)
			 * rather than deadlock with it: a lock wait longer than this fails the step, which
			 * is tried again later; the DDL's own deadlock check (deadlock_timeout) comes later.
			 */
			if (SPI_execute("SELECT pg_catalog.set_config('lock_timeout', '200ms', true)", false, 0) != SPI_OK_SELECT)
				elog(ERROR, "setting lock_timeout failed");
			if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "%s failed", what);
			if (SPI_processed == 1)
			{
				char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

				if (v)
					result = MemoryContextStrdup(caller, v);
			}
		}
		axme_tx_commit();
	}
	PG_CATCH();
	{
		ErrorData  *edata = axme_tx_abort(caller);

		/* giving way to DDL is expected: not worth a WARNING */
		ereport(edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ? DEBUG1 : WARNING,
				(errmsg("axme delivery worker: %s failed, will retry: %s", what, edata->message)));
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			axme_status_error(edata->message);
		FreeErrorData(edata);
		result = NULL;
	}
	PG_END_TRY();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

/*
 * Called by the delivery worker on every turn of its loop, outside any transaction: checks the
 * alert conditions every 10 s and runs one cleanup batch when one is due.
 */
void
axme_ops_tick(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (next_alert_check == 0)	/* first turn: the first check a period after the start */
		next_alert_check = TimestampTzPlusMilliseconds(now, ALERT_CHECK_MS);
	if (now >= next_alert_check)
	{
		axme_status_state("checking alerts");
		(void) run_step("SELECT axme._check_alerts()", "checking alerts");
		/* the shared counters into axme.counters, so a crash loses at most this period */
		(void) run_step("SELECT axme._counters_flush()", "copying the counters");
		next_alert_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ALERT_CHECK_MS);
	}
	if (cleanup_more || now >= next_cleanup())
	{
		char		sql[96];
		char	   *r;

		if (!cleanup_more)
			last_cleanup = now;
		axme_status_state("cleanup");
		snprintf(sql, sizeof(sql), "SELECT axme._cleanup_step(%d)", axme_cleanup_batch_size);
		r = run_step(sql, "cleanup");
		/* another batch on the next turn when this one was full (deliveries go on in between) */
		cleanup_more = r != NULL && strstr(r, "\"more\": true") != NULL;
		if (r)
			pfree(r);
	}
}

/* Milliseconds until axme_ops_tick() has something to do (0: now). */
long
axme_ops_next_ms(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = next_alert_check;

	if (cleanup_more)
		return 0;
	if (next_cleanup() < next)
		next = next_cleanup();
	if (next <= now)
		return 0;
	return (long) Min((next - now) / 1000 + 1, 60000);
}
