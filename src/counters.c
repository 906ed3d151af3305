/*
 * counters.c: the monotonic counters of axme.metrics() (axme_*_total): intents sent, completed,
 * failed, dead-lettered, timed out and canceled, and http attempts by outcome, per agent.
 *
 * Never a row update per event: a trigger counts in this backend's memory while the transaction
 * runs (by subtransaction level, so what a rolled-back subtransaction counted is forgotten), and
 * doorbell.c's commit callback adds the counts to a shared table of (database, agent) slots.
 * Shared totals only grow during a server's life (its epoch); the delivery worker copies them
 * into axme.counters every 10 seconds (axme._counters_flush), and a reader adds the two so that
 * the value does not depend on when the last copy committed (see 85_operations.sql).  A clean
 * shutdown saves the shared table to a file that the next start loads (the epoch goes on); after
 * a crash the shared table starts empty under a new epoch and the counters lose what was not
 * copied yet, which Prometheus reads as a counter reset.  DROP EXTENSION axme (at commit) and
 * DROP DATABASE forget a database's slots (ddl.c calls in), so the agents of a new CREATE
 * EXTENSION, whose ids start again at 1, count from zero.
 *
 * Nothing here calls another axme file: doorbell.c calls in at shared memory startup and at the
 * end of every transaction, ddl.c when a database or the extension is dropped.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "counters.h"

PG_FUNCTION_INFO_V1(axme_count_trigger);
PG_FUNCTION_INFO_V1(axme_counters);

/* (counter, outcome) of every AxmeCounter, as axme.counters and axme.metrics() name them */
static const char *const counter_names[AXME_N_COUNTERS][2] = {
	{"sent", ""}, {"completed", ""}, {"failed", ""}, {"dead_lettered", ""}, {"timed_out", ""},
	{"canceled", ""},
	{"attempts", "success"}, {"attempts", "http_4xx"}, {"attempts", "http_5xx"},
	{"attempts", "http_other"}, {"attempts", "timeout"}, {"attempts", "connect"},
	{"attempts", "dns"}, {"attempts", "tls"}, {"attempts", "network"}, {"attempts", "redirect"},
	{"attempts", "ssrf_blocked"}, {"attempts", "invalid_url"}, {"attempts", "other"}
};

/* the saved shared table, written at a clean shutdown, read and removed at the next start */
#define COUNTERS_FILE PGSTAT_STAT_PERMANENT_DIRECTORY "/axme_counters.stat"
#define COUNTERS_FILE_MAGIC 0x61786d31	/* "axm1" */

static AxmeCounters *counters = NULL;

/* ---------------------------------------------------------------------------------------------
 * Shared memory
 * ------------------------------------------------------------------------------------------- */

/*
 * The slot of (dboid, agent_id), claimed when new; NULL when every slot is taken.  Slots are
 * never given back while the server runs, so open addressing needs no tombstones and a slot
 * found used can be read without the lock (its key is written before `used`).
 */
static AxmeCounterSlot *
counter_slot(Oid dboid, int64 agent_id)
{
	uint32		h = hash_combine(hash_bytes_uint32(dboid),
								 hash_bytes((const unsigned char *) &agent_id, sizeof(agent_id)));

	for (int k = 0; k < AXME_COUNTER_SLOTS; k++)
	{
		AxmeCounterSlot *s = &counters->slots[(h + k) % AXME_COUNTER_SLOTS];
		bool		mine = false;

		if (pg_atomic_read_u32(&s->used) == 0)
		{
			SpinLockAcquire(&counters->mutex);
			if (pg_atomic_read_u32(&s->used) == 0)
			{
				s->dboid = dboid;
				s->agent_id = agent_id;
				for (int c = 0; c < AXME_N_COUNTERS; c++)
					pg_atomic_init_u64(&s->n[c], 0);
				pg_write_barrier();
				pg_atomic_write_u32(&s->used, 1);
				mine = true;
			}
			SpinLockRelease(&counters->mutex);
			if (mine)
				return s;
		}
		pg_read_barrier();
		if (s->dboid == dboid && s->agent_id == agent_id)
			return s;
	}
	return NULL;
}

