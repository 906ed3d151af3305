/*
 * worker.h: axme's background processes.
 *
 * Three process kinds, named alike everywhere (bgw_type, bgw_name, pg_stat_activity.backend_type,
 * axme.worker_status.kind without the "axme " prefix, log lines):
 *   axme launcher         one per cluster, no database: starts a delivery worker per database
 *                         (launcher.c);
 *   axme delivery worker  one per database with axme: http deliveries, timers, operations and
 *                         stream wake-ups (delivery_worker.c, claim.c, http.c, timers.c, ops.c);
 *   axme handler worker   one per database with internal agents: runs their SQL handlers
 *                         (handler_worker.c), started by the delivery worker;
 *   axme alert worker     short-lived, started by the launcher for a database it cannot serve
 *                         (axme.max_database_workers or max_worker_processes reached): writes
 *                         one alert row there and exits (unserved.c).
 * None of this is called from a user's session: backends only ring the doorbell (doorbell.h).
 */
#ifndef AXME_WORKER_H
#define AXME_WORKER_H

#include "datatype/timestamp.h"
#include "postmaster/bgworker.h"

#define AXME_LAUNCHER "axme launcher"
#define AXME_DELIVERY_WORKER "axme delivery worker"
#define AXME_HANDLER_WORKER "axme handler worker"
#define AXME_ALERT_WORKER "axme alert worker"
/* kinds in axme.worker_status */
#define AXME_DELIVERY_WORKER_KIND "delivery worker"
#define AXME_HANDLER_WORKER_KIND "handler worker"

typedef enum AxmeProcessKind
{
	AXME_KIND_LAUNCHER,
	AXME_KIND_DELIVERY_WORKER,
	AXME_KIND_HANDLER_WORKER,
	AXME_KIND_ALERT_WORKER
} AxmeProcessKind;

/* bgworker.c: registration, start, signals and the per-turn check, once for all kinds */
extern void axme_launcher_register(void);
extern bool axme_worker_start(AxmeProcessKind kind, int slot, Oid dboid,
							  BackgroundWorkerHandle **handle);
extern void axme_worker_init_signals(void);
extern void axme_worker_set_slot(int slot);
extern void axme_worker_check(void);

/* entry points (bgw_function_name) */
PGDLLEXPORT extern void axme_launcher_main(Datum arg);
PGDLLEXPORT extern void axme_delivery_worker_main(Datum arg);
PGDLLEXPORT extern void axme_handler_worker_main(Datum arg);
PGDLLEXPORT extern void axme_alert_worker_main(Datum arg);

/* timers.c: the timer loop, run by the delivery worker on every turn */
extern bool axme_timers_tick(int slot);
extern long axme_timers_timeout(long timeout_ms);
extern bool axme_timers_want_handler(void);

/* ops.c: alerts, cleanup and the version check, run by the delivery worker */
extern char axme_ops_dbname[NAMEDATALEN];
extern int	axme_ops_check_version(char *installed, size_t len);
extern void axme_ops_tick(void);
extern long axme_ops_next_ms(void);

#endif							/* AXME_WORKER_H */
