/*
 * axme.c: module entry point: GUCs and shared memory.
 *
 * User-settable GUCs are defined whenever the library loads (preloaded or not), so SET and
 * ALTER DATABASE validate them.  Shared memory (the wait_for wake-up slots) exists only when the
 * library is in shared_preload_libraries; every caller checks axme_shmem_ready() first and falls
 * back to a short re-check loop without it.
 */
#include "postgres.h"

#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "axme.h"
#include "delivery.h"
#include "timers.h"

PG_MODULE_MAGIC;

int			axme_max_delivery_attempts = 5;
int			axme_max_payload_bytes = 131072;
bool		axme_require_receipts = true;
char	   *axme_tls_files_directory = NULL;

static AxmeShared *axme_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(axme_receipts_required);

static Size
axme_shmem_size(void)
{
	return MAXALIGN(sizeof(AxmeShared));
}

static void
axme_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(axme_shmem_size());
}

static void
axme_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	axme_shared = ShmemInitStruct("axme", axme_shmem_size(), &found);
	if (!found)
	{
		for (int i = 0; i < AXME_WAIT_BUCKETS; i++)
			ConditionVariableInit(&axme_shared->waiters[i]);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * The shared state, or NULL when the library was not preloaded (then there is none).
 */
AxmeShared *
axme_shmem(void)
{
	return axme_shared;
}

/*
 * Prepare a statement through SPI and keep its plan for the life of the backend (SPI_keepplan).
 * Must be called between SPI_connect and SPI_finish.  "Cannot happen" errors only: the SQL is
 * ours.
 */
SPIPlanPtr
axme_keep_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

void
_PG_init(void)
{
	DefineCustomIntVariable("axme.max_delivery_attempts",
							"Default attempt budget of an intent before it is dead-lettered.",
							"Used when neither the intent's max_delivery_attempts nor the agent's "
							"retry.max_attempts option is set.",
							&axme_max_delivery_attempts,
							5, 1, 1000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("axme.max_payload_bytes",
							"Largest intent payload accepted by send_intent, in bytes of its JSON text.",
							NULL,
							&axme_max_payload_bytes,
							131072, 1, 256 * 1024 * 1024,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("axme.require_receipts",
							 "Whether ack, progress, extend_lease, complete, complete_many and fail "
							 "need the receipt (attempt) of a poll or stream hand-out.",
							 "Off: a call without attempt acts on whoever holds the intent, as "
							 "resolve does. The agent option require_receipts = false turns the check "
							 "off for one agent.",
							 &axme_require_receipts,
							 true,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("axme.tls_files_directory",
							   "Directory from which http agents' options ca_file, client_cert_file "
							   "and client_key_file may name files.",
							   "Empty (the default): those options take PEM contents only. The worker "
							   "reads the files as the server's OS user, so only the administrator "
							   "chooses where they may be.",
							   &axme_tls_files_directory,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	axme_wakeup_init();
	axme_delivery_init();		/* http mode: GUCs; with preload the launcher (worker.c) */
	axme_timers_init();			/* with preload: the timer loop's shared memory (timers.c) */

	if (!process_shared_preload_libraries_in_progress)
	{
		MarkGUCPrefixReserved("axme");
		return;
	}

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = axme_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = axme_shmem_startup;

	MarkGUCPrefixReserved("axme");
}

/*
 * In a background worker's transaction, before it touches axme's tables: whether axme is
 * installed in this database, taking a share lock on the extension object when it is.
 *
 * DROP EXTENSION locks the extension object exclusively before it drops any member, so with this
 * lock a worker transaction either runs wholly before the drop or starts after it (and finds no
 * extension), instead of holding one of axme's tables while the drop holds another: a deadlock
 * that would fail the user's DROP EXTENSION.  Needs a transaction; the lock is held to its end.
 */
bool
axme_lock_extension(void)
{
	Oid			ext = get_extension_oid("axme", true);

	if (!OidIsValid(ext))
		return false;
	LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
	/* dropped while we waited for the lock?  (locking accepted the invalidations) */
	return OidIsValid(get_extension_oid("axme", true));
}

/*
 * axme._receipts_required() RETURNS boolean: whether a receiver's call without a receipt on a
 * handed-out intent is refused here: axme.require_receipts, except in axme's own background
 * workers (they act for the database, never as a stale receiver; a handler they run may call
 * complete for another intent).
 */
Datum
axme_receipts_required(PG_FUNCTION_ARGS)
{
	if (MyBgworkerEntry != NULL && strcmp(MyBgworkerEntry->bgw_library_name, "axme") == 0)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(axme_require_receipts);
}
