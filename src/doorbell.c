/*
 * doorbell.c: axme's shared memory and the one commit-time callback that wakes its workers,
 * its wait_for callers and its stream receivers.
 *
 * Backends ring the doorbell while their transaction runs (a send, a timer row, a terminal
 * status, a change of agents); nothing is announced before commit, and what a rolled-back
 * (sub)transaction rang is forgotten.  At commit: one NOTIFY per stream agent that received
 * intents (first intent id and count, never payload data), a broadcast on the wait_for condition
 * variables of intents that became terminal, and the latch of this database's delivery worker
 * (or its handler worker, or the launcher, which starts a delivery worker) when it has something
 * new to do.  Workers answer: they attach to their database's slot here and read its flags.
 *
 * The delivery worker publishes in its slot when its timer loop looks next (wake_at); a commit
 * of a timer due earlier than that pokes it (a flag, then its latch).  While it scans, wake_at
 * is AXME_WAKE_UNKNOWN, so nothing committed during a scan is missed.
 *
 * The counters of axme.metrics() ride on the same callbacks: counters.c keeps them, and is
 * called here at shared memory startup, at commit, at abort and at the end of a subtransaction.
 *
 * Nothing here calls worker code: this file is on the user-facing path.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "doorbell.h"

PG_FUNCTION_INFO_V1(axme_notify_agent);
PG_FUNCTION_INFO_V1(axme_notify_agent_n);
PG_FUNCTION_INFO_V1(axme_wake_waiters);
PG_FUNCTION_INFO_V1(axme_wake_http);
PG_FUNCTION_INFO_V1(axme_wake_timers_sql);
PG_FUNCTION_INFO_V1(axme_wake_internal_sql);
PG_FUNCTION_INFO_V1(axme_http_wake_trigger);
PG_FUNCTION_INFO_V1(axme_timers_wake_trigger);
PG_FUNCTION_INFO_V1(axme_agents_changed);

static AxmeShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool is_delivery_worker = false;
static int	cached_slot = -1;		/* in a backend: the slot of MyDatabaseId, a guess */

/* ---------------------------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------------------------- */

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(AxmeShared)));
}

static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("axme doorbell", sizeof(AxmeShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(AxmeShared));
		SpinLockInit(&shared->mutex);
		SpinLockInit(&shared->status_mutex);
		pg_atomic_init_u32(&shared->agents_gen, 1);
		shared->rescan = true;
		for (int i = 0; i < AXME_DB_SLOTS; i++)
		{
			pg_atomic_init_u64(&shared->slots[i].wake_at, 0);
			pg_atomic_init_u32(&shared->slots[i].poke, 0);
		}
		for (int i = 0; i < AXME_WAIT_BUCKETS; i++)
			ConditionVariableInit(&shared->waiters[i]);
	}
	axme_counters_shmem_startup(&shared->counters, found);
	LWLockRelease(AddinShmemInitLock);
}

/* The shared state, or NULL when the library was not preloaded (then there is none). */
AxmeShared *
axme_shared(void)
{
	return shared;
}

/* The slot of a database in use (state not UNUSED), or -1.  The caller holds shared->mutex. */
int
axme_slot_find(Oid dboid)
{
	for (int i = 0; i < AXME_DB_SLOTS; i++)
		if (shared->slots[i].state != AXME_SLOT_UNUSED && shared->slots[i].dboid == dboid)
			return i;
	return -1;
}

/* ---------------------------------------------------------------------------------------------
 * What this transaction rang (reset at the end of every transaction)
 * ------------------------------------------------------------------------------------------- */

/* Sends to one stream agent made at one subtransaction nesting level. */
typedef struct PendingNotify
{
	int64		agent_id;
	int			level;
	int64		count;
	pg_uuid_t	first_id;
} PendingNotify;

