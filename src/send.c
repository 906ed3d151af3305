/*
 * send.c: axme.send_intent(intent jsonb, idempotency_key text), the sender's one call.
 *
 * Written in C because it is the hot path of every producer (often a trigger): the intent document
 * is validated in one pass over its keys, then three prepared statements store the intent and its
 * first two events (intent.created, intent.submitted) in the caller's transaction.  A stream
 * agent's wake-up NOTIFY is queued for commit (doorbell.c).
 */
#include "postgres.h"

#include <sys/time.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/md5.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "axme.h"
#include "doorbell.h"
#include "send.h"

PG_FUNCTION_INFO_V1(axme_send_intent);

/* Every key an intent document may have; anything else is refused (22023). */
static const char *const intent_keys[] = {
	"intent_type", "to_agent", "payload", "from_agent", "correlation_id", "reply_to",
	"deadline_at", "not_before", "max_delivery_attempts", "remind_after_seconds",
	"remind_interval_seconds", "max_reminders", "escalate_to", "human_task", "traceparent",
	"tracestate", "priority", "ordering_key"
};

#define N_INTENT_KEYS lengthof(intent_keys)

static SPIPlanPtr key_insert_plan = NULL;
static SPIPlanPtr key_select_plan = NULL;
static SPIPlanPtr key_insert_plan_legacy = NULL;
static SPIPlanPtr key_select_plan_legacy = NULL;
static SPIPlanPtr key_insert_plan_text = NULL;
static SPIPlanPtr key_select_plan_text = NULL;
static SPIPlanPtr store_plan = NULL;
static bool store_plan_role_oids = false;	/* which sender_role column store_plan was made for */
static SPIPlanPtr timer_plan = NULL;
static SPIPlanPtr inbox_plan = NULL;
static SPIPlanPtr trace_plan = NULL;

/* The parameters of store_plan, in order. */
enum
{
	P_ID, P_TYPE, P_FROM, P_TO, P_ROLE, P_CORR, P_REPLY, P_PAYLOAD, P_BUDGET, P_DEADLINE,
	P_NOT_BEFORE, P_REMIND_AFTER, P_REMIND_INTERVAL, P_MAX_REMINDERS, P_ESCALATE, P_TASK, P_KEY,
	P_DEFAULT_BUDGET, P_ROLE_ID, N_STORE_PARAMS
};

/*
 * One statement stores the intent and its first two events and returns the receiving agent:
 * a single executor run per send.  No row comes back when the agent is not registered, and then
 * nothing was inserted (both INSERTs select from the agent lookup).
 */
static void
prepare_key_plans(void)
{
	if (key_insert_plan == NULL)
	{
		Oid			t[5] = {TEXTOID, TEXTOID, UUIDOID, TEXTOID, REGROLEOID};

		key_insert_plan = axme_keep_plan(
			"INSERT INTO axme.idempotency_keys (sender, key, intent_id, request_hash, sender_role)"
			" VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", 5, t);
	}
	if (key_select_plan == NULL)
	{
		Oid			t[5] = {TEXTOID, TEXTOID, UUIDOID, TEXTOID, REGROLEOID};

		/* the parameters of the insert ($3 and $4 unused) */
		key_select_plan = axme_keep_plan(
			"SELECT intent_id, request_hash FROM axme.idempotency_keys"
			" WHERE sender_role OPERATOR(pg_catalog.=) $5 AND sender OPERATOR(pg_catalog.=) $1"
			" AND key OPERATOR(pg_catalog.=) $2", 5, t);
	}
}

/*
 * The key plans of the 0.3.0 SQL (until ALTER EXTENSION UPDATE): sender_role stored as a name.
 */
static void
prepare_text_key_plans(void)
{
	if (key_insert_plan_text == NULL)
	{
		Oid			t[5] = {TEXTOID, TEXTOID, UUIDOID, TEXTOID, TEXTOID};

		key_insert_plan_text = axme_keep_plan(
			"INSERT INTO axme.idempotency_keys (sender, key, intent_id, request_hash, sender_role)"
			" VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", 5, t);
		key_select_plan_text = axme_keep_plan(
			"SELECT intent_id, request_hash FROM axme.idempotency_keys"
			" WHERE sender_role OPERATOR(pg_catalog.=) $5 AND sender OPERATOR(pg_catalog.=) $1"
			" AND key OPERATOR(pg_catalog.=) $2", 5, t);
	}
}

