/*
 * claim.c: the claim and the record of http deliveries: the delivery worker's two short
 * transactions, through SPI.
 *
 * Claim: axme._http_claim hands out due intents of http agents (FOR UPDATE SKIP LOCKED, a lease
 * of timeout_ms + 30 s) and returns what to send.  Record: axme._http_record stores each finished
 * attempt and moves its intent on (complete, retry, dead letter), many per transaction.  No
 * transaction is ever open while a request is in flight.  Both first check that the extension
 * still exists (DROP EXTENSION ends the worker).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "axme.h"
#include "delivery.h"
#include "status.h"
#include "worker.h"
#include "worker_tx.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static MemoryContext delivery_context = NULL;

/*
 * After an error in one of the worker's transactions (a deadlock with a session updating the
 * same intents, say): report it as a WARNING, roll back, and let the caller try again later,
 * instead of ending the worker with requests in flight.
 */
static void
recover_from_error(MemoryContext cxt, const char *what)
{
	ErrorData  *edata = axme_tx_abort(cxt);

	ereport(WARNING,
			(errmsg("axme delivery worker: %s failed, will retry: %s", what, edata->message)));
	axme_status_error(edata->message);	/* shown in axme.worker_status */
	FreeErrorData(edata);
}

static bool
extension_exists(void)
{
	return axme_lock_extension();
}

/*
 * Whether this database has axme with the http delivery functions (0.2.0 or later).
 * Opens and commits its own transaction.
 */