static List *pending_notifies = NIL;	/* in TopTransactionContext */
static bool pending_buckets[AXME_WAIT_BUCKETS];
static bool any_pending_bucket = false;
static bool pending_delivery = false;	/* something became due for the delivery worker */
static bool pending_agents_changed = false; /* agents' modes changed: flush caches at commit */
static bool pending_timer = false;
static TimestampTz pending_due = 0;
static bool pending_handler = false;

static PendingNotify *
find_pending(int64 agent_id, int level)
{
	ListCell   *lc;

	foreach(lc, pending_notifies)
	{
		PendingNotify *p = lfirst(lc);

		if (p->agent_id == agent_id && p->level == level)
			return p;
	}
	return NULL;
}

/*
 * Remember one send to a stream agent in the current (sub)transaction.  The NOTIFY itself is
 * issued just before commit, one per agent.
 */
void
axme_ring_stream(int64 agent_id, const pg_uuid_t *id)
{
	int			level = GetCurrentTransactionNestLevel();
	PendingNotify *p = find_pending(agent_id, level);

	if (p == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		p = palloc(sizeof(PendingNotify));
		p->agent_id = agent_id;
		p->level = level;
		p->count = 0;
		memcpy(&p->first_id, id, sizeof(pg_uuid_t));
		pending_notifies = lappend(pending_notifies, p);
		MemoryContextSwitchTo(old);
	}
	p->count++;
}

/* The wait bucket of an intent: which condition variable its waiters sleep on. */
int
axme_wait_bucket(const pg_uuid_t *id)
{
	return (int) (hash_bytes(id->data, UUID_LEN) % AXME_WAIT_BUCKETS);
}

/*
 * Wake this database's delivery worker (or have the launcher start one) at commit.  The delivery
 * worker's own transactions ring nobody: it looks again after recording.
 */
void
axme_ring_delivery(void)
{
	if (!is_delivery_worker)
		pending_delivery = true;
}

/*
 * A timer row due at `due` was written in this transaction: at commit, wake the delivery worker
 * if it plans to look later than that.  No-op without preload.
 */
void
axme_ring_timer(TimestampTz due)
{
	if (shared == NULL)
		return;
	if (!pending_timer || due < pending_due)
		pending_due = due;
	pending_timer = true;
}

/* An intent for an internal agent became due in this transaction: wake its handler worker. */
void
axme_ring_handler(void)
{
	if (shared == NULL)
		return;
	pending_handler = true;
}

/* Called once by the delivery worker: its own commits ring nobody (it looks again anyway). */
void
axme_doorbell_is_delivery_worker(void)
{
	is_delivery_worker = true;
}

/*
 * The generation of agent modes, bumped at the commit of a change of agents (false without shared
 * memory: then no worker runs at all).
 */
static bool
agents_generation(uint32 *gen)
{
	if (shared == NULL)
		return false;
	*gen = pg_atomic_read_u32(&shared->agents_gen);
	return true;
}

/* ---------------------------------------------------------------------------------------------
 * At commit
 * ------------------------------------------------------------------------------------------- */

/*
 * Issue the collected NOTIFYs: one per agent, payload {"intent_id": first, "count": n}.
 * Runs at XACT_EVENT_PRE_COMMIT, before PreCommit_Notify queues them.
 */
static void
send_pending_notifies(void)
{
	ListCell   *lc;

	foreach(lc, pending_notifies)
	{
		PendingNotify *p = lfirst(lc);
		ListCell   *lc2;
		char		channel[NAMEDATALEN];
		char	   *idtext;
		StringInfoData payload;

		if (p->count == 0)
			continue;
		/* merge later entries of the same agent (from committed subtransactions) */
		for_each_cell(lc2, pending_notifies, lnext(pending_notifies, lc))
		{
			PendingNotify *q = lfirst(lc2);

			if (q->agent_id == p->agent_id)
			{
				p->count += q->count;
				q->count = 0;
			}
		}
		snprintf(channel, sizeof(channel), "axme_agent_" INT64_FORMAT, p->agent_id);
		idtext = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&p->first_id)));
		initStringInfo(&payload);
		appendStringInfo(&payload, "{\"intent_id\": \"%s\", \"count\": " INT64_FORMAT "}",
						 idtext, p->count);
		Async_Notify(channel, payload.data);
	}
}