/* Postmaster exit: save the shared table for the next start, unless this is a crash. */
static void
save_counters(int code, Datum arg)
{
	FILE	   *f;
	uint32		header[2] = {COUNTERS_FILE_MAGIC, AXME_N_COUNTERS};

	if (code != 0 || counters == NULL)
		return;
	f = AllocateFile(COUNTERS_FILE ".tmp", PG_BINARY_W);
	if (f == NULL)
		goto error;
	if (fwrite(header, sizeof(header), 1, f) != 1 ||
		fwrite(&counters->epoch, sizeof(int64), 1, f) != 1)
		goto error;
	for (int i = 0; i < AXME_COUNTER_SLOTS; i++)
	{
		AxmeCounterSlot *s = &counters->slots[i];
		uint64		n[AXME_N_COUNTERS];

		if (pg_atomic_read_u32(&s->used) == 0 || s->dboid == InvalidOid)
			continue;			/* free, or of a dropped database or extension */
		for (int c = 0; c < AXME_N_COUNTERS; c++)
			n[c] = pg_atomic_read_u64(&s->n[c]);
		if (fwrite(&s->dboid, sizeof(Oid), 1, f) != 1 ||
			fwrite(&s->agent_id, sizeof(int64), 1, f) != 1 ||
			fwrite(n, sizeof(n), 1, f) != 1)
			goto error;
	}
	if (FreeFile(f) != 0)
	{
		f = NULL;
		goto error;
	}
	(void) durable_rename(COUNTERS_FILE ".tmp", COUNTERS_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", COUNTERS_FILE ".tmp")));
	if (f)
		FreeFile(f);
	unlink(COUNTERS_FILE ".tmp");
}

/* A fresh shared table: the saved one of a clean shutdown (same epoch), else empty (new epoch). */
static void
load_counters(void)
{
	FILE	   *f = AllocateFile(COUNTERS_FILE, PG_BINARY_R);
	uint32		header[2];
	int64		epoch;
	Oid			dboid;
	int64		agent_id;
	uint64		n[AXME_N_COUNTERS];

	counters->epoch = GetCurrentTimestamp();
	if (f == NULL)
		return;
	if (fread(header, sizeof(header), 1, f) == 1 && header[0] == COUNTERS_FILE_MAGIC &&
		header[1] == AXME_N_COUNTERS && fread(&epoch, sizeof(epoch), 1, f) == 1)
	{
		counters->epoch = epoch;
		while (fread(&dboid, sizeof(dboid), 1, f) == 1 &&
			   fread(&agent_id, sizeof(agent_id), 1, f) == 1 &&
			   fread(n, sizeof(n), 1, f) == 1)
		{
			AxmeCounterSlot *s = counter_slot(dboid, agent_id);

			for (int c = 0; s != NULL && c < AXME_N_COUNTERS; c++)
				pg_atomic_write_u64(&s->n[c], n[c]);
		}
	}
	FreeFile(f);
	unlink(COUNTERS_FILE);		/* a crash later must not bring back these totals */
}

/*
 * Called by doorbell.c's shared memory startup (in the postmaster, and again after every crash
 * reset, each time with a fresh segment).
 */
void
axme_counters_shmem_startup(AxmeCounters *c, bool found)
{
	counters = c;
	if (found)
		return;
	SpinLockInit(&counters->mutex);
	pg_atomic_init_u64(&counters->lost, 0);
	for (int i = 0; i < AXME_COUNTER_SLOTS; i++)
		pg_atomic_init_u32(&counters->slots[i].used, 0);
	load_counters();
	if (!IsUnderPostmaster)
		on_shmem_exit(save_counters, (Datum) 0);
}

/* ---------------------------------------------------------------------------------------------
 * What this transaction counted (reset at the end of every transaction)
 * ------------------------------------------------------------------------------------------- */

typedef struct PendingCount
{
	int64		agent_id;
	int			level;			/* subtransaction nesting level */
	uint32		n[AXME_N_COUNTERS];
} PendingCount;

static List *pending = NIL;		/* in TopTransactionContext */
static PendingCount *last = NULL;
static bool forget_at_commit = false;	/* DROP EXTENSION axme in this transaction */

/* Retire every slot of a database (see AxmeCounterSlot). */
static void
retire_database(Oid dboid)
{
	if (counters == NULL)
		return;
	SpinLockAcquire(&counters->mutex);
	for (int i = 0; i < AXME_COUNTER_SLOTS; i++)
	{
		AxmeCounterSlot *s = &counters->slots[i];

		if (pg_atomic_read_u32(&s->used) != 0 && s->dboid == dboid)
			s->dboid = InvalidOid;
	}
	SpinLockRelease(&counters->mutex);
}

/*
 * DROP EXTENSION axme (ddl.c): at commit this database's counters go, so that agents of a new
 * CREATE EXTENSION, whose ids start again at 1, start from zero.
 */
void
axme_counters_forget_at_commit(void)
{
	forget_at_commit = true;
}

/* DROP DATABASE done (ddl.c; it cannot run in a transaction block): its counters go. */
void
axme_counters_forget(Oid dboid)
{
	retire_database(dboid);
}

static void
count(int64 agent_id, AxmeCounter c)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (last == NULL || last->agent_id != agent_id || last->level != level)
	{
		last = NULL;
		foreach(lc, pending)
		{
			PendingCount *p = lfirst(lc);

			if (p->agent_id == agent_id && p->level == level)
			{
				last = p;
				break;
			}
		}
		if (last == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

			last = palloc0(sizeof(PendingCount));
			last->agent_id = agent_id;
			last->level = level;
			pending = lappend(pending, last);
			MemoryContextSwitchTo(old);
		}
	}
	last->n[c]++;
}

