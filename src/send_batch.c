/*
 * send_batch.c: axme.send_intents(intents jsonb[], idempotency_keys text[]), the set-based send.
 *
 * send_intent pays one SPI execution (executor start-up, the agent lookup, three inserts) per
 * intent; called 100 times from one statement that is most of its cost.  send_intents validates
 * every element with send_intent's own code (send.c), then stores all of them with one execution
 * of one statement (the intents and both first events of each, from arrays), so the per-intent
 * cost is the rows written.  Idempotency keys, human tasks and timers, which plain sends do not
 * have, take send_intent's per-intent steps.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "axme.h"
#include "send.h"

PG_FUNCTION_INFO_V1(axme_send_intents);

/* The most elements one call takes (documented in the function's comment and the README). */
#define AXME_MAX_BATCH 10000

static SPIPlanPtr batch_plan = NULL;
static SPIPlanPtr agent_plan = NULL;

/* The array parameters of batch_plan, in order, then the scalar one. */
enum
{
	B_ID, B_AGENT, B_TYPE, B_FROM, B_TO, B_CORR, B_REPLY, B_PAYLOAD, B_BUDGET, B_DEADLINE,
	B_NOT_BEFORE, B_REMIND_AFTER, B_REMIND_INTERVAL, B_MAX_REMINDERS, B_ESCALATE, B_TASK, B_KEY,
	N_BATCH_ARRAYS,
	B_ROLE = N_BATCH_ARRAYS, B_ROLE_ID, N_BATCH_PARAMS
};

static const Oid batch_elem_types[N_BATCH_ARRAYS] = {
	UUIDOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, UUIDOID, TEXTOID, JSONBOID, INT4OID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INT4OID, INT4OID, TEXTOID, JSONBOID, TEXTOID
};

/*
 * One statement stores every new intent of the call, in input order, and its first two events:
 * the same rows and values as send.c's store_plan.  The receiving agents were looked up before
 * (agent_plan), so no intent is written for a call that names an unregistered agent.  The events
 * are made from the intents' RETURNING rows, so the input (payloads included) is read once and
 * never copied into a CTE's tuplestore.
 */
static void
prepare_batch_plans(void)
{
	Oid			t[N_BATCH_PARAMS];

	if (agent_plan == NULL)
	{
		Oid			at = TEXTOID;

		agent_plan = axme_keep_plan(
			"SELECT agent_id, delivery_mode::pg_catalog.text,"
			"       (options->'retry'->>'max_attempts')::pg_catalog.int4"
			" FROM axme.agents WHERE address OPERATOR(pg_catalog.=) $1", 1, &at);
	}
	if (batch_plan != NULL)
		return;
	for (int i = 0; i < N_BATCH_ARRAYS; i++)
		t[i] = get_array_type(batch_elem_types[i]);
	t[B_ROLE] = TEXTOID;		/* the events' actor: the role's name */
	t[B_ROLE_ID] = REGROLEOID;	/* intents.sender_role: the role by OID */
	batch_plan = axme_keep_plan(
		"WITH i AS ("
		"  INSERT INTO axme.intents (intent_id, agent_id, intent_type, from_agent, to_agent,"
		"    sender_role, correlation_id, reply_to, payload, status, max_delivery_attempts,"
		"    deadline_at, not_before, due_at, remind_after_seconds, remind_interval_seconds,"
		"    max_reminders, escalate_to, human_task, idempotency_key, event_seq)"
		"  SELECT v.id, v.agent_id, v.intent_type, v.from_agent, v.to_agent, $19, v.corr,"
		"    v.reply_to, v.payload, 'SUBMITTED', v.budget, v.deadline_at, v.not_before,"
		"    GREATEST(pg_catalog.now(), v.not_before), v.remind_after, v.remind_interval,"
		"    v.max_reminders, v.escalate_to, v.human_task, v.idempotency_key, 2"
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		"    pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
		"    pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9),"
		"    pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12),"
		"    pg_catalog.unnest($13), pg_catalog.unnest($14), pg_catalog.unnest($15),"
		"    pg_catalog.unnest($16), pg_catalog.unnest($17))"
		"    AS v(id, agent_id, intent_type, from_agent, to_agent, corr, reply_to, payload, budget,"
		"         deadline_at, not_before, remind_after, remind_interval, max_reminders,"
		"         escalate_to, human_task, idempotency_key)"
		"  RETURNING intent_id, intent_type, to_agent, not_before"
		")"
		" INSERT INTO axme.events (intent_id, seq, event_type, status, actor, details)"
		" SELECT i.intent_id, s.seq, CASE s.seq WHEN 1 THEN 'intent.created' ELSE 'intent.submitted' END,"
		"   CASE s.seq WHEN 1 THEN 'CREATED' ELSE 'SUBMITTED' END, $18,"
		"   CASE WHEN s.seq OPERATOR(pg_catalog.=) 1"
		"        THEN pg_catalog.jsonb_build_object('intent_type', i.intent_type, 'to_agent', i.to_agent)"
		"        WHEN i.not_before > pg_catalog.now()"
		"        THEN pg_catalog.jsonb_build_object('not_before', i.not_before)"
		"        ELSE '{}'::pg_catalog.jsonb END"
		/* a constant VALUES list: a correlated one re-initializes its expressions on every row */
		" FROM i CROSS JOIN (VALUES (1), (2)) AS s(seq)",
		N_BATCH_PARAMS, t);
}

