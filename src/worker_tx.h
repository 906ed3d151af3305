/*
 * worker_tx.h: short transactions of axme's background workers (worker_tx.c).
 */
#ifndef AXME_WORKER_TX_H
#define AXME_WORKER_TX_H

#include "utils/elog.h"
#include "utils/palloc.h"

extern void axme_tx_begin(const char *activity);
extern void axme_tx_commit(void);
extern MemoryContext axme_tx_caller(void);
extern ErrorData *axme_tx_abort(MemoryContext cxt);

#endif							/* AXME_WORKER_TX_H */
