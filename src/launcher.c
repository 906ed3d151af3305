/*
 * launcher.c: the axme launcher, one per cluster, without a database connection.
 *
 * It lists pg_database and starts an axme delivery worker per database; a delivery worker that
 * finds no axme 0.2.0+ in its database says so in its slot and leaves.  The launcher starts it
 * again when that database rings (the commit of CREATE/ALTER EXTENSION, of a send to an http
 * agent: doorbell.c), so a database is served within about a second of CREATE EXTENSION without
 * probing all databases all the time.  A delivery worker that ended (crash, pg_terminate_backend)
 * is started again after RESTART_DELAY_MS.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "axme.h"
#include "doorbell.h"
#include "worker.h"

#define RESTART_DELAY_MS 1000
#define RESCAN_INTERVAL_MS 5000

static AxmeShared *ws = NULL;

static void
launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&ws->mutex);
	ws->launcher_latch = NULL;
	SpinLockRelease(&ws->mutex);
}

/*
 * Bring the slots in line with pg_database: new connectable databases get a slot (to be
 * probed), dropped ones lose theirs.  names[] receives the names for warnings.
 */
static void
scan_databases(char names[AXME_DB_SLOTS][NAMEDATALEN])
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Oid			oids[AXME_DB_SLOTS];
	char		found_names[AXME_DB_SLOTS][NAMEDATALEN];
	int			n = 0;
	bool		overflow = false;
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "axme launcher: listing databases");
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn || db->datistemplate || database_is_invalid_form(db))
			continue;
		if (n == AXME_DB_SLOTS)
		{
			overflow = true;
			break;
		}
		oids[n] = db->oid;
		strlcpy(found_names[n], NameStr(db->datname), NAMEDATALEN);
		n++;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (overflow)
		ereport(WARNING,
				(errmsg("axme launcher: axme serves at most %d databases; the others are not served",
						AXME_DB_SLOTS)));

	SpinLockAcquire(&ws->mutex);
	ws->rescan = false;
	for (int i = 0; i < AXME_DB_SLOTS; i++)
	{
		AxmeDbSlot	   *s = &ws->slots[i];
		bool		present = false;

		if (s->state == AXME_SLOT_UNUSED)
			continue;
		for (int j = 0; j < n; j++)
			if (oids[j] == s->dboid)
				present = true;
		if (!present && s->delivery_pid == 0 && s->handler_pid == 0 && !s->leave)
			s->state = AXME_SLOT_UNUSED;
	}
	for (int j = 0; j < n; j++)
	{
		int			i = axme_slot_find(oids[j]);

		if (i < 0)
		{
			for (i = 0; i < AXME_DB_SLOTS; i++)
				if (ws->slots[i].state == AXME_SLOT_UNUSED && ws->slots[i].delivery_pid == 0 &&
					ws->slots[i].handler_pid == 0)
					break;
			if (i == AXME_DB_SLOTS)
				break;
			memset(&ws->slots[i], 0, sizeof(AxmeDbSlot));
			pg_atomic_init_u64(&ws->slots[i].wake_at, 0);
			pg_atomic_init_u32(&ws->slots[i].poke, 0);
			ws->slots[i].dboid = oids[j];
			ws->slots[i].state = AXME_SLOT_SERVE;
		}
		strlcpy(names[i], found_names[j], NAMEDATALEN);
	}
	SpinLockRelease(&ws->mutex);
}

/*
 * Record whether database slot i is left without a delivery worker (axme.worker_status shows it);
 * the first time of an episode, start the alert worker, which writes an alert row into that
 * database (tried again on the next round when it cannot start).
 */
static void
set_unserved(int i, bool unserved, bool capped)
{
	AxmeDbSlot *s = &ws->slots[i];
	bool		alert;
	Oid			dboid;
	BackgroundWorkerHandle *handle;

	if (!unserved && s->unserved_since == 0 && !s->unserved_alerted)
		return;					/* nothing to clear (only the launcher writes these) */
	SpinLockAcquire(&ws->mutex);
	if (!unserved)
	{
		s->unserved_since = 0;
		s->unserved_alerted = false;
		SpinLockRelease(&ws->mutex);
		return;
	}
	if (s->unserved_since == 0)
		s->unserved_since = GetCurrentTimestamp();
	s->unserved_capped = capped;
	alert = !s->unserved_alerted;
	dboid = s->dboid;
	SpinLockRelease(&ws->mutex);
	if (alert && axme_worker_start(AXME_KIND_ALERT_WORKER, i, dboid, &handle))
	{
		pfree(handle);
		SpinLockAcquire(&ws->mutex);
		s->unserved_alerted = true;
		SpinLockRelease(&ws->mutex);
	}
}

/*
 * Start the workers that should run and do not: new databases (a probe), serving databases
 * whose worker ended (crash, pg_terminate_backend), signalled databases without the extension.
 */