bool
axme_queue_ready(bool full_check)
{
	bool		ok;

	axme_tx_begin("axme delivery worker: checking the extension");
	ok = extension_exists();
	if (ok && full_check)
	{
		bool		isnull;

		if (SPI_execute("SELECT pg_catalog.to_regprocedure('axme._http_claim(integer,bigint[],integer[])') IS NOT NULL",
						true, 1) != SPI_OK_SELECT)
			elog(ERROR, "checking for axme._http_claim failed");
		ok = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	axme_tx_commit();
	return ok;
}

static Datum
int8_array(int n, int64 *v)
{
	Datum	   *d = palloc(sizeof(Datum) * (n + 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
int4_array(int n, int *v)
{
	Datum	   *d = palloc(sizeof(Datum) * (n + 1));

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT));
}

/* a text[] column as a List of C strings allocated in cxt */
static List *
text_list(Datum arr, bool isnull, MemoryContext cxt)
{
	List	   *l = NIL;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	MemoryContext old;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *s;

		if (nulls[i])
			continue;
		s = TextDatumGetCString(elems[i]);
		old = MemoryContextSwitchTo(cxt);
		l = lappend(l, pstrdup(s));
		MemoryContextSwitchTo(old);
	}
	return l;
}

static char *
text_copy(Datum d, MemoryContext cxt)
{
	return MemoryContextStrdup(cxt, TextDatumGetCString(d));
}

/*
 * Claim up to max_total deliveries, respecting per-agent free slots (busy_* = what is in flight).
 * Returns AxmeDelivery structs in a long-lived context; *next_due is when to look again
 * (DT_NOEND: nothing due later).  *ext_gone when the extension has been dropped.
 */
static List *
claim_tx(int max_total, int nbusy, int64 *busy_agents, int *busy_counts,
		 TimestampTz *next_due, bool *ext_gone)
{
	List	   *claimed = NIL;
	Datum		args[3];
	int64	   *agents;
	int		   *counts;
	int			n;
	bool		isnull;
	Datum		due;
	MemoryContext caller;

	*next_due = DT_NOEND;
	*ext_gone = false;
	if (delivery_context == NULL)
		delivery_context = AllocSetContextCreate(TopMemoryContext, "axme deliveries",
												 ALLOCSET_DEFAULT_SIZES);
	caller = CurrentMemoryContext;
	axme_tx_begin("axme delivery worker: claiming deliveries");
	if (!extension_exists())
	{
		axme_tx_commit();
		*ext_gone = true;
		return NIL;
	}
	if (claim_plan == NULL)
	{
		Oid			types[3] = {INT4OID, INT8ARRAYOID, INT4ARRAYOID};

		claim_plan = axme_keep_plan("SELECT * FROM axme._http_claim($1, $2, $3)", 3, types);
		next_due_plan = axme_keep_plan("SELECT axme._http_next_due($1, $2)", 2, types + 1);
	}
	args[0] = Int32GetDatum(max_total);
	args[1] = int8_array(nbusy, busy_agents);
	args[2] = int4_array(nbusy, busy_counts);
	/* also at max_total = 0: an agent with nothing in flight may still take one */
	if (SPI_execute_plan(claim_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "axme._http_claim failed");

	n = (int) SPI_processed;
	agents = palloc(sizeof(int64) * (nbusy + n + 1));
	counts = palloc(sizeof(int) * (nbusy + n + 1));
	memcpy(agents, busy_agents, sizeof(int64) * nbusy);
	memcpy(counts, busy_counts, sizeof(int) * nbusy);
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		AxmeDelivery *d = MemoryContextAllocZero(delivery_context, sizeof(AxmeDelivery));
		MemoryContext old;

		strlcpy(d->intent_id, SPI_getvalue(t, td, 1), sizeof(d->intent_id));
		d->attempt = DatumGetInt32(SPI_getbinval(t, td, 2, &isnull));
		d->agent_id = DatumGetInt64(SPI_getbinval(t, td, 3, &isnull));
		d->url = text_copy(SPI_getbinval(t, td, 4, &isnull), delivery_context);
		d->body = text_copy(SPI_getbinval(t, td, 5, &isnull), delivery_context);
		d->body_len = strlen(d->body);
		d->secrets = text_list(SPI_getbinval(t, td, 6, &isnull), isnull, delivery_context);
		d->headers = text_list(SPI_getbinval(t, td, 7, &isnull), isnull, delivery_context);
		d->timeout_ms = DatumGetInt32(SPI_getbinval(t, td, 8, &isnull));
		due = SPI_getbinval(t, td, 9, &isnull);
		d->ca_file = isnull ? NULL : text_copy(due, delivery_context);
		if (td->natts >= 11)	/* 0.3.0: client certificate for mTLS */
		{
			due = SPI_getbinval(t, td, 10, &isnull);
			d->client_cert = isnull ? NULL : text_copy(due, delivery_context);
			due = SPI_getbinval(t, td, 11, &isnull);
			d->client_key = isnull ? NULL : text_copy(due, delivery_context);
		}
		old = MemoryContextSwitchTo(caller);
		claimed = lappend(claimed, d);
		MemoryContextSwitchTo(old);
		agents[nbusy + i] = d->agent_id;
		counts[nbusy + i] = 1;
	}
	/* the list lives in the caller's context, its elements in delivery_context */
	args[0] = int8_array(nbusy + n, agents);
	args[1] = int4_array(nbusy + n, counts);
	if (SPI_execute_plan(next_due_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "axme._http_next_due failed");
	due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		*next_due = DatumGetTimestampTz(due);
	axme_tx_commit();
	return claimed;
}

/* Bytes from the network as valid text of the database encoding (invalid bytes: '?', no NULs). */
static char *
sanitize(const char *p, int len)
{
	StringInfoData out;
	int			enc = GetDatabaseEncoding();

	initStringInfo(&out);
	while (len > 0)
	{
		int			l;

		if (*p == '\0')
		{
			p++, len--;
			continue;
		}
		if (IS_HIGHBIT_SET(*p))
		{
			l = pg_encoding_verifymbchar(enc, p, len);
			if (l < 0)
			{
				appendStringInfoChar(&out, '?');
				p++, len--;
				continue;
			}
			appendBinaryStringInfo(&out, p, l);
			p += l, len -= l;
			continue;
		}
		appendStringInfoChar(&out, *p);
		p++, len--;
	}
	return out.data;
}

/* The first bytes of the response, as text; NULL when there is none. */
static char *
excerpt(AxmeDelivery *d)
{
	int			len = Min(d->response.len, AXME_EXCERPT_CAP);

	if (len == 0)
		return NULL;
	return sanitize(d->response.data, len);
}

/* The whole response body when it is valid JSON (then a 2xx can carry a status/result). */
static bool
response_is_json(AxmeDelivery *d)
{
	JsonLexContext *lex;

	if (d->response.len == 0 || d->response_total != (size_t) d->response.len)
		return false;
	if (!pg_verify_mbstr(GetDatabaseEncoding(), d->response.data, d->response.len, true))
		return false;
	lex = makeJsonLexContextCstringLen(d->response.data, d->response.len,
									   GetDatabaseEncoding(), true);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/* a one-dimensional array of n datums with nulls (nulls[i] true: NULL) */
static Datum
make_array(Datum *v, bool *nulls, int n, Oid type, int len, bool byval, char align)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(v, nulls, 1, dims, lbs, type, len, byval, align));
}

static int
by_intent_id(const ListCell *a, const ListCell *b)
{
	return strcmp(((AxmeDelivery *) lfirst(a))->intent_id, ((AxmeDelivery *) lfirst(b))->intent_id);
}

/*
 * Record finished deliveries in one transaction (axme._http_record_batch) and free them.
 * false when the extension is gone (nothing recorded).
 */
static bool
record_tx(List *done)
{
	ListCell   *lc;
	int			n = list_length(done);
	int			i = 0;
	Datum	   *v[11];
	bool	   *nl[11];
	Datum		args[11];

	if (done == NIL)
		return true;
	/* in intent_id order, the order in which other sessions had better lock many intents too */
	list_sort(done, by_intent_id);
	axme_tx_begin("axme delivery worker: recording deliveries");
	if (!extension_exists())
	{
		axme_tx_commit();
		return false;
	}
	if (record_plan == NULL)
	{
		Oid			types[11] = {UUIDARRAYOID, INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
			FLOAT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		INT8ARRAYOID};

		record_plan = axme_keep_plan("SELECT axme._http_record_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
								   11, types);
	}
	for (int k = 0; k < 11; k++)
	{
		v[k] = palloc(sizeof(Datum) * n);
		nl[k] = palloc0(sizeof(bool) * n);
	}
	foreach(lc, done)
	{
		AxmeDelivery *d = lfirst(lc);
		char	   *ex = excerpt(d);

		v[0][i] = DirectFunctionCall1(uuid_in, CStringGetDatum(d->intent_id));
		v[1][i] = Int32GetDatum(d->attempt);
		v[2][i] = Int64GetDatum(d->agent_id);
		v[3][i] = TimestampTzGetDatum(d->started_at);
		v[4][i] = Float8GetDatum(d->duration_ms);
		v[5][i] = Int32GetDatum(d->http_status);
		nl[5][i] = d->http_status == 0;
		if (d->error_class)
			v[6][i] = CStringGetTextDatum(d->error_class);
		else
			nl[6][i] = true;
		if (d->error)
			v[7][i] = CStringGetTextDatum(sanitize(d->error, strlen(d->error)));
		else
			nl[7][i] = true;
		if (ex)
			v[8][i] = CStringGetTextDatum(ex);
		else
			nl[8][i] = true;
		if (d->error_class == NULL && response_is_json(d))
			v[9][i] = PointerGetDatum(cstring_to_text_with_len(d->response.data, d->response.len));
		else
			nl[9][i] = true;
		v[10][i] = Int64GetDatum(d->retry_after_ms);
		nl[10][i] = d->retry_after_ms < 0;
		i++;
	}
	args[0] = make_array(v[0], nl[0], n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR);
	args[1] = make_array(v[1], nl[1], n, INT4OID, 4, true, TYPALIGN_INT);
	args[2] = make_array(v[2], nl[2], n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	args[3] = make_array(v[3], nl[3], n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	args[4] = make_array(v[4], nl[4], n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	args[5] = make_array(v[5], nl[5], n, INT4OID, 4, true, TYPALIGN_INT);
	for (int k = 6; k < 10; k++)
		args[k] = make_array(v[k], nl[k], n, TEXTOID, -1, false, TYPALIGN_INT);
	args[10] = make_array(v[10], nl[10], n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	if (SPI_execute_plan(record_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "axme._http_record_batch failed");
	axme_tx_commit();
	foreach(lc, done)
		axme_http_free(lfirst(lc));
	list_free(done);
	return true;
}

/*
 * Claim due deliveries (see claim_tx); on an error, nothing is claimed and *next_due is in a
 * second.
 */
List *
axme_queue_claim(int max_total, int nbusy, int64 *busy_agents, int *busy_counts,
				 TimestampTz *next_due, bool *ext_gone)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *volatile result = NIL;

	PG_TRY();
	{
		result = claim_tx(max_total, nbusy, busy_agents, busy_counts, next_due, ext_gone);
	}
	PG_CATCH();
	{
		recover_from_error(cxt, "claiming deliveries");
		result = NIL;
		*ext_gone = false;
		*next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
	}
	PG_END_TRY();
	return result;
}

/*
 * Record finished deliveries (see record_tx).  AXME_RECORD_OK: recorded and freed;
 * AXME_RECORD_GONE: the extension was dropped; AXME_RECORD_FAILED: an error, the list is kept
 * for another try.
 */
int
axme_queue_record(List *done)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int result = AXME_RECORD_FAILED;

	PG_TRY();
	{
		result = record_tx(done) ? AXME_RECORD_OK : AXME_RECORD_GONE;
	}
	PG_CATCH();
	{
		recover_from_error(cxt, "recording deliveries");
		result = AXME_RECORD_FAILED;
	}
	PG_END_TRY();
	return result;
}
