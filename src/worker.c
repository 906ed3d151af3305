/*
 * worker.c: the http delivery workers: one launcher, one worker per database with axme.
 *
 * The launcher (no database connection) lists pg_database and starts a dynamic worker per
 * database; a worker that finds no axme 0.2.0+ in its database says so in shared memory and
 * leaves.  The launcher starts it again when that database signals (the commit of CREATE/ALTER
 * EXTENSION, of a send to an http agent: axme_worker_wake), so a database is served within about
 * a second of CREATE EXTENSION without probing all databases all the time.  A utility hook makes
 * a database's worker leave before DROP DATABASE waits for it, and wakes it at the commit of DROP
 * EXTENSION so it notices.  Each worker: claim (queue.c), send (http.c), record (queue.c), wait on
 * the latch and curl's sockets; a timer only for what is due later.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "axme.h"
#include "delivery.h"
#include "ops.h"
#include "timers.h"

#define AXME_DB_SLOTS 256
#define RESTART_DELAY_MS 1000
#define RESCAN_INTERVAL_MS 5000
#define IDLE_RECHECK_MS 60000L

int			axme_max_in_flight = 256;
int			axme_max_database_workers = 8;
int			axme_disable_after = 5 * 86400;	/* seconds; read by axme._endpoint_observe */
bool		axme_is_http_worker = false;

typedef enum SlotState
{
	SLOT_UNUSED = 0,
	SLOT_SERVE,					/* should have a worker (extension present or not yet known) */
	SLOT_NO_EXT					/* probed: no axme 0.2.0+; start again only on a new signal */
} SlotState;

typedef struct DbSlot
{
	Oid			dboid;
	SlotState	state;
	pid_t		pid;			/* worker pid, 0 when none */
	Latch	   *latch;			/* worker latch, NULL when none */
	uint32		signal_gen;		/* bumped by every wake-up at commit */
	uint32		seen_gen;		/* signal_gen when the worker last started */
	bool		leave;			/* DROP DATABASE in progress: worker leaves, none starts */
} DbSlot;

typedef struct WorkerShared
{
	slock_t		mutex;
	pg_atomic_uint32 agents_gen;	/* bumped when agents change mode (wakeup.c caches modes) */
	Latch	   *launcher_latch;
	bool		rescan;
	DbSlot		slots[AXME_DB_SLOTS];
} WorkerShared;

static WorkerShared *ws = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_utility_hook = NULL;
static int	my_slot = -1;		/* in a worker: its slot */
static int	cached_wake_slot = -1;	/* in a backend: the slot of MyDatabaseId, a guess */


/* ---------------------------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------------------------- */

static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
}

static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ws = ShmemInitStruct("axme http workers", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(ws, 0, sizeof(WorkerShared));
		SpinLockInit(&ws->mutex);
		pg_atomic_init_u32(&ws->agents_gen, 1);
		ws->rescan = true;
	}
	LWLockRelease(AddinShmemInitLock);
}

static int
find_slot(Oid dboid)
{
	for (int i = 0; i < AXME_DB_SLOTS; i++)
		if (ws->slots[i].state != SLOT_UNUSED && ws->slots[i].dboid == dboid)
			return i;
	return -1;
}

/*
 * Wake the http worker of a database (called at commit of a send, replay, CREATE EXTENSION ...),
 * or have the launcher start one.  Cheap: one spinlock, one SetLatch.  No-op without preload.
 */
void
axme_worker_wake(Oid dboid)
{
	Latch	   *worker = NULL;
	Latch	   *launcher = NULL;
	int			i;

	if (ws == NULL)
		return;
	SpinLockAcquire(&ws->mutex);
	i = cached_wake_slot;
	if (i < 0 || ws->slots[i].state == SLOT_UNUSED || ws->slots[i].dboid != dboid)
		i = cached_wake_slot = find_slot(dboid);
	if (i < 0)
	{
		ws->rescan = true;
		launcher = ws->launcher_latch;
	}
	else
	{
		DbSlot	   *s = &ws->slots[i];

		s->signal_gen++;
		worker = s->latch;
		if (worker == NULL || s->state != SLOT_SERVE)
			launcher = ws->launcher_latch;
	}
	SpinLockRelease(&ws->mutex);
	if (worker)
		SetLatch(worker);
	if (launcher)
		SetLatch(launcher);
}

