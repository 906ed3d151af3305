/*
 * guc.c: every axme.* setting: its variable, its definition, and axme._ops_settings().
 *
 * Defined whenever the library loads (preloaded or not), so SET and ALTER DATABASE validate them;
 * axme.max_database_workers (PGC_POSTMASTER) only when preloading.  axme.http_allowed_networks
 * belongs to the SSRF check (ssrf.c), which parses it.
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "axme.h"
#include "delivery.h"
#include "doorbell.h"

int			axme_max_delivery_attempts = 5;
int			axme_max_payload_bytes = 131072;
bool		axme_require_receipts = true;
char	   *axme_tls_files_directory = NULL;
int			axme_max_in_flight = 256;
int			axme_max_database_workers = 8;
int			axme_disable_after = 5 * 86400;	/* seconds; read by axme._endpoint_observe */
int			axme_cleanup_interval = 300;	/* seconds */
int			axme_retention_terminal = 7 * 86400;
int			axme_retention_dead_letters = 30 * 86400;
int			axme_idempotency_ttl = 7 * 86400;
int			axme_attempts_retention = 14 * 86400;
int			axme_cleanup_batch_size = 5000;
int			axme_alert_dead_letter_threshold = 100;
double		axme_alert_success_rate = 0.9;

PG_FUNCTION_INFO_V1(axme_ops_settings);

/*
 * axme._ops_settings() RETURNS jsonb: the settings above as the session sees them (seconds).
 */
Datum
axme_ops_settings(PG_FUNCTION_ARGS)
{
	char	   *s = psprintf("{\"retention_terminal\": %d, \"retention_dead_letters\": %d, "
							 "\"idempotency_ttl\": %d, \"attempts_retention\": %d, "
							 "\"cleanup_batch_size\": %d, \"cleanup_interval\": %d, "
							 "\"alert_dead_letter_threshold\": %d, \"alert_success_rate\": %.6f}",
							 axme_retention_terminal, axme_retention_dead_letters,
							 axme_idempotency_ttl, axme_attempts_retention,
							 axme_cleanup_batch_size, axme_cleanup_interval,
							 axme_alert_dead_letter_threshold, axme_alert_success_rate);

	return DirectFunctionCall1(jsonb_in, CStringGetDatum(s));
}

/* From _PG_init: define every setting, then reserve the prefix. */
void
axme_define_gucs(void)
{
	DefineCustomIntVariable("axme.max_delivery_attempts",
							"Default attempt budget of an intent before it is dead-lettered.",
							"Used when neither the intent's max_delivery_attempts nor the agent's "
							"retry.max_attempts option is set.",
							&axme_max_delivery_attempts,
							5, 1, 1000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("axme.max_payload_bytes",
							"Largest intent payload accepted by send_intent, in bytes of its JSON text.",
							NULL,
							&axme_max_payload_bytes,
							131072, 1, 256 * 1024 * 1024,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("axme.require_receipts",
							 "Whether ack, progress, extend_lease, complete, complete_many and fail "
							 "need the receipt (attempt) of a poll or stream hand-out.",
							 "Off: a call without attempt acts on whoever holds the intent, as "
							 "resolve does. The agent option require_receipts = false turns the check "
							 "off for one agent.",
							 &axme_require_receipts,
							 true,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("axme.tls_files_directory",
							   "Directory from which http agents' options ca_file, client_cert_file "
							   "and client_key_file may name files.",
							   "Empty (the default): those options take PEM contents only. The worker "
							   "reads the files as the server's OS user, so only the administrator "
							   "chooses where they may be.",
							   &axme_tls_files_directory,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("axme.cleanup_interval",
							"How often the worker runs axme.cleanup().",
							"A time with units, e.g. '5min'; at least 1 s.",
							&axme_cleanup_interval, 300, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.retention_terminal",
							"How long intents that ended (COMPLETED, FAILED, CANCELED, TIMED_OUT) are kept.",
							"Dead letters have their own setting, axme.retention_dead_letters.",
							&axme_retention_terminal, 7 * 86400, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.retention_dead_letters",
							"How long dead-lettered intents (and alerts) are kept.",
							NULL,
							&axme_retention_dead_letters, 30 * 86400, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.idempotency_ttl",
							"How long an idempotency key is remembered (at least 24 hours).",
							"A key outlives its intent if need be and still returns the original intent_id.",
							&axme_idempotency_ttl, 7 * 86400, 86400, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.attempts_retention",
							"How long http delivery attempt rows are kept.",
							NULL,
							&axme_attempts_retention, 14 * 86400, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.cleanup_batch_size",
							"Most rows of each kind axme.cleanup() deletes per batch.",
							"The worker commits after each batch.",
							&axme_cleanup_batch_size, 5000, 1, 1000000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("axme.alert_dead_letter_threshold",
							"Dead letters of one agent that raise a dead_letter_threshold alert (0: never).",
							NULL,
							&axme_alert_dead_letter_threshold, 100, 0, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("axme.alert_success_rate",
							 "Success rate over 5 minutes below which an agent raises success_rate_low (0: never).",
							 "Needs at least 10 outcomes in the window; agent_recovered follows when it is reached again.",
							 &axme_alert_success_rate, 0.9, 0.0, 1.0,
							 PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("axme.max_in_flight",
							"Most http requests in flight at once per delivery worker.",
							"Each agent is further capped by its max_in_flight option (default 16).",
							&axme_max_in_flight,
							256, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	axme_ssrf_define_guc();
	DefineCustomIntVariable("axme.disable_after",
							"An http endpoint failing without a single success for this long is disabled.",
							"axme.enable_agent() turns it back on.",
							&axme_disable_after,
							5 * 86400, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("axme.max_database_workers",
								"Most databases served by delivery workers at once (one worker each).",
								"Each worker takes one of max_worker_processes.",
								&axme_max_database_workers,
								8, 1, AXME_DB_SLOTS,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	MarkGUCPrefixReserved("axme");
}