/*
 * Ring a database's delivery worker: set its latch, or have the launcher start one (a database
 * without a slot or without a running worker).  Cheap: one spinlock, one or two SetLatch.
 */
static void
ring_delivery_worker(Oid dboid)
{
	Latch	   *worker = NULL;
	Latch	   *launcher = NULL;
	int			i;

	SpinLockAcquire(&shared->mutex);
	i = cached_slot;
	if (i < 0 || shared->slots[i].state == AXME_SLOT_UNUSED || shared->slots[i].dboid != dboid)
		i = cached_slot = axme_slot_find(dboid);
	if (i < 0)
	{
		shared->rescan = true;
		launcher = shared->launcher_latch;
	}
	else
	{
		AxmeDbSlot *s = &shared->slots[i];

		s->signal_gen++;
		worker = s->delivery_latch;
		if (worker == NULL || s->state != AXME_SLOT_SERVE)
			launcher = shared->launcher_latch;
	}
	SpinLockRelease(&shared->mutex);
	if (worker)
		SetLatch(worker);
	if (launcher)
		SetLatch(launcher);
}

/*
 * A timer due earlier than the delivery worker planned to look, or an intent for the handler
 * worker: poke the right process.  Returns whether the delivery worker must be rung too.
 */
static bool
ring_timers_and_handler(void)
{
	AxmeDbSlot *s = NULL;
	Latch	   *handler = NULL;
	bool		poke = false;

	SpinLockAcquire(&shared->mutex);
	{
		int			i = axme_slot_find(MyDatabaseId);

		if (i >= 0 && shared->slots[i].delivery_pid != 0)
		{
			s = &shared->slots[i];
			handler = s->handler_latch;
		}
	}
	SpinLockRelease(&shared->mutex);
	if (s == NULL)
		return true;			/* no delivery worker: the launcher starts one */
	if (pending_timer && (uint64) pending_due < pg_atomic_read_u64(&s->wake_at))
		poke = true;
	if (pending_handler)
	{
		if (handler)
			SetLatch(handler);
		else
			poke = true;		/* the delivery worker starts the handler worker */
	}
	if (poke)
		pg_atomic_write_u32(&s->poke, 1);
	return poke;
}

static void
broadcast_pending_waiters(void)
{
	for (int i = 0; i < AXME_WAIT_BUCKETS; i++)
	{
		if (pending_buckets[i])
			ConditionVariableBroadcast(&shared->waiters[i]);
	}
}

static void
reset_pending(void)
{
	pending_notifies = NIL;		/* memory goes with TopTransactionContext */
	if (any_pending_bucket)
		memset(pending_buckets, 0, sizeof(pending_buckets));
	any_pending_bucket = false;
	pending_delivery = false;
	pending_agents_changed = false;
	pending_timer = false;
	pending_due = 0;
	pending_handler = false;
}

/*
 * The one commit-time callback: NOTIFYs just before commit (they must be queued in the
 * transaction), everything else once the commit is visible to others.
 */
static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			send_pending_notifies();
			break;
		case XACT_EVENT_COMMIT:
			/* what this transaction wrote is visible to others now */
			if (shared != NULL)
			{
				bool		ring = pending_delivery;

				if (any_pending_bucket)
					broadcast_pending_waiters();
				if (pending_agents_changed)
					pg_atomic_fetch_add_u32(&shared->agents_gen, 1);
				if ((pending_timer || pending_handler) && ring_timers_and_handler())
					ring = true;
				if (ring)
					ring_delivery_worker(MyDatabaseId);
			}
			axme_counters_at_commit();
			reset_pending();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * A prepared transaction cannot NOTIFY; its stream receivers find the intents on
			 * their next poll, its waiters on their next periodic re-check, and the delivery
			 * worker on its next look.  Its counts are not kept either.
			 */
			axme_counters_at_abort();
			reset_pending();
			break;
		default:
			break;
	}
}

