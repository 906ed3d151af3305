/*
 * wakeup.c: wake-ups sent when a transaction commits.
 *
 * Two kinds: a NOTIFY per stream agent that received intents in the transaction (one per agent,
 * with the first intent id and the count, never payload data), and a broadcast on the wait_for
 * condition variables of intents that reached a terminal status.  Both are collected while the
 * transaction runs and acted on at commit; sends made in a rolled-back subtransaction are
 * forgotten, so a NOTIFY never counts an intent that does not exist.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/condition_variable.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "axme.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "miscadmin.h"
#include "delivery.h"

PG_FUNCTION_INFO_V1(axme_notify_agent);
PG_FUNCTION_INFO_V1(axme_wake_waiters);
PG_FUNCTION_INFO_V1(axme_wake_http);
PG_FUNCTION_INFO_V1(axme_http_wake_trigger);
PG_FUNCTION_INFO_V1(axme_agents_changed);

/* Sends to one agent made at one subtransaction nesting level. */
typedef struct PendingNotify
{
	int64		agent_id;
	int			level;
	int64		count;
	pg_uuid_t	first_id;
} PendingNotify;

/* Both lists live in TopTransactionContext and are reset at the end of every transaction. */
static List *pending_notifies = NIL;
static bool pending_buckets[AXME_WAIT_BUCKETS];
static bool any_pending_bucket = false;
static bool pending_http_wake = false;	/* wake this database's http worker at commit */
static bool pending_agents_changed = false; /* agents' modes changed: flush caches at commit */

/*
 * Which agents are http agents, cached per backend so that the trigger on axme.intents wakes the
 * http worker only for sends to http agents (a poll or stream workload never wakes it).  Flushed
 * when the cluster-wide agents generation moves (bumped at the commit of register_agent).
 */
typedef struct AgentMode
{
	int64		agent_id;
	bool		is_http;
} AgentMode;

static HTAB *agent_modes = NULL;
static uint32 agent_modes_gen = 0;

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
 * issued just before commit (see axme_xact_callback), one per agent.
 */
void
axme_queue_notify(int64 agent_id, const pg_uuid_t *id)
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

/*
 * axme._notify_agent(agent_id bigint, intent_id uuid): SQL access to axme_queue_notify().
 */
Datum
axme_notify_agent(PG_FUNCTION_ARGS)
{
	axme_queue_notify(PG_GETARG_INT64(0), PG_GETARG_UUID_P(1));
	PG_RETURN_VOID();
}

/*
 * The wait bucket of an intent: which condition variable its waiters sleep on.
 */
int
axme_wait_bucket(const pg_uuid_t *id)
{
	return (int) (hash_bytes(id->data, UUID_LEN) % AXME_WAIT_BUCKETS);
}

/*
 * axme._wake_waiters(intent_id uuid): wake wait_for() callers of this intent at commit.
 * A no-op without shared memory (their fallback loop re-checks on its own).
 */
Datum
axme_wake_waiters(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);

	pending_buckets[axme_wait_bucket(id)] = true;
	any_pending_bucket = true;
	PG_RETURN_VOID();
}

/*
 * Wake this database's http worker (or have the launcher start one) when the transaction
 * commits.  The worker's own transactions need no wake-up: it looks again after recording.
 */
void
axme_wake_http_at_commit(void)
{
	if (!axme_is_http_worker)
		pending_http_wake = true;
}

/*
 * axme._wake_http(): see axme_wake_http_at_commit.
 */
Datum
axme_wake_http(PG_FUNCTION_ARGS)
{
	axme_wake_http_at_commit();
	PG_RETURN_VOID();
}

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
	if (pending_http_wake || !axme_agents_generation(&gen))
		return PointerGetDatum(NULL);	/* already woken, or no worker (not preloaded) */

	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	attnum = SPI_fnumber(td->tg_relation->rd_att, "agent_id");
	if (attnum <= 0)
	{
		axme_wake_http_at_commit();
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
		bool		is_http = true; /* unknown agent: wake, to be safe */

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
			axme_wake_http_at_commit();
		return PointerGetDatum(NULL);
	}
	if (m->is_http)
		axme_wake_http_at_commit();
	return PointerGetDatum(NULL);
}

/*
 * axme._agents_changed(): an agent was registered or changed mode; at commit, every backend's
 * cache of agent modes is flushed.
 */
Datum
axme_agents_changed(PG_FUNCTION_ARGS)
{
	pending_agents_changed = true;
	PG_RETURN_VOID();
}

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

static void
broadcast_pending_waiters(void)
{
	AxmeShared *shared = axme_shmem();

	if (shared == NULL)
		return;
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
	pending_http_wake = false;
	pending_agents_changed = false;
}

static void
axme_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			send_pending_notifies();
			break;
		case XACT_EVENT_COMMIT:
			/* the terminal transitions are visible to others now */
			if (any_pending_bucket)
				broadcast_pending_waiters();
			if (pending_agents_changed)
				axme_agents_bump();
			if (pending_http_wake)
				axme_worker_wake(MyDatabaseId);
			reset_pending();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * A prepared transaction cannot NOTIFY; its stream receivers find the intents on
			 * their next poll, and its waiters on their next periodic re-check.
			 */
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
axme_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

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

/*
 * Called once from _PG_init: registers the transaction callbacks in this backend.
 */
void
axme_wakeup_init(void)
{
	RegisterXactCallback(axme_xact_callback, NULL);
	RegisterSubXactCallback(axme_subxact_callback, NULL);
}