/* At commit (doorbell.c, XACT_EVENT_COMMIT): add this transaction's counts to shared memory. */
void
axme_counters_at_commit(void)
{
	ListCell   *lc;

	if (forget_at_commit)
		retire_database(MyDatabaseId);
	else if (counters != NULL)
	{
		foreach(lc, pending)
		{
			PendingCount *p = lfirst(lc);
			AxmeCounterSlot *s = counter_slot(MyDatabaseId, p->agent_id);

			for (int c = 0; c < AXME_N_COUNTERS; c++)
			{
				if (p->n[c] == 0)
					continue;
				if (s != NULL)
					pg_atomic_fetch_add_u64(&s->n[c], p->n[c]);
				else
					pg_atomic_fetch_add_u64(&counters->lost, p->n[c]);
			}
		}
	}
	axme_counters_at_abort();
}

/* At abort or prepare: forget this transaction's counts (memory goes with the transaction). */
void
axme_counters_at_abort(void)
{
	pending = NIL;
	last = NULL;
	forget_at_commit = false;
}

/* A subtransaction at `level` ended: forget its counts, or fold them into its parent's. */
void
axme_counters_subxact(bool commit, int level)
{
	ListCell   *lc;

	last = NULL;
	foreach(lc, pending)
	{
		PendingCount *p = lfirst(lc);
		PendingCount *parent = NULL;
		ListCell   *lc2;

		if (p->level < level)
			continue;
		if (commit)
		{
			foreach(lc2, pending)
			{
				PendingCount *q = lfirst(lc2);

				if (q != p && q->agent_id == p->agent_id && q->level == level - 1)
				{
					parent = q;
					break;
				}
			}
			if (parent == NULL)
			{
				p->level = level - 1;
				continue;
			}
			for (int c = 0; c < AXME_N_COUNTERS; c++)
				parent->n[c] += p->n[c];
		}
		pending = foreach_delete_current(pending, lc);
	}
}

/* ---------------------------------------------------------------------------------------------
 * The trigger and the reader
 * ------------------------------------------------------------------------------------------- */

/* attribute numbers of the columns the trigger reads, per table (looked up once) */
typedef struct TriggerColumns
{
	Oid			relid;
	int			agent_id;
	int			status;
	int			dead_letter_reason;
	int			error_class;
	int			http_status;
} TriggerColumns;

static TriggerColumns columns[2];

static TriggerColumns *
trigger_columns(Relation rel)
{
	TriggerColumns *t;

	for (size_t i = 0; i < lengthof(columns); i++)
		if (columns[i].relid == RelationGetRelid(rel))
			return &columns[i];
	t = &columns[columns[0].relid == InvalidOid ? 0 : 1];
	t->relid = RelationGetRelid(rel);
	t->agent_id = SPI_fnumber(rel->rd_att, "agent_id");
	t->status = SPI_fnumber(rel->rd_att, "status");
	t->dead_letter_reason = SPI_fnumber(rel->rd_att, "dead_letter_reason");
	t->error_class = SPI_fnumber(rel->rd_att, "error_class");
	t->http_status = SPI_fnumber(rel->rd_att, "http_status");
	return t;
}

/* A text column of the tuple as a C string in the current context, or NULL. */
static char *
text_column(HeapTuple tup, TupleDesc desc, int attnum)
{
	bool		isnull;
	Datum		d;

	if (attnum <= 0)
		return NULL;
	d = heap_getattr(tup, attnum, desc, &isnull);
	return isnull ? NULL : TextDatumGetCString(d);
}

/* The counter of an http attempt's outcome (error_class NULL: a 2xx answer). */
static AxmeCounter
attempt_outcome(const char *error_class, int http_status)
{
	static const char *const classes[] = {
		"timeout", "connect", "dns", "tls", "network", "redirect", "ssrf_blocked", "invalid_url"
	};

	if (error_class == NULL)
		return AXME_C_ATTEMPT_SUCCESS;
	if (strcmp(error_class, "http") == 0)
		return http_status >= 400 && http_status <= 499 ? AXME_C_ATTEMPT_HTTP_4XX :
			http_status >= 500 && http_status <= 599 ? AXME_C_ATTEMPT_HTTP_5XX :
			AXME_C_ATTEMPT_HTTP_OTHER;
	for (size_t i = 0; i < lengthof(classes); i++)
		if (strcmp(error_class, classes[i]) == 0)
			return (AxmeCounter) (AXME_C_ATTEMPT_TIMEOUT + i);
	return AXME_C_ATTEMPT_OTHER;
}

