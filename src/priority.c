/*
 * priority.c: the store of an intent's priority (-100..100), taken by axme_parse_intent
 * (send.c) and stored after the intent row by axme_after_store, for send_intent and
 * send_intents alike.  Only a send that gives a priority other than 0 runs this statement;
 * a plain send keeps the column's default and the statements it ran before.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/uuid.h"

#include "axme.h"
#include "send.h"

static SPIPlanPtr priority_plan = NULL;

/* SPI connected.  22023 would have come from the parse; 0A000 when the schema predates it. */
void
axme_store_priority(const pg_uuid_t *id, int32 priority)
{
	Datum		args[2];

	if (!axme_schema_has("intents", "priority"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("intent field \"priority\" needs axme 0.4.0 in this database"),
				 errhint("Run ALTER EXTENSION axme UPDATE.")));
	if (priority_plan == NULL)
	{
		Oid			t[2] = {UUIDOID, INT4OID};

		priority_plan = axme_keep_plan(
			"UPDATE axme.intents SET priority = $2"
			" WHERE intent_id OPERATOR(pg_catalog.=) $1", 2, t);
	}
	args[0] = UUIDPGetDatum(id);
	args[1] = Int32GetDatum(priority);
	if (SPI_execute_plan(priority_plan, args, NULL, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "priority update failed");
}
