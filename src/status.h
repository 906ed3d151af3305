/*
 * status.h: a worker's row of axme.worker_status (status.c; the rows are laid out in doorbell.h).
 */
#ifndef AXME_STATUS_H
#define AXME_STATUS_H

extern void axme_status_register(const char *kind);
extern void axme_status_state(const char *fmt,...) pg_attribute_printf(1, 2);
extern void axme_status_in_flight(int n);
extern void axme_status_delivered(int n);
extern void axme_status_error(const char *msg);

#endif							/* AXME_STATUS_H */