/*
 * The key plans of SQL older than 0.3.0 (no idempotency_keys.sender_role, until ALTER EXTENSION
 * UPDATE): keys scoped by coalesce(from_agent, sender_role) only.  The update gives their rows the
 * sending role of their intent.
 */
static void
prepare_legacy_key_plans(void)
{
	if (key_insert_plan_legacy == NULL)
	{
		Oid			t[5] = {TEXTOID, TEXTOID, UUIDOID, TEXTOID, TEXTOID};

		key_insert_plan_legacy = axme_keep_plan(
			"INSERT INTO axme.idempotency_keys (sender, key, intent_id, request_hash)"
			" VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", 5, t);
		key_select_plan_legacy = axme_keep_plan(
			"SELECT intent_id, request_hash FROM axme.idempotency_keys"
			" WHERE sender OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2", 5, t);
	}
}

/*
 * role_oids: intents.sender_role is a regrole (0.4.0 SQL) and gets the caller's OID ($19); the
 * SQL of an older release stores the name ($5).  The events' actor is the name either way.
 */
static void
prepare_plans(bool role_oids)
{
	if (store_plan != NULL && store_plan_role_oids != role_oids)
	{
		SPI_freeplan(store_plan);	/* ALTER EXTENSION UPDATE ran in this session's life */
		store_plan = NULL;
	}
	if (store_plan == NULL)
	{
		Oid			t[N_STORE_PARAMS] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, UUIDOID,
			TEXTOID, JSONBOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INT4OID, INT4OID,
		TEXTOID, JSONBOID, TEXTOID, INT4OID, REGROLEOID};

		store_plan_role_oids = role_oids;
		store_plan = axme_keep_plan(psprintf(
			"WITH a AS ("
			"  SELECT agent_id, address, delivery_mode,"
			"         (options->'retry'->>'max_attempts')::pg_catalog.int4 AS retry_max"
			"  FROM axme.agents WHERE address OPERATOR(pg_catalog.=) $4"
			"), i AS ("
			"  INSERT INTO axme.intents (intent_id, agent_id, intent_type, from_agent, to_agent,"
			"    sender_role, correlation_id, reply_to, payload, status, max_delivery_attempts,"
			"    deadline_at, not_before, due_at, remind_after_seconds, remind_interval_seconds,"
			"    max_reminders, escalate_to, human_task, idempotency_key, event_seq)"
			"  SELECT $1, a.agent_id, $2, $3, a.address, %s, $6, $7, $8, 'SUBMITTED',"
			"    COALESCE($9, a.retry_max, $18), $10, $11, GREATEST(pg_catalog.now(), $11),"
			"    $12, $13, $14, $15, $16, $17, 2"
			"  FROM a"
			"), e AS ("
			"  INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)"
			"  SELECT $1, s.seq, s.event_type, s.status, $5, s.details"
			"  FROM a, LATERAL (VALUES"
			"    (1, 'intent.created', 'CREATED',"
			"     pg_catalog.jsonb_build_object('intent_type', $2, 'to_agent', a.address)),"
			"    (2, 'intent.submitted', 'SUBMITTED',"
			"     CASE WHEN $11 > pg_catalog.now()"
			"          THEN pg_catalog.jsonb_build_object('not_before', $11)"
			"          ELSE '{}'::pg_catalog.jsonb END)) AS s(seq, event_type, status, details)"
			")"
			" SELECT agent_id, delivery_mode FROM a", role_oids ? "$19" : "$5"), N_STORE_PARAMS, t);
	}
}

static void invalid(const char *fmt, const char *field) pg_attribute_noreturn();

static void
invalid(const char *fmt, const char *field)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg(fmt, field)));
}

static JsonbValue *
get_key(Jsonb *intent, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&intent->root, key, strlen(key), NULL);

	if (v != NULL && v->type == jbvNull)
		return NULL;
	return v;
}

/* A string field as a palloc'd C string, or NULL when absent; 22023 when not a string. */
static char *
get_string(Jsonb *intent, const char *key)
{
	JsonbValue *v = get_key(intent, key);

	if (v == NULL)
		return NULL;
	if (v->type != jbvString)
		invalid("intent field \"%s\" must be a string", key);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
is_object(JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data) &&
		!JsonContainerIsScalar(v->val.binary.data);
}