static void
start_workers(BackgroundWorkerHandle *handles[], TimestampTz last_start[],
			  char names[AXME_DB_SLOTS][NAMEDATALEN])
{
	static char last_warning[2048] = "";
	static TimestampTz waiting_since[AXME_DB_SLOTS];
	StringInfoData capped;
	StringInfoData exhausted;
	StringInfoData key;
	int			running = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		want[AXME_DB_SLOTS];
	bool		signalled[AXME_DB_SLOTS];
	Oid			oids[AXME_DB_SLOTS];

	initStringInfo(&capped);
	initStringInfo(&exhausted);
	initStringInfo(&key);
	SpinLockAcquire(&ws->mutex);
	for (int i = 0; i < AXME_DB_SLOTS; i++)
	{
		AxmeDbSlot	   *s = &ws->slots[i];
		bool		alive = s->delivery_pid != 0;

		want[i] = false;
		signalled[i] = false;
		oids[i] = s->dboid;
		if (handles[i] != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(handles[i], &pid) == BGWH_STOPPED)
			{
				pfree(handles[i]);
				handles[i] = NULL;
			}
			else
				alive = true;
		}
		if (alive)
		{
			running++;
			continue;
		}
		if (s->state == AXME_SLOT_UNUSED || s->leave)
			continue;
		signalled[i] = s->state == AXME_SLOT_NO_EXT && s->signal_gen != s->seen_gen;
		want[i] = s->state == AXME_SLOT_SERVE || signalled[i];
	}
	SpinLockRelease(&ws->mutex);

	for (int i = 0; i < AXME_DB_SLOTS; i++)
	{
		/* a worker that ended on its own is restarted after a pause; a signal starts one now */
		bool		no_slot;

		if (!want[i])
		{
			waiting_since[i] = 0;
			set_unserved(i, false, false);
			continue;
		}
		if (!signalled[i] && last_start[i] != 0 &&
			!TimestampDifferenceExceeds(last_start[i], now, RESTART_DELAY_MS))
			continue;
		no_slot = running >= axme_max_database_workers;
		if (!no_slot && axme_worker_start(AXME_KIND_DELIVERY_WORKER, i, oids[i], &handles[i]))
		{
			last_start[i] = now;
			waiting_since[i] = 0;
			set_unserved(i, false, false);
			running++;
			continue;
		}
		handles[i] = NULL;
		/* warn about databases left waiting for a while (probes come and go quickly) */
		if (waiting_since[i] == 0)
			waiting_since[i] = now;
		if (!TimestampDifferenceExceeds(waiting_since[i], now, 3000))
			continue;
		set_unserved(i, true, no_slot);
		if (no_slot)
			appendStringInfo(&capped, "%s\"%s\"", capped.len ? ", " : "", names[i]);
		else
			appendStringInfo(&exhausted, "%s\"%s\"", exhausted.len ? ", " : "", names[i]);
	}
	appendStringInfo(&key, "%s|%s", capped.data, exhausted.data);
	if ((capped.len || exhausted.len) &&
		strncmp(last_warning, key.data, sizeof(last_warning) - 1) != 0)
	{
		if (exhausted.len)
			ereport(WARNING,
					(errmsg("axme launcher: no background worker slot free; databases not served "
							"(or not yet checked for axme): %s", exhausted.data),
					 errhint("Raise max_worker_processes.")));
		if (capped.len)
			ereport(WARNING,
					(errmsg("axme launcher: axme.max_database_workers (%d) reached; databases not served "
							"(or not yet checked for axme): %s", axme_max_database_workers, capped.data),
					 errhint("Raise axme.max_database_workers.")));
		strlcpy(last_warning, key.data, sizeof(last_warning));
	}
	else if (!capped.len && !exhausted.len)
		last_warning[0] = '\0';
	pfree(capped.data);
	pfree(exhausted.data);
	pfree(key.data);
}

/*
 * Entry point of the launcher (registered by axme_launcher_register): scan pg_database every
 * RESCAN_INTERVAL_MS or when rung, start what should run, sleep on the latch.
 */
void
axme_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handles[AXME_DB_SLOTS];
	TimestampTz last_start[AXME_DB_SLOTS];
	static char names[AXME_DB_SLOTS][NAMEDATALEN];
	TimestampTz last_scan = 0;

	ws = axme_shared();
	axme_worker_init_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	memset(handles, 0, sizeof(handles));
	memset(last_start, 0, sizeof(last_start));
	for (int i = 0; i < AXME_DB_SLOTS; i++)
		snprintf(names[i], NAMEDATALEN, "oid %u", ws->slots[i].dboid);

	SpinLockAcquire(&ws->mutex);
	ws->launcher_latch = MyLatch;
	SpinLockRelease(&ws->mutex);
	before_shmem_exit(launcher_detach, 0);
	pgstat_report_appname(AXME_LAUNCHER);

	for (;;)
	{
		bool		rescan;
		TimestampTz now;

		axme_worker_check();
		SpinLockAcquire(&ws->mutex);
		rescan = ws->rescan;
		SpinLockRelease(&ws->mutex);
		now = GetCurrentTimestamp();
		if (rescan || TimestampDifferenceExceeds(last_scan, now, RESCAN_INTERVAL_MS))
		{
			scan_databases(names);
			last_scan = now;
		}
		start_workers(handles, last_start, names);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 250L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