/* The receiving agents met so far in one call (most calls name one or a few). */
#define AGENT_CACHE 64

typedef struct AgentRef
{
	const char *address;
	int64		agent_id;
	int32		retry_max;		/* -1: no retry.max_attempts option */
	char	   *mode;
} AgentRef;

/*
 * Run a step for element idx (0-based) with its 1-based position in front of any error message:
 * "intents[3]: ...", the SQLSTATE unchanged.  Used only around steps that end the call when they
 * fail (the error is re-thrown, never swallowed), so no subtransaction is needed.
 */
#define WITH_INDEX(idx, stmt) \
	do { \
		MemoryContext wi_cxt = CurrentMemoryContext; \
		PG_TRY(); \
		{ \
			stmt; \
		} \
		PG_CATCH(); \
		{ \
			ErrorData  *wi_ed; \
			MemoryContextSwitchTo(wi_cxt); \
			wi_ed = CopyErrorData(); \
			FlushErrorState(); \
			wi_ed->message = psprintf("intents[%d]: %s", (idx) + 1, wi_ed->message); \
			ReThrowError(wi_ed); \
		} \
		PG_END_TRY(); \
	} while (0)

static Datum
build_array(Datum *values, bool *nulls, int n, Oid elem)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elem, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, elem,
											  typlen, typbyval, typalign));
}

/*
 * axme.send_intents(intents jsonb[], idempotency_keys text[] DEFAULT NULL) RETURNS SETOF uuid
 *
 * send_intent for many intents at once, in the caller's transaction: the ids in input order.
 * Every element is validated as send_intent validates its document; the first bad one raises
 * send_intent's SQLSTATE with "intents[N]: " (1-based) before its message, and nothing of the
 * call is written.  idempotency_keys, when given, has one key (or NULL) per intent; a key repeated
 * within the call, like a key used before, returns the first intent's id for the same document and
 * 23505 for another.  An empty array returns no rows.
 * Errors: those of send_intent; 22023 NULL or multi-dimensional intents, a NULL element, arrays of
 * different lengths, more than 10000 elements.
 */