/* An integer field within [lo, hi], or -1 when absent; 22023 otherwise. */
static int32
get_int(Jsonb *intent, const char *key, int32 lo, int32 hi)
{
	JsonbValue *v = get_key(intent, key);
	char	   *text;
	double		d;

	if (v == NULL)
		return -1;
	if (v->type != jbvNumeric)
		invalid("intent field \"%s\" must be an integer", key);
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	d = strtod(text, NULL);
	/* the JSON text itself must be an integer: 3.0 and 3e0 are refused like in agent options */
	if (strpbrk(text, ".eE") != NULL || d < lo || d > hi)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("intent field \"%s\" must be an integer between %d and %d, got %s",
						key, lo, hi, text)));
	return (int32) d;
}

/*
 * Parse text with a type's input function; a parse error becomes `errcode` naming the field.
 * The original error is discarded only to be replaced by another ERROR, which is safe.
 */
static Datum
parse_field(PGFunction infunc, const char *str, const char *key, const char *what, int sqlstate)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		result = (Datum) 0;

	PG_TRY();
	{
		result = DirectFunctionCall3(infunc, CStringGetDatum(str), ObjectIdGetDatum(InvalidOid),
									 Int32GetDatum(-1));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("intent field \"%s\" is not a valid %s: \"%.100s\"", key, what, str)));
	}
	PG_END_TRY();
	return result;
}

/* Refuse keys outside intent_keys, naming them. */
static void
check_unknown_keys(Jsonb *intent)
{
	JsonbIterator *it = JsonbIteratorInit(&intent->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	StringInfoData unknown;

	initStringInfo(&unknown);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		known = false;

		if (tok != WJB_KEY)
			continue;
		for (int i = 0; i < (int) N_INTENT_KEYS; i++)
		{
			if ((int) strlen(intent_keys[i]) == v.val.string.len &&
				strncmp(intent_keys[i], v.val.string.val, v.val.string.len) == 0)
				known = true;
		}
		if (!known)
			appendStringInfo(&unknown, "%s%.*s", unknown.len ? ", " : "",
							 Min(v.val.string.len, 100), v.val.string.val);
	}
	if (unknown.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown intent field(s): %s", unknown.data),
				 errhint("Known fields: intent_type, to_agent, payload, from_agent, correlation_id, "
						 "reply_to, deadline_at, not_before, max_delivery_attempts, "
						 "remind_after_seconds, remind_interval_seconds, max_reminders, "
						 "escalate_to, human_task, traceparent, tracestate, priority, ordering_key.")));
}

