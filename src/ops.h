/*
 * ops.h: operations: worker status in shared memory (status.c), the operations GUCs, periodic
 * cleanup and alert checks run by the database worker, and the version check (ops.c).
 */
#ifndef AXME_OPS_H
#define AXME_OPS_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* status.c: a generic slot per running worker, shown by axme.worker_status */
extern void axme_status_shmem_init(void);
extern void axme_status_register(const char *kind);
extern void axme_status_state(const char *fmt,...) pg_attribute_printf(1, 2);
extern void axme_status_in_flight(int n);
extern void axme_status_delivered(int n);
extern void axme_status_error(const char *msg);

/* unserved.c: databases left without a worker (the launcher keeps them in worker.c's slots) */
extern bool axme_start_unserved_alert(Oid dboid, bool capped);
extern int	axme_unserved_databases(Oid *dboids, TimestampTz *since, bool *capped, int max);

/* ops.c */
extern void axme_ops_init(void);
extern char axme_ops_dbname[NAMEDATALEN];
extern int	axme_ops_check_version(char *installed, size_t len);
extern void axme_ops_tick(void);
extern long axme_ops_next_ms(void);

#endif							/* AXME_OPS_H */
