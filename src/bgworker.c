/*
 * bgworker.c: what axme's three process kinds (worker.h) share: their registration and start,
 * their signal handlers, and the check each loop makes on every turn (interrupts, a pending
 * configuration reload, whether DROP DATABASE asked its database's workers to leave).
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "doorbell.h"
#include "worker.h"

static int	my_slot = -1;		/* the database slot of this worker (doorbell.h), -1: none */

/*
 * From _PG_init while preloading: the launcher, restarted by the postmaster 5 s after it ends.
 */
void
axme_launcher_register(void)
{
	BackgroundWorker w;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 5;
	strlcpy(w.bgw_library_name, "axme", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "axme_launcher_main", BGW_MAXLEN);
	strlcpy(w.bgw_name, AXME_LAUNCHER, BGW_MAXLEN);
	strlcpy(w.bgw_type, AXME_LAUNCHER, BGW_MAXLEN);
	RegisterBackgroundWorker(&w);
}

/*
 * Start a database's delivery worker or alert worker (from the launcher) or handler worker (from
 * the delivery worker): a dynamic worker never restarted by the postmaster (its starter restarts it), that
 * reports its end to the starter.  bgw_main_arg is its slot, bgw_extra the database.  False
 * when no background worker slot is free.
 */
bool
axme_worker_start(AxmeProcessKind kind, int slot, Oid dboid, BackgroundWorkerHandle **handle)
{
	BackgroundWorker w;
	const char *name = kind == AXME_KIND_HANDLER_WORKER ? AXME_HANDLER_WORKER :
		kind == AXME_KIND_ALERT_WORKER ? AXME_ALERT_WORKER : AXME_DELIVERY_WORKER;
	const char *entry = kind == AXME_KIND_HANDLER_WORKER ? "axme_handler_worker_main" :
		kind == AXME_KIND_ALERT_WORKER ? "axme_alert_worker_main" : "axme_delivery_worker_main";

	Assert(kind != AXME_KIND_LAUNCHER);
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(w.bgw_library_name, "axme", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, entry, BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "%s for database %u", name, dboid);
	strlcpy(w.bgw_type, name, BGW_MAXLEN);
	w.bgw_main_arg = Int32GetDatum(slot);
	memcpy(w.bgw_extra, &dboid, sizeof(Oid));
	w.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&w, handle);
}

/* First thing in every entry point: SIGHUP reloads the configuration, SIGTERM ends the process. */
void
axme_worker_init_signals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
}

/* The database slot this worker serves, for axme_worker_check(). */
void
axme_worker_set_slot(int slot)
{
	my_slot = slot;
}

/*
 * On every turn of a worker's loop, outside any transaction: serve interrupts (SIGTERM ends the
 * process), reload the configuration after a SIGHUP, and leave (exit 0: not restarted) when
 * DROP DATABASE waits for this worker's database.
 */
void
axme_worker_check(void)
{
	AxmeShared *shared = axme_shared();

	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (my_slot >= 0 && shared != NULL)
	{
		bool		leave;

		SpinLockAcquire(&shared->mutex);
		leave = shared->slots[my_slot].leave;
		SpinLockRelease(&shared->mutex);
		if (leave)
			proc_exit(0);
	}
}