static void
new_uuid(pg_uuid_t *id)
{
	if (!pg_strong_random(id->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	id->data[6] = (id->data[6] & 0x0f) | 0x40;	/* version 4 */
	id->data[8] = (id->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
}

/*
 * new_uuid_v7: fill *id with a time-ordered UUID, version 7 (RFC 9562 section 5.7), for intent ids.
 *
 * Layout (big-endian, the byte order PostgreSQL compares uuids in):
 *   bytes 0..5   unix_ts_ms: milliseconds since 1970-01-01 UTC from the wall clock;
 *   byte  6      version 7 in the high nibble, then the top 4 bits of a 12-bit counter (rand_a);
 *   byte  7      the low 8 bits of the counter;
 *   byte  8      variant 10 in the top two bits, then random;
 *   bytes 9..15  random (rand_b: 62 random bits in all, from pg_strong_random).
 *
 * Why: random (v4) intent ids put every send's insert into the intents primary key and the
 * events primary key (intent_id, seq) at a random leaf; with millions of intents of history
 * those leaves are not in shared buffers and each first touch after a checkpoint writes a
 * full-page image.  v7 ids land at the right edge of both indexes (bench/history).
 *
 * Monotonic within a backend (RFC 9562 section 6.2, method 1: fixed-length dedicated counter):
 * when the clock has moved past the last timestamp used, the counter restarts at a random value
 * below 2048 (so at least 2048 ids fit in one millisecond); otherwise (same millisecond, or the
 * clock went back) the previous timestamp is kept and the counter incremented, and when the
 * counter passes 4095 the timestamp is advanced by one millisecond ahead of the clock.  So the
 * ids one backend makes are strictly increasing; ids of different backends in the same
 * millisecond are not ordered among themselves (nothing relies on that: they are only keys).
 * Assumes the wall clock is roughly right; the timestamp is informational, never trusted for
 * ordering intents (created_at is).  State is per process (static), no shared memory.
 * Errors: ERRCODE_INTERNAL_ERROR if pg_strong_random fails.
 */
static void
new_uuid_v7(pg_uuid_t *id)
{
	static uint64 last_ms = 0;
	static uint32 counter = 0;
	struct timeval tv;
	uint64		ms;
	int			i;

	if (!pg_strong_random(id->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	gettimeofday(&tv, NULL);
	ms = (uint64) tv.tv_sec * 1000 + (uint64) tv.tv_usec / 1000;
	if (ms > last_ms)
	{
		last_ms = ms;
		/* random start in 0..2047, from two of the random bytes about to be overwritten */
		counter = (((uint32) id->data[6] << 8) | id->data[7]) & 0x7ff;
	}
	else if (++counter > 0xfff)
	{
		last_ms++;
		counter = (((uint32) id->data[6] << 8) | id->data[7]) & 0x7ff;
	}
	for (i = 0; i < 6; i++)
		id->data[i] = (uint8) (last_ms >> (8 * (5 - i)));
	id->data[6] = 0x70 | (uint8) (counter >> 8);	/* version 7, counter high bits */
	id->data[7] = (uint8) (counter & 0xff);
	id->data[8] = (id->data[8] & 0x3f) | 0x80;	/* RFC 9562 variant 10 */
}

static Datum
text_or_null(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(s);
}

/*
 * axme_parse_intent: validate one intent document (REFERENCE.md section 1) and its idempotency key
 * into *p, before anything is written; shared by send_intent and send_intents (send_batch.c).
 * intent NULL is refused like a non-object; key may be NULL.  No SPI: pure checks, in the caller's
 * memory context.  Errors: 22023 invalid or unknown field or key, 22P02 correlation_id not a UUID,
 * 54000 payload over axme.max_payload_bytes.
 */
void
axme_parse_intent(Jsonb *intent, text *idem_key, AxmeIntent *p)
{
	JsonbValue *v;
	size_t		payload_bytes;

	memset(p, 0, sizeof(*p));
	p->budget = p->remind_after = p->remind_interval = p->max_reminders = -1;
	if (intent == NULL)
		invalid("argument \"%s\" must not be null", "intent");
	if (!JB_ROOT_IS_OBJECT(intent) || JB_ROOT_IS_SCALAR(intent))
		invalid("argument \"%s\" must be a JSON object", "intent");
	p->doc = intent;
	check_unknown_keys(intent);

	p->intent_type = get_string(intent, "intent_type");
	if (p->intent_type == NULL)
		invalid("intent field \"%s\" is required", "intent_type");
	if (!axme_intent_type_is_valid(p->intent_type, strlen(p->intent_type)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid intent_type \"%.300s\"", p->intent_type),
				 errhint("Use a dotted lower-case name ending in a version, e.g. intent.order.process.v1.")));
	if (strncmp(p->intent_type, "axme.", 5) == 0 && !axme_reserved_send())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("intent_type \"%.300s\" is reserved", p->intent_type),
				 errdetail("Intent types beginning with \"axme.\" are axme's own (axme.ping.v1: axme.ping_agent)."),
				 errhint("Name your intent types after your own domain, e.g. intent.order.process.v1.")));
	p->to_agent = get_string(intent, "to_agent");
	if (p->to_agent == NULL)
		invalid("intent field \"%s\" is required", "to_agent");

	v = get_key(intent, "payload");
	if (v == NULL || !is_object(v))
		invalid("intent field \"%s\" is required and must be a JSON object", "payload");
	p->payload = JsonbValueToJsonb(v);
	payload_bytes = strlen(JsonbToCString(NULL, &p->payload->root, VARSIZE(p->payload)));
	if (payload_bytes > (size_t) axme_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("payload is %zu bytes, larger than axme.max_payload_bytes (%d)",
						payload_bytes, axme_max_payload_bytes)));

	p->from_agent = get_string(intent, "from_agent");
	if (p->from_agent != NULL)
		axme_check_address(p->from_agent, "from_agent");
	p->reply_to = get_string(intent, "reply_to");
	if (p->reply_to != NULL)
		axme_check_address(p->reply_to, "reply_to");
	p->escalate_to = get_string(intent, "escalate_to");
	if (p->escalate_to != NULL)
		axme_check_address(p->escalate_to, "escalate_to");

	v = get_key(intent, "correlation_id");
	if (v != NULL && v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("intent field \"correlation_id\" must be a UUID string")));
	{
		char	   *corr_text = get_string(intent, "correlation_id");

		if (corr_text != NULL)
			memcpy(&p->corr, DatumGetUUIDP(parse_field(uuid_in, corr_text, "correlation_id", "UUID",
													   ERRCODE_INVALID_TEXT_REPRESENTATION)),
				   sizeof(pg_uuid_t));
		else
			new_uuid(&p->corr);
	}

	{
		char	   *s = get_string(intent, "deadline_at");

		if (s != NULL)
		{
			p->deadline = DatumGetTimestampTz(parse_field(timestamptz_in, s, "deadline_at", "timestamp",
														  ERRCODE_INVALID_PARAMETER_VALUE));
			p->has_deadline = true;
			if (TIMESTAMP_NOT_FINITE(p->deadline))
				invalid("intent field \"%s\" must be a finite timestamp", "deadline_at");
			if (p->deadline <= GetCurrentTimestamp())
				invalid("intent field \"%s\" is not in the future", "deadline_at");
		}
		s = get_string(intent, "not_before");
		if (s != NULL)
		{
			p->not_before = DatumGetTimestampTz(parse_field(timestamptz_in, s, "not_before", "timestamp",
															ERRCODE_INVALID_PARAMETER_VALUE));
			p->has_not_before = true;
			if (TIMESTAMP_NOT_FINITE(p->not_before))
				invalid("intent field \"%s\" must be a finite timestamp", "not_before");
		}
		if (p->has_deadline && p->has_not_before && p->not_before >= p->deadline)
			invalid("intent field \"%s\" is not before deadline_at", "not_before");
	}
	p->budget = get_int(intent, "max_delivery_attempts", 1, 1000);
	p->remind_after = get_int(intent, "remind_after_seconds", 1, 31536000);
	p->remind_interval = get_int(intent, "remind_interval_seconds", 1, 31536000);
	p->max_reminders = get_int(intent, "max_reminders", 0, 1000);
	v = get_key(intent, "human_task");
	if (v != NULL)
	{
		if (!is_object(v))
			invalid("intent field \"%s\" must be a JSON object", "human_task");
		p->human_task = JsonbValueToJsonb(v);
	}
	/* priority: -100..100, 0 when absent (get_int's -1 for "absent" is a valid priority) */
	p->priority = get_key(intent, "priority") != NULL ? get_int(intent, "priority", -100, 100) : 0;
	p->ordering_key = get_string(intent, "ordering_key");
	if (p->ordering_key != NULL)
	{
		int			chars = pg_mbstrlen(p->ordering_key);

		if (chars < 1 || chars > 128)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("intent field \"ordering_key\" must be 1..128 characters, got %d", chars)));
	}
	p->traceparent = get_string(intent, "traceparent");
	if (p->traceparent != NULL && !axme_traceparent_is_valid(p->traceparent))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("intent field \"traceparent\" is not a W3C traceparent: \"%.100s\"", p->traceparent),
				 errhint("Use version-traceid-parentid-flags in lower-case hex, e.g. "
						 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.")));
	p->tracestate = get_string(intent, "tracestate");
	if (p->tracestate != NULL && p->traceparent == NULL)
		invalid("intent field \"%s\" needs a traceparent", "tracestate");
	if (p->tracestate != NULL && !axme_tracestate_is_valid(p->tracestate))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("intent field \"tracestate\" is not a W3C tracestate"),
				 errhint("Use at most 32 comma-separated key=value members, at most 512 printable ASCII characters.")));
	if (idem_key != NULL)
	{
		int			chars = pg_mbstrlen_with_len(VARDATA_ANY(idem_key), VARSIZE_ANY_EXHDR(idem_key));

		if (chars < 8 || chars > 128)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"idempotency_key\" must be 8..128 characters, got %d", chars)));
		p->key = text_to_cstring(idem_key);
	}
}