/*
 * Forget sends of an aborted subtransaction; fold those of a committed one into its parent.
 */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB || event == SUBXACT_EVENT_COMMIT_SUB)
		axme_counters_subxact(event == SUBXACT_EVENT_COMMIT_SUB, level);
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_notifies)
		{
			PendingNotify *p = lfirst(lc);

			if (p->level >= level)
				pending_notifies = foreach_delete_current(pending_notifies, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_notifies)
		{
			PendingNotify *p = lfirst(lc);
			PendingNotify *parent;

			if (p->level < level)
				continue;
			parent = find_pending(p->agent_id, level - 1);
			if (parent != NULL && parent != p)
			{
				parent->count += p->count;
				pending_notifies = foreach_delete_current(pending_notifies, lc);
			}
			else
				p->level = level - 1;
		}
	}
}

/* ---------------------------------------------------------------------------------------------
 * The SQL side: functions and triggers that ring
 * ------------------------------------------------------------------------------------------- */

/* axme._notify_agent(agent_id bigint, intent_id uuid): SQL access to axme_ring_stream(). */
Datum
axme_notify_agent(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_VOID();
	axme_ring_stream(PG_GETARG_INT64(0), PG_GETARG_UUID_P(1));
	PG_RETURN_VOID();
}

/*
 * axme._notify_agent_n(agent_id bigint, intent_id uuid, n bigint): the stream wake-up of an
 * agent counting n intents (one NOTIFY per agent at commit).
 */
Datum
axme_notify_agent_n(PG_FUNCTION_ARGS)
{
	int64		agent_id;
	pg_uuid_t  *id;
	int64		n;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_VOID();
	agent_id = PG_GETARG_INT64(0);
	id = PG_GETARG_UUID_P(1);
	n = Min(PG_GETARG_INT64(2), 1000000);
	for (int64 k = 0; k < n; k++)
		axme_ring_stream(agent_id, id);
	PG_RETURN_VOID();
}

/*
 * axme._wake_waiters(intent_id uuid): wake wait_for() callers of this intent at commit.
 * A no-op without shared memory (their fallback loop re-checks on its own).
 */
Datum
axme_wake_waiters(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	pending_buckets[axme_wait_bucket(PG_GETARG_UUID_P(0))] = true;
	any_pending_bucket = true;
	PG_RETURN_VOID();
}

/* axme._wake_http(): see axme_ring_delivery. */
Datum
axme_wake_http(PG_FUNCTION_ARGS)
{
	axme_ring_delivery();
	PG_RETURN_VOID();
}

/* axme._wake_timers(): see axme_ring_timer (due now). */
Datum
axme_wake_timers_sql(PG_FUNCTION_ARGS)
{
	axme_ring_timer(0);
	PG_RETURN_VOID();
}

/* axme._wake_internal(): see axme_ring_handler. */
Datum
axme_wake_internal_sql(PG_FUNCTION_ARGS)
{
	axme_ring_handler();
	PG_RETURN_VOID();
}

/* axme._agents_changed(): at commit, every backend's cache of agent modes is flushed. */
Datum
axme_agents_changed(PG_FUNCTION_ARGS)
{
	pending_agents_changed = true;
	PG_RETURN_VOID();
}

/*
 * Which agents are http agents, cached per backend so that the trigger on axme.intents rings the
 * delivery worker only for sends to http agents (a poll or stream workload never wakes it).
 * Flushed when the cluster-wide agents generation moves (bumped at the commit of register_agent).
 */
typedef struct AgentMode
{
	int64		agent_id;
	bool		is_http;
} AgentMode;