Datum
axme_send_intents(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr;
	Datum	   *docs;
	bool	   *doc_nulls;
	int			n;
	Datum	   *keys = NULL;
	bool	   *key_nulls = NULL;
	AxmeIntent *p;
	pg_uuid_t  *ids;
	bool	   *existing;
	int64	   *agent_ids;
	char	  **modes;
	volatile int n_new = 0;
	AgentRef	agents[AGENT_CACHE];
	volatile int n_agents = 0;
	char	   *role;
	MemoryContext call_cxt = CurrentMemoryContext;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC | MAT_SRF_BLESS);
	axme_check_caller_may_send();
	role = axme_caller_name();

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"intents\" must not be null")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"intents\" must be a one-dimensional array")));
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT, &docs, &doc_nulls, &n);
	if (n > AXME_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"intents\" must have at most %d elements, got %d",
						AXME_MAX_BATCH, n),
				 errhint("Send in batches of at most %d.", AXME_MAX_BATCH)));
	if (!PG_ARGISNULL(1))
	{
		ArrayType  *karr = PG_GETARG_ARRAYTYPE_P(1);
		int			nk;

		if (ARR_NDIM(karr) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"idempotency_keys\" must be a one-dimensional array")));
		deconstruct_array(karr, TEXTOID, -1, false, TYPALIGN_INT, &keys, &key_nulls, &nk);
		if (nk != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"idempotency_keys\" must have as many elements as \"intents\" (%d), got %d",
							n, nk)));
	}
	if (n == 0)
		return (Datum) 0;

	/* --- validation of every element, before any write --- */
	p = palloc(sizeof(AxmeIntent) * n);
	for (volatile int i = 0; i < n; i++)
	{
		if (doc_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("intents[%d]: element must not be null", i + 1)));
		WITH_INDEX(i, axme_parse_intent(DatumGetJsonbP(docs[i]),
										(keys && !key_nulls[i]) ? DatumGetTextPP(keys[i]) : NULL,
										&p[i]));
	}

	ids = palloc(sizeof(pg_uuid_t) * n);
	existing = palloc0(sizeof(bool) * n);
	agent_ids = palloc0(sizeof(int64) * n);
	modes = palloc0(sizeof(char *) * n);

	SPI_connect();
	prepare_batch_plans();
	for (volatile int i = 0; i < n; i++)
	{
		AgentRef   *volatile ref = NULL;	/* set after the PG_TRY of WITH_INDEX */

		/* 42501: a mapped agent's name is its role's (checked once per distinct from_agent) */
		if (p[i].from_agent != NULL)
		{
			bool		seen = false;

			for (int j = 0; j < i && !seen; j++)
				seen = p[j].from_agent != NULL && strcmp(p[j].from_agent, p[i].from_agent) == 0;
			if (!seen)
				WITH_INDEX(i, axme_check_from_agent(p[i].from_agent));
		}

		axme_new_intent_id(&ids[i]);
		if (p[i].key != NULL)
			WITH_INDEX(i, existing[i] = axme_idempotency_claim(&p[i], role, &ids[i]));
		if (existing[i])
			continue;			/* as send_intent: a known key answers before the agent is looked at */
		n_new++;

		/* the receiving agent, before the intents are written: P0002 when not registered */
		for (int c = 0; c < n_agents && ref == NULL; c++)
			if (strcmp(agents[c].address, p[i].to_agent) == 0)
				ref = &agents[c];
		if (ref == NULL)
		{
			Datum		arg = CStringGetTextDatum(p[i].to_agent);
			bool		isnull;
			AgentRef   *slot = n_agents < AGENT_CACHE ? &agents[n_agents++] : &agents[AGENT_CACHE - 1];

			if (SPI_execute_plan(agent_plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "agent lookup failed");
			if (SPI_processed == 0)
			{
				WITH_INDEX(i, axme_check_address(p[i].to_agent, "to_agent"));
				ereport(ERROR,
						(errcode(ERRCODE_NO_DATA_FOUND),
						 errmsg("intents[%d]: agent \"%s\" is not registered", i + 1, p[i].to_agent),
						 errhint("Register it first: SELECT axme.register_agent('%s', 'poll');",
								 p[i].to_agent)));
			}
			slot->address = p[i].to_agent;
			slot->agent_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull));
			slot->mode = MemoryContextStrdup(call_cxt,
											 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
			slot->retry_max = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 3, &isnull));
			if (isnull)
				slot->retry_max = -1;
			ref = slot;
		}
		agent_ids[i] = ref->agent_id;
		modes[i] = ref->mode;
		if (p[i].budget < 0)
			p[i].budget = ref->retry_max >= 0 ? ref->retry_max : axme_max_delivery_attempts;
	}

	/* --- every new intent and its first two events, in one statement --- */
	if (n_new > 0)
	{
		Datum		args[N_BATCH_PARAMS];
		Datum	   *vals[N_BATCH_ARRAYS];
		bool	   *nulls[N_BATCH_ARRAYS];
		int			k = 0;

		for (int c = 0; c < N_BATCH_ARRAYS; c++)
		{
			vals[c] = palloc(sizeof(Datum) * n_new);
			nulls[c] = palloc0(sizeof(bool) * n_new);
		}
#define TEXT_OR_NULL(c, s) \
		do { if ((s) == NULL) nulls[c][k] = true; else vals[c][k] = CStringGetTextDatum(s); } while (0)
#define INT_OR_NULL(c, v) \
		do { vals[c][k] = Int32GetDatum(v); nulls[c][k] = (v) < 0; } while (0)
		for (int i = 0; i < n; i++)
		{
			if (existing[i])
				continue;
			vals[B_ID][k] = UUIDPGetDatum(&ids[i]);
			vals[B_AGENT][k] = Int64GetDatum(agent_ids[i]);
			TEXT_OR_NULL(B_TYPE, p[i].intent_type);
			TEXT_OR_NULL(B_FROM, p[i].from_agent);
			TEXT_OR_NULL(B_TO, p[i].to_agent);
			vals[B_CORR][k] = UUIDPGetDatum(&p[i].corr);
			TEXT_OR_NULL(B_REPLY, p[i].reply_to);
			vals[B_PAYLOAD][k] = JsonbPGetDatum(p[i].payload);
			INT_OR_NULL(B_BUDGET, p[i].budget);
			vals[B_DEADLINE][k] = TimestampTzGetDatum(p[i].deadline);
			nulls[B_DEADLINE][k] = !p[i].has_deadline;
			vals[B_NOT_BEFORE][k] = TimestampTzGetDatum(p[i].not_before);
			nulls[B_NOT_BEFORE][k] = !p[i].has_not_before;
			INT_OR_NULL(B_REMIND_AFTER, p[i].remind_after);
			INT_OR_NULL(B_REMIND_INTERVAL, p[i].remind_interval);
			INT_OR_NULL(B_MAX_REMINDERS, p[i].max_reminders);
			TEXT_OR_NULL(B_ESCALATE, p[i].escalate_to);
			vals[B_TASK][k] = PointerGetDatum(p[i].human_task);
			nulls[B_TASK][k] = p[i].human_task == NULL;
			TEXT_OR_NULL(B_KEY, p[i].key);
			k++;
		}
#undef TEXT_OR_NULL
#undef INT_OR_NULL
		for (int c = 0; c < N_BATCH_ARRAYS; c++)
			args[c] = build_array(vals[c], nulls[c], n_new, batch_elem_types[c]);
		args[B_ROLE] = CStringGetTextDatum(role);
		args[B_ROLE_ID] = ObjectIdGetDatum(GetOuterUserId());
		if (SPI_execute_plan(batch_plan, args, NULL, false, 0) != SPI_OK_INSERT ||
			SPI_processed != (uint64) n_new * 2)
			elog(ERROR, "batch intent insert failed");

		/* human tasks and timers: send_intent's per-intent steps, for the elements that have them */
		for (volatile int i = 0; i < n; i++)
			if (!existing[i])
				WITH_INDEX(i, axme_after_store(&p[i], &ids[i], modes[i]));
	}
	SPI_finish();

	for (int i = 0; i < n; i++)
	{
		Datum		d = UUIDPGetDatum(&ids[i]);
		bool		isnull = false;

		if (!existing[i])
			axme_after_commit_wakeups(&p[i], agent_ids[i], &ids[i], modes[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
	}
	return (Datum) 0;
}