/* A new intent id: UUIDv7, time-ordered (see new_uuid_v7). */
void
axme_new_intent_id(pg_uuid_t *id)
{
	new_uuid_v7(id);
}

/*
 * axme_idempotency_claim: with p->key set, record (sender_role, coalesce(from_agent, sender_role),
 * key) -> *id, or when that key is already recorded for the same document, put the first intent's
 * id into *id and return true (nothing to store).  Scoped by the sending role too: roles sharing an
 * unmapped from_agent label never share keys.  SPI connected; the row is visible to the next
 * statement of the transaction, so a key repeated in one send_intents call finds its first use.
 * Errors: 23505 the key was used with a different document; 40001 the key that conflicted was
 * removed meanwhile (retry).
 */
bool
axme_idempotency_claim(const AxmeIntent *p, const char *role, pg_uuid_t *id)
{
	char	   *doc = JsonbToCString(NULL, &p->doc->root, VARSIZE(p->doc));
	const char *errstr = NULL;
	char		hash[33];
	Datum		args[5];
	SPIPlanPtr	insert_plan,
				select_plan;
	char	   *old_hash;
	Datum		old_id;
	bool		isnull;
	Oid			role_type;

	if (!pg_md5_hash(doc, strlen(doc), hash, &errstr))
		elog(ERROR, "could not compute MD5 hash: %s", errstr);
	args[0] = CStringGetTextDatum(p->from_agent ? p->from_agent : role);
	args[1] = CStringGetTextDatum(p->key);
	args[2] = UUIDPGetDatum(id);
	args[3] = CStringGetTextDatum(hash);
	args[4] = CStringGetTextDatum(role);
	role_type = axme_schema_column_type("idempotency_keys", "sender_role");
	if (role_type == REGROLEOID)
	{
		/* 0.4.0: the sending role by OID, so a later role of the same name has other keys */
		args[4] = ObjectIdGetDatum(GetOuterUserId());
		prepare_key_plans();
		insert_plan = key_insert_plan;
		select_plan = key_select_plan;
	}
	else if (OidIsValid(role_type))
	{
		prepare_text_key_plans();
		insert_plan = key_insert_plan_text;
		select_plan = key_select_plan_text;
	}
	else
	{
		prepare_legacy_key_plans();
		insert_plan = key_insert_plan_legacy;
		select_plan = key_select_plan_legacy;
	}
	if (SPI_execute_plan(insert_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "idempotency key insert failed");
	if (SPI_processed > 0)
		return false;
	if (SPI_execute_plan(select_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "idempotency key lookup failed");
	if (SPI_processed != 1)		/* the conflicting key went away meanwhile (expired) */
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access to idempotency key \"%s\"", p->key),
				 errdetail("A concurrent transaction removed the key after it conflicted with this send."),
				 errhint("Retry the send.")));
	old_id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	old_hash = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (strcmp(old_hash, hash) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("idempotency key \"%s\" was already used with a different intent", p->key),
				 errdetail("It created intent %s.",
						   DatumGetCString(DirectFunctionCall1(uuid_out, old_id)))));
	memcpy(id, DatumGetUUIDP(old_id), sizeof(pg_uuid_t));
	return true;
}

