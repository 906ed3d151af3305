/*
 * ddl.c: DDL the workers must hear of, seen by a utility hook in the user's session.
 *
 * Before DROP DATABASE waits for the sessions of that database, its workers are asked to leave
 * (and the launcher to start none there); PostgreSQL 15 would otherwise fail the drop after 5 s.
 * DROP EXTENSION axme rings the delivery worker at commit, so it notices and leaves; CREATE
 * DATABASE has the launcher list the databases again.  Dropping either forgets the database's
 * counters (counters.c).  Needs the shared memory (preload).
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/wait_event.h"

#include "doorbell.h"

static ProcessUtility_hook_type prev_utility_hook = NULL;

/*
 * Before DROP DATABASE waits for other sessions, make that database's workers leave (and keep
 * the launcher from starting them again); PostgreSQL 15 would otherwise fail the drop after 5 s.
 */
static void
leave_database(Oid dboid)
{
	AxmeShared *sh = axme_shared();
	int			i;
	Latch	   *latches[2] = {NULL, NULL};

	SpinLockAcquire(&sh->mutex);
	i = axme_slot_find(dboid);
	if (i >= 0)
	{
		sh->slots[i].leave = true;
		latches[0] = sh->slots[i].delivery_latch;
		latches[1] = sh->slots[i].handler_latch;
	}
	SpinLockRelease(&sh->mutex);
	if (i < 0)
		return;
	for (int k = 0; k < 2; k++)
		if (latches[k])
			SetLatch(latches[k]);
	for (int waited = 0; waited < 10000; waited += 10)
	{
		bool		gone;

		SpinLockAcquire(&sh->mutex);
		gone = sh->slots[i].delivery_pid == 0 && sh->slots[i].handler_pid == 0;
		SpinLockRelease(&sh->mutex);
		if (gone)
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
	AxmeShared *sh = axme_shared();
	int			i;

	SpinLockAcquire(&sh->mutex);
	i = axme_slot_find(dboid);
	if (i >= 0)
	{
		sh->slots[i].leave = false;
		if (dropped && sh->slots[i].delivery_pid == 0 && sh->slots[i].handler_pid == 0)
			sh->slots[i].state = AXME_SLOT_UNUSED;
	}
	sh->rescan = true;
	SpinLockRelease(&sh->mutex);
	if (sh->launcher_latch)
		SetLatch(sh->launcher_latch);
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
utility_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			 ProcessUtilityContext context, ParamListInfo params,
			 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	volatile Oid dropping = InvalidOid;
	AxmeShared *sh = axme_shared();

	if (sh != NULL && IsA(parsetree, DropdbStmt))
	{
		dropping = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);
		if (OidIsValid(dropping))
			leave_database(dropping);
	}
	if (sh != NULL && drops_axme(parsetree))
	{
		axme_ring_delivery();	/* the worker sees the extension gone and leaves */
		axme_counters_forget_at_commit();	/* its agents' counters go with it */
	}

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
	{
		leave_done(dropping, true);
		axme_counters_forget(dropping);
	}
	if (sh != NULL && IsA(parsetree, CreatedbStmt))
	{
		SpinLockAcquire(&sh->mutex);
		sh->rescan = true;
		SpinLockRelease(&sh->mutex);
	}
}

/* From _PG_init while preloading: install the utility hook. */
void
axme_ddl_init(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = utility_hook;
}
