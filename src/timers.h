/*
 * timers.h: the timer loop (timers.c) and the internal-handler worker (internal.c).
 */
#ifndef AXME_TIMERS_H
#define AXME_TIMERS_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

/* Per database: its http worker (which runs the timer loop) and its internal worker. */
typedef struct TimerSlot
{
	Oid			dboid;
	pid_t		http_pid;		/* 0: no http worker attached */
	Latch	   *http_latch;
	pg_atomic_uint64 wake_at;	/* when the timer loop looks next (TimestampTz; max: scanning) */
	pg_atomic_uint32 poke;		/* set by backends: look now */
	pid_t		internal_pid;	/* 0: no internal worker */
	Latch	   *internal_latch;
} TimerSlot;

typedef struct TimerShared
{
	slock_t		mutex;			/* protects dboid, pids and latches */
	TimerSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} TimerShared;

/* timers.c */
extern void axme_timers_init(void);
extern TimerSlot *axme_timer_slot(Oid dboid);
extern slock_t *axme_timer_mutex(void);
extern void axme_timers_note_due(TimestampTz due);
extern void axme_internal_note_due(void);
extern void axme_timers_tick(void);
extern long axme_timers_timeout(long timeout_ms);
extern TimerSlot *axme_timer_slot_at(int index);

/* internal.c */
PGDLLEXPORT extern void axme_internal_main(Datum arg);

#endif							/* AXME_TIMERS_H */
