/*
 * queue.c: the http worker's two short transactions, through SPI.
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

#include "delivery.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static MemoryContext delivery_context = NULL;

static void
begin_tx(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
end_tx(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static bool
extension_exists(void)
{
	return OidIsValid(get_extension_oid("axme", true));
}

/*
 * Whether this database has axme with the http delivery functions (0.2.0 or later).
 * Opens and commits its own transaction.
 */
bool
axme_queue_ready(bool full_check)
{
	bool		ok;

	begin_tx("axme: checking the extension");
	ok = extension_exists();
	if (ok && full_check)
	{
		bool		isnull;

		if (SPI_execute("SELECT pg_catalog.to_regprocedure('axme._http_claim(integer,bigint[],integer[])') IS NOT NULL",
						true, 1) != SPI_OK_SELECT)
			elog(ERROR, "checking for axme._http_claim failed");
		ok = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	end_tx();
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
List *
axme_queue_claim(int max_total, int nbusy, int64 *busy_agents, int *busy_counts,
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
	begin_tx("axme: claiming deliveries");
	if (!extension_exists())
	{
		end_tx();
		*ext_gone = true;
		return NIL;
	}
	if (claim_plan == NULL)
	{
		Oid			types[3] = {INT4OID, INT8ARRAYOID, INT4ARRAYOID};

		claim_plan = prepare_kept("SELECT * FROM axme._http_claim($1, $2, $3)", 3, types);
		next_due_plan = prepare_kept("SELECT axme._http_next_due($1, $2)", 2, types + 1);
	}
	args[0] = Int32GetDatum(max_total);
	args[1] = int8_array(nbusy, busy_agents);
	args[2] = int4_array(nbusy, busy_counts);
	if (max_total > 0)
	{
		if (SPI_execute_plan(claim_plan, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "axme._http_claim failed");
	}
	else
		SPI_processed = 0;

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
	end_tx();
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

/*
 * Record finished deliveries in one transaction and free them.  false when the extension is
 * gone (nothing recorded).
 */
bool
axme_queue_record(List *done)
{
	ListCell   *lc;

	if (done == NIL)
		return true;
	begin_tx("axme: recording deliveries");
	if (!extension_exists())
	{
		end_tx();
		return false;
	}
	if (record_plan == NULL)
	{
		Oid			types[11] = {UUIDOID, INT4OID, INT8OID, TIMESTAMPTZOID, FLOAT8OID, INT4OID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID};

		record_plan = prepare_kept("SELECT axme._http_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
								   11, types);
	}
	foreach(lc, done)
	{
		AxmeDelivery *d = lfirst(lc);
		Datum		v[11];
		char		n[11];
		char	   *ex = excerpt(d);

		memset(n, ' ', sizeof(n));
		v[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(d->intent_id));
		v[1] = Int32GetDatum(d->attempt);
		v[2] = Int64GetDatum(d->agent_id);
		v[3] = TimestampTzGetDatum(d->started_at);
		v[4] = Float8GetDatum(d->duration_ms);
		v[5] = Int32GetDatum(d->http_status);
		if (d->http_status == 0)
			n[5] = 'n';
		if (d->error_class)
			v[6] = CStringGetTextDatum(d->error_class);
		else
			n[6] = 'n';
		if (d->error)
			v[7] = CStringGetTextDatum(sanitize(d->error, strlen(d->error)));
		else
			n[7] = 'n';
		if (ex)
			v[8] = CStringGetTextDatum(ex);
		else
			n[8] = 'n';
		if (d->error_class == NULL && response_is_json(d))
			v[9] = PointerGetDatum(cstring_to_text_with_len(d->response.data, d->response.len));
		else
			n[9] = 'n';
		v[10] = Int64GetDatum(d->retry_after_ms);
		if (d->retry_after_ms < 0)
			n[10] = 'n';
		if (SPI_execute_plan(record_plan, v, n, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "axme._http_record failed");
	}
	end_tx();
	foreach(lc, done)
		axme_http_free(lfirst(lc));
	list_free(done);
	return true;
}
