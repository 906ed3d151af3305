/*
 * actor.c: the actor axme's own workers record.  Events and thread messages name who acted
 * (axme._caller()); a worker connects as the bootstrap superuser, so without this its transitions
 * (deliveries, retries, timeouts, reminders, escalations, handler outcomes) would read "postgres",
 * indistinguishable from a DBA.  A worker names itself here (axme:delivery-worker, axme:timer,
 * axme:handler-worker) and axme._caller() returns that name in its transactions.
 */
#include "postgres.h"

#include "axme.h"

/* NULL outside axme's workers: the caller is then the session's role */
static const char *worker_actor = NULL;

/*
 * Name the worker that acts from now on in this process (a string constant); returns the
 * previous name, for a caller that acts under another name for a while (the timer loop runs in
 * the delivery worker's process).
 */
const char *
axme_set_actor(const char *actor)
{
	const char *previous = worker_actor;

	worker_actor = actor;
	return previous;
}

/* The name set by axme_set_actor(), or NULL in a session that is not an axme worker. */
const char *
axme_actor(void)
{
	return worker_actor;
}
