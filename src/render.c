/*
 * render.c: the webhook request as the http worker would send it, for axme.render_request (the
 * Standard Webhooks signature of src/sign.c and the worker's user-agent), and the reserved test
 * event of axme.ping_agent (intent types beginning with "axme." are axme's own: send_intent
 * refuses them from users, src/send.c).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "axme.h"
#include "delivery.h"

PG_FUNCTION_INFO_V1(axme_webhook_signature);
PG_FUNCTION_INFO_V1(axme_user_agent);
PG_FUNCTION_INFO_V1(axme_send_reserved);

/* true while axme_send_reserved runs its send: send_intent then accepts an axme.* type */
static bool reserved_send = false;

bool
axme_reserved_send(void)
{
	return reserved_send;
}

/*
 * axme._webhook_signature(msg_id text, ts bigint, body text, secrets text[]) RETURNS text: the
 * webhook-signature header value the worker would send for these bytes at Unix time ts (the same
 * function the worker signs with); NULL when there is no secret.  STRICT.
 */
Datum
axme_webhook_signature(PG_FUNCTION_ARGS)
{
	char	   *msg_id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		ts = PG_GETARG_INT64(1);
	text	   *body = PG_GETARG_TEXT_PP(2);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(3);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *secrets = NIL;
	char	   *sig;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			secrets = lappend(secrets, TextDatumGetCString(elems[i]));
	sig = axme_sign(msg_id, ts, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), secrets);
	if (sig[0] == '\0')
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(sig));
}

/* axme._user_agent() RETURNS text: the user-agent header of the worker (this library's version). */
Datum
axme_user_agent(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text("axme/" AXME_VERSION));
}

/*
 * axme._send_reserved(intent jsonb) RETURNS uuid: send_intent for an intent of one of axme's own
 * types (axme.ping.v1), which send_intent refuses otherwise.  The caller (ping_agent) has checked
 * that the calling role may do this; the caller need not be a member of axme_sender.
 */
Datum
axme_send_reserved(PG_FUNCTION_ARGS)
{
	Datum		args[1] = {PG_GETARG_DATUM(0)};
	Oid			argtypes[1] = {JSONBOID};
	Datum		result = (Datum) 0;
	bool		isnull = true;
	pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

	reserved_send = true;
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("SELECT axme.send_intent($1)", 1, argtypes, args, NULL, false, 1)
			!= SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "axme: reserved send failed");
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			memcpy(copy, DatumGetUUIDP(result), sizeof(pg_uuid_t));
		SPI_finish();
	}
	PG_FINALLY();
	{
		reserved_send = false;
	}
	PG_END_TRY();
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_UUID_P(copy);
}