/*
 * axme_after_store: what follows the store of one intent, SPI connected: the inbox checks and
 * task assignment (axme._inbox_on_send) and the timer rows.  mode is the receiving agent's
 * delivery mode.  Errors: those of axme._inbox_on_send (see axme_send_intent).
 */
void
axme_after_store(const AxmeIntent *p, pg_uuid_t *id, const char *mode)
{
	/*
	 * Trace context, only when given: a second statement, so that the send of an intent without
	 * one runs exactly the statements it did before (the update is HOT: no index has its columns).
	 */
	if (p->traceparent != NULL)
	{
		Datum		targs[3];
		char		tnulls[4] = "   ";

		if (!axme_schema_has("intents", "traceparent"))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("intent field \"traceparent\" needs axme 0.4.0 in this database"),
					 errhint("Run ALTER EXTENSION axme UPDATE.")));
		if (trace_plan == NULL)
		{
			Oid			t[3] = {UUIDOID, TEXTOID, TEXTOID};

			trace_plan = axme_keep_plan(
				"UPDATE axme.intents SET traceparent = $2, tracestate = $3"
				" WHERE intent_id OPERATOR(pg_catalog.=) $1", 3, t);
		}
		targs[0] = UUIDPGetDatum(id);
		targs[1] = CStringGetTextDatum(p->traceparent);
		targs[2] = text_or_null(p->tracestate, tnulls, 2);
		if (SPI_execute_plan(trace_plan, targs, tnulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "trace context update failed");
	}

	/*
	 * Priority, only when not 0: a second statement, as for the trace context, so that a send
	 * without one runs exactly the statements it did before.
	 */
	if (p->priority != 0)
		axme_store_priority(id, p->priority);
	/* Ordering key, only when given: its send order under the (agent, key) lock (ordering.c) */
	if (p->ordering_key != NULL)
		axme_store_ordering_key(id, p->ordering_key);

	/*
	 * Human tasks, reply_to and escalate_to are checked, and a task assigned, by
	 * axme._inbox_on_send() (sql, section 2), after the store: an ERROR there undoes the send
	 * with the statement.  Plain intents skip it, and so does a database still at axme 0.2.0
	 * with this library installed (no inbox before ALTER EXTENSION axme UPDATE).
	 */
	if ((p->human_task != NULL || p->reply_to != NULL || p->escalate_to != NULL ||
		 strcmp(mode, "inbox") == 0)
		&& axme_schema_has("threads", NULL))
	{
		Datum		arg = UUIDPGetDatum(id);

		if (inbox_plan == NULL)
		{
			Oid			t = UUIDOID;

			inbox_plan = axme_keep_plan("SELECT axme._inbox_on_send($1)", 1, &t);
		}
		if (SPI_execute_plan(inbox_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "inbox send checks failed");
	}

	/* --- the timer rows (only when asked for: the plain send path does nothing more) --- */
	if (p->has_deadline || p->remind_after >= 0)
	{
		Datum		targs[3];
		char		tnulls[4] = "   ";

		/*
		 * None in a database still at axme 0.2.0 with this library installed (no axme.timers
		 * before ALTER EXTENSION UPDATE: poll and the http claim enforce deadlines there).
		 */
		bool		have_table = axme_schema_has("timers", NULL);

		if (have_table && timer_plan == NULL)
		{
			Oid			t[3] = {UUIDOID, TIMESTAMPTZOID, INT4OID};

			timer_plan = axme_keep_plan(
				"INSERT INTO axme.timers (intent_id, kind, due_at)"
				" SELECT $1, v.kind, v.due_at FROM (VALUES ('deadline', $2),"
				"   ('remind', pg_catalog.now() OPERATOR(pg_catalog.+)"
				"              pg_catalog.make_interval(secs => $3))) v(kind, due_at)"
				" WHERE v.due_at IS NOT NULL", 3, t);
		}
		targs[0] = UUIDPGetDatum(id);
		targs[1] = TimestampTzGetDatum(p->deadline);
		tnulls[1] = p->has_deadline ? ' ' : 'n';
		targs[2] = Int32GetDatum(p->remind_after);
		tnulls[2] = p->remind_after >= 0 ? ' ' : 'n';
		/* the trigger on axme.timers rings the delivery worker at commit (doorbell.c) */
		if (have_table &&
			SPI_execute_plan(timer_plan, targs, tnulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "timer insert failed");
	}
}

/*
 * axme_after_commit_wakeups: the wake-ups of one stored intent, after SPI_finish: the internal
 * worker, the timer loop for a delayed stream or inbox intent, a stream agent's NOTIFY.
 */
void
axme_after_commit_wakeups(const AxmeIntent *p, int64 agent_id, const pg_uuid_t *id, const char *mode)
{
	bool		is_stream = strcmp(mode, "stream") == 0;
	bool		delayed = p->has_not_before &&
		p->not_before > GetCurrentTransactionStartTimestamp();

	if (strcmp(mode, "internal") == 0)
		axme_ring_handler();
	/* a delayed stream wake-up or inbox task: the delivery worker looks again then (doorbell.c, timers.c) */
	else if (delayed && (is_stream || strcmp(mode, "inbox") == 0))
		axme_ring_timer(p->not_before);

	/* a delayed intent's wake-up comes from the worker when it becomes due (timers.c) */
	if (is_stream && !delayed)
		axme_ring_stream(agent_id, id);
}

/*
 * axme.send_intent(intent jsonb, idempotency_key text DEFAULT NULL) RETURNS uuid
 *
 * Validates the intent document (REFERENCE.md section 1), stores it SUBMITTED with events 1 and
 * 2, and returns its id; with an idempotency key already used by the same sender for the same
 * document, returns the first intent's id instead.  Runs in the caller's transaction.
 * Errors: 42501 the caller is not a member of axme_sender (or axme_admin), or names as from_agent an
 * agent mapped to a role it does not have; 22023 invalid or unknown field, 22P02 correlation_id not
 * a UUID, 54000 payload over axme.max_payload_bytes, P0002 to_agent not registered, 23505 key reused
 * with another document; from axme._inbox_on_send(): 22023 invalid human_task, human_task to a
 * non-inbox agent or none to an inbox agent, escalate_to not an inbox, P0002 reply_to or
 * escalate_to not registered; 40001 the key that conflicted was removed meanwhile (retry).
 */
Datum
axme_send_intent(PG_FUNCTION_ARGS)
{
	AxmeIntent	p;
	char	   *role;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	int64		agent_id;
	char	   *mode;
	char		mode_buf[NAMEDATALEN];
	bool		isnull;

	/*
	 * The sender is the calling role (SET ROLE honoured), not the owner this SECURITY DEFINER
	 * function runs as; it must be a member of axme_sender or axme_admin (42501).
	 */
	if (!axme_reserved_send())	/* ping_agent checked its caller itself (render.c) */
		axme_check_caller_may_send();
	role = axme_caller_name();

	/* --- validation, before any write --- */
	axme_parse_intent(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0),
					  PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1), &p);

	SPI_connect();
	prepare_plans(axme_schema_column_type("intents", "sender_role") == REGROLEOID);
	axme_check_from_agent(p.from_agent);	/* 42501: a mapped agent's name is its role's */
	new_uuid_v7(id);			/* time-ordered: keeps primary key inserts at the right edge */

	/* --- idempotency: (sender_role, coalesce(from_agent, sender_role), key) -> one intent --- */
	if (p.key != NULL && axme_idempotency_claim(&p, role, id))
	{
		SPI_finish();
		PG_RETURN_UUID_P(id);
	}

	/* --- the intent and its first two events, in one statement --- */
	{
		Datum		args[N_STORE_PARAMS];
		char		nulls[N_STORE_PARAMS + 1];

		memset(nulls, ' ', N_STORE_PARAMS);
		nulls[N_STORE_PARAMS] = '\0';
		args[P_ID] = UUIDPGetDatum(id);
		args[P_TYPE] = CStringGetTextDatum(p.intent_type);
		args[P_FROM] = text_or_null(p.from_agent, nulls, P_FROM);
		args[P_TO] = CStringGetTextDatum(p.to_agent);
		args[P_ROLE] = CStringGetTextDatum(role);
		args[P_CORR] = UUIDPGetDatum(&p.corr);
		args[P_REPLY] = text_or_null(p.reply_to, nulls, P_REPLY);
		args[P_PAYLOAD] = JsonbPGetDatum(p.payload);
		args[P_BUDGET] = Int32GetDatum(p.budget);
		nulls[P_BUDGET] = p.budget < 0 ? 'n' : ' ';
		args[P_DEADLINE] = TimestampTzGetDatum(p.deadline);
		nulls[P_DEADLINE] = p.has_deadline ? ' ' : 'n';
		args[P_NOT_BEFORE] = TimestampTzGetDatum(p.not_before);
		nulls[P_NOT_BEFORE] = p.has_not_before ? ' ' : 'n';
		args[P_REMIND_AFTER] = Int32GetDatum(p.remind_after);
		nulls[P_REMIND_AFTER] = p.remind_after < 0 ? 'n' : ' ';
		args[P_REMIND_INTERVAL] = Int32GetDatum(p.remind_interval);
		nulls[P_REMIND_INTERVAL] = p.remind_interval < 0 ? 'n' : ' ';
		args[P_MAX_REMINDERS] = Int32GetDatum(p.max_reminders);
		nulls[P_MAX_REMINDERS] = p.max_reminders < 0 ? 'n' : ' ';
		args[P_ESCALATE] = text_or_null(p.escalate_to, nulls, P_ESCALATE);
		args[P_TASK] = PointerGetDatum(p.human_task);
		nulls[P_TASK] = p.human_task ? ' ' : 'n';
		args[P_KEY] = text_or_null(p.key, nulls, P_KEY);
		args[P_DEFAULT_BUDGET] = Int32GetDatum(axme_max_delivery_attempts);
		args[P_ROLE_ID] = ObjectIdGetDatum(GetOuterUserId());
		if (SPI_execute_plan(store_plan, args, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "intent insert failed");
	}
	if (SPI_processed == 0)
	{
		axme_check_address(p.to_agent, "to_agent");
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("agent \"%s\" is not registered", p.to_agent),
				 errhint("Register it first: SELECT axme.register_agent('%s', 'poll');", p.to_agent)));
	}
	agent_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	mode = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	axme_after_store(&p, id, mode);
	/* the mode lives in SPI's memory, which SPI_finish frees: keep a copy for the wake-ups */
	strlcpy(mode_buf, mode, sizeof(mode_buf));
	SPI_finish();
	axme_after_commit_wakeups(&p, agent_id, id, mode_buf);

	PG_RETURN_UUID_P(id);
}