static HTAB *agent_modes = NULL;
static uint32 agent_modes_gen = 0;

/*
 * AFTER INSERT OR UPDATE OF due_at row trigger on axme.intents, fired (WHEN clause) for
 * intents that became due: a send, a replay, a retry scheduled by someone else.
 */
Datum
axme_http_wake_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	int			attnum;
	bool		isnull;
	int64		agent_id;
	uint32		gen;
	AgentMode  *m;
	bool		found;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("axme._http_wake_trigger() must be called as a trigger")));
	if (pending_delivery || !agents_generation(&gen))
		return PointerGetDatum(NULL);	/* already rung, or no worker (not preloaded) */

	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	attnum = SPI_fnumber(td->tg_relation->rd_att, "agent_id");
	if (attnum <= 0)
	{
		axme_ring_delivery();
		return PointerGetDatum(NULL);
	}
	agent_id = DatumGetInt64(heap_getattr(tup, attnum, td->tg_relation->rd_att, &isnull));

	if (agent_modes == NULL || agent_modes_gen != gen)
	{
		HASHCTL		ctl;

		if (agent_modes)
			hash_destroy(agent_modes);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(AgentMode);
		agent_modes = hash_create("axme agent modes", 64, &ctl, HASH_ELEM | HASH_BLOBS);
		agent_modes_gen = gen;
	}
	m = hash_search(agent_modes, &agent_id, HASH_FIND, &found);
	if (!found)
	{
		Oid			argtypes[1] = {INT8OID};
		Datum		args[1] = {Int64GetDatum(agent_id)};
		bool		is_http = true; /* unknown agent: ring, to be safe */

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("SELECT delivery_mode = 'http' FROM axme.agents WHERE agent_id = $1",
								  1, argtypes, args, NULL, true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
		{
			is_http = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			m = hash_search(agent_modes, &agent_id, HASH_ENTER, &found);
			m->is_http = is_http;
		}
		SPI_finish();
		if (is_http)
			axme_ring_delivery();
		return PointerGetDatum(NULL);
	}
	if (m->is_http)
		axme_ring_delivery();
	return PointerGetDatum(NULL);
}

/*
 * AFTER INSERT OR UPDATE OF due_at row trigger on axme.timers: whoever writes a timer row (send,
 * the reminder and escalation functions, an operator), the delivery worker hears of it at commit
 * when it is due sooner than the worker planned to look.  No SPI, no catalog access.
 */
Datum
axme_timers_wake_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	bool		isnull;
	Datum		due;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("axme._timers_wake_trigger() must be called as a trigger")));
	if (shared == NULL)
		return PointerGetDatum(NULL);
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	due = heap_getattr(tup, 3, td->tg_relation->rd_att, &isnull);	/* (intent_id, kind, due_at) */
	axme_ring_timer(isnull ? 0 : DatumGetTimestampTz(due));
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Setup, from _PG_init
 * ------------------------------------------------------------------------------------------- */

/*
 * The commit callbacks in every backend that loads the library; with preload, the one shared
 * memory request/startup hook pair.
 */
void
axme_doorbell_init(void)
{
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

int
axme_unserved_databases(Oid *dboids, TimestampTz *since, bool *capped, int max)
{
	AxmeShared *ss = axme_shared();
	int			n = 0;

	if (ss == NULL)
		return 0;
	SpinLockAcquire(&ss->mutex);
	for (int i = 0; i < AXME_DB_SLOTS && n < max; i++)
	{
		AxmeDbSlot *s = &ss->slots[i];

		if (s->state == AXME_SLOT_UNUSED || s->unserved_since == 0 || s->delivery_pid != 0)
			continue;
		dboids[n] = s->dboid;
		since[n] = s->unserved_since;
		capped[n] = s->unserved_capped;
		n++;
	}
	SpinLockRelease(&ss->mutex);
	return n;
}