/*
 * The generation of agent modes (false without shared memory: then no worker runs at all).
 */
bool
axme_agents_generation(uint32 *gen)
{
	if (ws == NULL)
		return false;
	*gen = pg_atomic_read_u32(&ws->agents_gen);
	return true;
}

/* Called at the commit of a change of agents: backends re-read agent modes. */
void
axme_agents_bump(void)
{
	if (ws != NULL)
		pg_atomic_fetch_add_u32(&ws->agents_gen, 1);
}

/* ---------------------------------------------------------------------------------------------
 * DROP DATABASE / DROP EXTENSION
 * ------------------------------------------------------------------------------------------- */

/*
 * Before DROP DATABASE waits for other sessions, make that database's worker leave (and keep
 * the launcher from starting it again); PostgreSQL 15 would otherwise fail the drop after 5 s.
 */
static void
leave_database(Oid dboid)
{
	int			i;
	Latch	   *latch = NULL;

	SpinLockAcquire(&ws->mutex);
	i = find_slot(dboid);
	if (i >= 0)
	{
		ws->slots[i].leave = true;
		latch = ws->slots[i].latch;
	}
	SpinLockRelease(&ws->mutex);
	if (i < 0)
		return;
	if (latch)
		SetLatch(latch);
	for (int waited = 0; waited < 10000; waited += 10)
	{
		pid_t		pid;

		SpinLockAcquire(&ws->mutex);
		pid = ws->slots[i].pid;
		SpinLockRelease(&ws->mutex);
		if (pid == 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static void
leave_done(Oid dboid, bool dropped)
{
	int			i;

	SpinLockAcquire(&ws->mutex);
	i = find_slot(dboid);
	if (i >= 0)
	{
		ws->slots[i].leave = false;
		if (dropped && ws->slots[i].pid == 0)
			ws->slots[i].state = SLOT_UNUSED;
	}
	ws->rescan = true;
	SpinLockRelease(&ws->mutex);
	if (ws->launcher_latch)
		SetLatch(ws->launcher_latch);
}

static bool
drops_axme(Node *parsetree)
{
	DropStmt   *drop;
	ListCell   *lc;

	if (!IsA(parsetree, DropStmt))
		return false;
	drop = (DropStmt *) parsetree;
	if (drop->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, drop->objects)
	{
		Node	   *obj = lfirst(lc);

		if (IsA(obj, String) && strcmp(strVal(obj), "axme") == 0)
			return true;
	}
	return false;
}

static void
axme_utility_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	volatile Oid dropping = InvalidOid;

	if (ws != NULL && IsA(parsetree, DropdbStmt))
	{
		dropping = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);
		if (OidIsValid(dropping))
			leave_database(dropping);
	}
	if (ws != NULL && drops_axme(parsetree))
		axme_wake_http_at_commit();	/* the worker sees the extension gone and leaves */

	PG_TRY();
	{
		if (prev_utility_hook)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv,
							  dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (OidIsValid(dropping))
			leave_done(dropping, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (OidIsValid(dropping))
		leave_done(dropping, true);
	if (ws != NULL && IsA(parsetree, CreatedbStmt))
	{
		SpinLockAcquire(&ws->mutex);
		ws->rescan = true;
		SpinLockRelease(&ws->mutex);
	}
}

/* ---------------------------------------------------------------------------------------------
 * Launcher
 * ------------------------------------------------------------------------------------------- */

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
	pgstat_report_activity(STATE_RUNNING, "axme: listing databases");
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
				(errmsg("axme serves at most %d databases; the others are not served",
						AXME_DB_SLOTS)));

	SpinLockAcquire(&ws->mutex);
	ws->rescan = false;
	for (int i = 0; i < AXME_DB_SLOTS; i++)
	{
		DbSlot	   *s = &ws->slots[i];
		bool		present = false;

		if (s->state == SLOT_UNUSED)
			continue;
		for (int j = 0; j < n; j++)
			if (oids[j] == s->dboid)
				present = true;
		if (!present && s->pid == 0 && !s->leave)
			s->state = SLOT_UNUSED;
	}
	for (int j = 0; j < n; j++)
	{
		int			i = find_slot(oids[j]);

		if (i < 0)
		{
			for (i = 0; i < AXME_DB_SLOTS; i++)
				if (ws->slots[i].state == SLOT_UNUSED && ws->slots[i].pid == 0)
					break;
			if (i == AXME_DB_SLOTS)
				break;
			memset(&ws->slots[i], 0, sizeof(DbSlot));
			ws->slots[i].dboid = oids[j];
			ws->slots[i].state = SLOT_SERVE;
		}
		strlcpy(names[i], found_names[j], NAMEDATALEN);
	}
	SpinLockRelease(&ws->mutex);
}

static bool
start_worker(int i, Oid dboid, BackgroundWorkerHandle **handle)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	strlcpy(w.bgw_library_name, "axme", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "axme_worker_main", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "axme worker for database %u", dboid);
	strlcpy(w.bgw_type, "axme worker", BGW_MAXLEN);
	w.bgw_main_arg = Int32GetDatum(i);
	memcpy(w.bgw_extra, &dboid, sizeof(Oid));
	w.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&w, handle);
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
		DbSlot	   *s = &ws->slots[i];
		bool		alive = s->pid != 0;

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
		if (s->state == SLOT_UNUSED || s->leave)
			continue;
		signalled[i] = s->state == SLOT_NO_EXT && s->signal_gen != s->seen_gen;
		want[i] = s->state == SLOT_SERVE || signalled[i];
	}
	SpinLockRelease(&ws->mutex);

	for (int i = 0; i < AXME_DB_SLOTS; i++)
	{
		/* a worker that ended on its own is restarted after a pause; a signal starts one now */
		bool		no_slot;

		if (!want[i])
		{
			waiting_since[i] = 0;
			continue;
		}
		if (!signalled[i] && last_start[i] != 0 &&
			!TimestampDifferenceExceeds(last_start[i], now, RESTART_DELAY_MS))
			continue;
		no_slot = running >= axme_max_database_workers;
		if (!no_slot && start_worker(i, oids[i], &handles[i]))
		{
			last_start[i] = now;
			waiting_since[i] = 0;
			running++;
			continue;
		}
		handles[i] = NULL;
		/* warn about databases left waiting for a while (probes come and go quickly) */
		if (waiting_since[i] == 0)
			waiting_since[i] = now;
		if (!TimestampDifferenceExceeds(waiting_since[i], now, 3000))
			continue;
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
					(errmsg("axme: no background worker slot free; databases not served "
							"(or not yet checked for axme): %s", exhausted.data),
					 errhint("Raise max_worker_processes.")));
		if (capped.len)
			ereport(WARNING,
					(errmsg("axme: axme.max_database_workers (%d) reached; databases not served "
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

void
axme_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handles[AXME_DB_SLOTS];
	TimestampTz last_start[AXME_DB_SLOTS];
	static char names[AXME_DB_SLOTS][NAMEDATALEN];
	TimestampTz last_scan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	memset(handles, 0, sizeof(handles));
	memset(last_start, 0, sizeof(last_start));
	for (int i = 0; i < AXME_DB_SLOTS; i++)
		snprintf(names[i], NAMEDATALEN, "oid %u", ws->slots[i].dboid);

	SpinLockAcquire(&ws->mutex);
	ws->launcher_latch = MyLatch;
	SpinLockRelease(&ws->mutex);
	before_shmem_exit(launcher_detach, 0);
	pgstat_report_appname("axme launcher");

	for (;;)
	{
		bool		rescan;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
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

/* ---------------------------------------------------------------------------------------------
 * Per-database worker
 * ------------------------------------------------------------------------------------------- */

static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&ws->mutex);
	ws->slots[my_slot].pid = 0;
	ws->slots[my_slot].latch = NULL;
	SpinLockRelease(&ws->mutex);
	if (ws->launcher_latch)
		SetLatch(ws->launcher_latch);
}

static void
worker_leave(SlotState state)
{
	SpinLockAcquire(&ws->mutex);
	if (ws->slots[my_slot].state != SLOT_UNUSED)
		ws->slots[my_slot].state = state;
	SpinLockRelease(&ws->mutex);
	proc_exit(0);
}

static bool
must_leave(void)
{
	bool		leave;

	SpinLockAcquire(&ws->mutex);
	leave = ws->slots[my_slot].leave;
	SpinLockRelease(&ws->mutex);
	return leave;
}

static void
deliver_loop(void)
{
	MemoryContext loop_cxt = AllocSetContextCreate(TopMemoryContext, "axme worker loop",
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

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (must_leave())
			proc_exit(0);
		axme_timers_tick();		/* timers, stream wake-ups, the internal worker (timers.c) */

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
				worker_leave(SLOT_NO_EXT);
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
				worker_leave(SLOT_NO_EXT);
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
			worker_leave(SLOT_NO_EXT);
		if (v > 0)
			return;
		if (!logged)
			ereport(LOG,
					(errmsg("axme: database \"%s\" has axme %s installed, older than the library (%s); "
							"waiting for ALTER EXTENSION axme UPDATE",
							axme_ops_dbname,
							installed, AXME_VERSION)));
		logged = true;
		SpinLockAcquire(&ws->mutex);
		ws->slots[my_slot].state = SLOT_SERVE;
		SpinLockRelease(&ws->mutex);
		axme_status_state("waiting for ALTER EXTENSION axme UPDATE (installed %s, library %s)",
						  installed, AXME_VERSION);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5000L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (must_leave())
			proc_exit(0);
	}
}

void
axme_worker_main(Datum arg)
{
	Oid			dboid;
	bool		taken;

	my_slot = DatumGetInt32(arg);
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	SpinLockAcquire(&ws->mutex);
	taken = ws->slots[my_slot].dboid != dboid || ws->slots[my_slot].pid != 0 ||
		ws->slots[my_slot].leave || ws->slots[my_slot].state == SLOT_UNUSED;
	if (!taken)
	{
		ws->slots[my_slot].pid = MyProcPid;
		ws->slots[my_slot].latch = MyLatch;
		ws->slots[my_slot].seen_gen = ws->slots[my_slot].signal_gen;
	}
	SpinLockRelease(&ws->mutex);
	if (taken)
		proc_exit(0);
	before_shmem_exit(worker_detach, 0);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	axme_is_http_worker = true;
	axme_set_actor("axme:delivery-worker");	/* the actor of its events (actor.c) */
	pgstat_report_appname("axme worker");
	axme_status_register("http");
	wait_for_update();

	if (!axme_queue_ready(true))
		worker_leave(SLOT_NO_EXT);
	SpinLockAcquire(&ws->mutex);
	ws->slots[my_slot].state = SLOT_SERVE;
	SpinLockRelease(&ws->mutex);

	axme_http_init();
	deliver_loop();
}

/* ---------------------------------------------------------------------------------------------
 * Setup, from _PG_init
 * ------------------------------------------------------------------------------------------- */

/*
 * GUCs of the http mode, and when preloading: shared memory, the launcher, the utility hook.
 */
void
axme_delivery_init(void)
{
	BackgroundWorker w;

	DefineCustomIntVariable("axme.max_in_flight",
							"Most http requests in flight at once per database worker.",
							"Each agent is further capped by its max_in_flight option (default 16).",
							&axme_max_in_flight,
							256, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	axme_ssrf_define_guc();
	axme_ops_init();			/* operations GUCs; with preload the worker status (ops.c) */
	DefineCustomIntVariable("axme.disable_after",
							"An http endpoint failing without a single success for this long is disabled.",
							"axme.enable_agent() turns it back on.",
							&axme_disable_after,
							5 * 86400, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("axme.max_database_workers",
							"Most databases served by http workers at once (one worker each).",
							"Each worker takes one of max_worker_processes.",
							&axme_max_database_workers,
							8, 1, AXME_DB_SLOTS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = axme_utility_hook;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	strlcpy(w.bgw_library_name, "axme", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "axme_launcher_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, "axme launcher", BGW_MAXLEN);
	strlcpy(w.bgw_type, "axme launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}