/*
 * axme._count_trigger(): AFTER row trigger with one argument saying what a row means:
 * 'sent' (INSERT on axme.intents), 'ended' (an UPDATE of axme.intents into a terminal status;
 * the WHEN clause checks the transition), 'attempt' (INSERT on axme.delivery_attempts).
 * Counts in this backend's memory only; a no-op without shared memory (not preloaded).
 */
Datum
axme_count_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerColumns *cols;
	TupleDesc	desc;
	HeapTuple	tup;
	const char *what;
	bool		isnull;
	Datum		d;
	int64		agent_id;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("axme._count_trigger() must be called as a trigger")));
	if (counters == NULL || td->tg_trigger->tgnargs != 1)
		return PointerGetDatum(NULL);
	what = td->tg_trigger->tgargs[0];
	desc = td->tg_relation->rd_att;
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	cols = trigger_columns(td->tg_relation);
	if (cols->agent_id <= 0)
		return PointerGetDatum(NULL);
	d = heap_getattr(tup, cols->agent_id, desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	agent_id = DatumGetInt64(d);

	if (strcmp(what, "sent") == 0)
		count(agent_id, AXME_C_SENT);
	else if (strcmp(what, "ended") == 0)
	{
		char	   *status = text_column(tup, desc, cols->status);

		if (status == NULL)
			return PointerGetDatum(NULL);
		if (strcmp(status, "COMPLETED") == 0)
			count(agent_id, AXME_C_COMPLETED);
		else if (strcmp(status, "FAILED") == 0)
		{
			(void) heap_getattr(tup, cols->dead_letter_reason, desc, &isnull);
			count(agent_id, isnull ? AXME_C_FAILED : AXME_C_DEAD_LETTERED);
		}
		else if (strcmp(status, "TIMED_OUT") == 0)
			count(agent_id, AXME_C_TIMED_OUT);
		else if (strcmp(status, "CANCELED") == 0)
			count(agent_id, AXME_C_CANCELED);
	}
	else if (strcmp(what, "attempt") == 0)
	{
		char	   *error_class = text_column(tup, desc, cols->error_class);
		int			http_status = 0;

		if (cols->http_status > 0)
		{
			d = heap_getattr(tup, cols->http_status, desc, &isnull);
			if (!isnull)
				http_status = DatumGetInt32(d);
		}
		count(agent_id, attempt_outcome(error_class, http_status));
	}
	return PointerGetDatum(NULL);
}

/*
 * axme._counters(): this database's shared totals, one row per agent and counter that moved:
 * (agent_id, counter, outcome, total, epoch).  Empty without shared memory.  A row with
 * agent_id NULL, counter 'lost', counts what was not kept because every slot was taken (in the
 * whole server).  The epoch is the server's (new after a start without the saved file) mixed
 * with the database's oid.
 */
Datum
axme_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		epoch;

	InitMaterializedSRF(fcinfo, 0);
	if (counters == NULL)
		return (Datum) 0;
	/* of this server start and this database: a copy restored into another database differs */
	epoch = counters->epoch ^ ((int64) MyDatabaseId << 32);
	for (int i = 0; i < AXME_COUNTER_SLOTS; i++)
	{
		AxmeCounterSlot *s = &counters->slots[i];

		if (pg_atomic_read_u32(&s->used) == 0)
			continue;
		pg_read_barrier();
		if (s->dboid != MyDatabaseId)
			continue;
		for (int c = 0; c < AXME_N_COUNTERS; c++)
		{
			Datum		values[5];
			bool		nulls[5] = {false, false, false, false, false};
			uint64		n = pg_atomic_read_u64(&s->n[c]);

			if (n == 0)
				continue;
			values[0] = Int64GetDatum(s->agent_id);
			values[1] = CStringGetTextDatum(counter_names[c][0]);
			values[2] = CStringGetTextDatum(counter_names[c][1]);
			values[3] = Int64GetDatum((int64) n);
			values[4] = Int64GetDatum(epoch);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	{
		Datum		values[5];
		bool		nulls[5] = {true, false, false, false, false};

		values[0] = (Datum) 0;
		values[1] = CStringGetTextDatum("lost");
		values[2] = CStringGetTextDatum("");
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&counters->lost));
		values[4] = Int64GetDatum(epoch);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
