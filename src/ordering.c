/*
 * ordering.c: the store of an intent's ordering key, for send_intent and send_intents alike
 * (axme_after_store, send.c).  axme._order_on_send (sql/src/30_send.sql) takes the (agent, key)
 * lock, gives the intent its send order and, while an earlier intent of its key is not
 * terminal, no due time: the claims of every mode then never see it until the trigger
 * intents_key_release makes it due.  Only a send with a key runs this statement.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "axme.h"
#include "send.h"

static SPIPlanPtr order_plan = NULL;

/* SPI connected.  0A000 when the schema predates ordering keys. */
void
axme_store_ordering_key(const pg_uuid_t *id, const char *key)
{
	Datum		args[2];

	if (!axme_schema_has("intents", "ordering_key"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("intent field \"ordering_key\" needs axme 0.4.0 in this database"),
				 errhint("Run ALTER EXTENSION axme UPDATE.")));
	if (order_plan == NULL)
	{
		Oid			t[2] = {UUIDOID, TEXTOID};

		order_plan = axme_keep_plan("SELECT axme._order_on_send($1, $2)", 2, t);
	}
	args[0] = UUIDPGetDatum(id);
	args[1] = CStringGetTextDatum(key);
	if (SPI_execute_plan(order_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "ordering key store failed");
}
