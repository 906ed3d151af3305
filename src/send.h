/*
 * send.h: the send path shared by axme.send_intent (send.c) and axme.send_intents
 * (send_batch.c): one validated intent document, and the steps around its store.
 */
#ifndef AXME_SEND_H
#define AXME_SEND_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/* One intent document after validation (axme_parse_intent); absent integers are -1. */
typedef struct AxmeIntent
{
	Jsonb	   *doc;			/* the whole document (the idempotency hash is taken over it) */
	char	   *intent_type;
	char	   *to_agent;
	char	   *from_agent;
	char	   *reply_to;
	char	   *escalate_to;
	char	   *key;			/* idempotency key or NULL */
	Jsonb	   *payload;
	Jsonb	   *human_task;
	pg_uuid_t	corr;
	TimestampTz deadline;
	TimestampTz not_before;
	bool		has_deadline;
	bool		has_not_before;
	int32		budget;
	int32		remind_after;
	int32		remind_interval;
	int32		max_reminders;
	char	   *traceparent;	/* W3C trace context, or NULL */
	char	   *tracestate;
	int32		priority;		/* -100..100, 0 when absent */
	char	   *ordering_key;	/* 1..128 characters, or NULL */
} AxmeIntent;

extern void axme_parse_intent(Jsonb *intent, text *idem_key, AxmeIntent *p);
extern void axme_new_intent_id(pg_uuid_t *id);
extern bool axme_idempotency_claim(const AxmeIntent *p, const char *role, pg_uuid_t *id);
extern void axme_after_store(const AxmeIntent *p, pg_uuid_t *id, const char *mode);
extern void axme_store_priority(const pg_uuid_t *id, int32 priority);
extern void axme_store_ordering_key(const pg_uuid_t *id, const char *key);
extern void axme_after_commit_wakeups(const AxmeIntent *p, int64 agent_id, const pg_uuid_t *id,
									  const char *mode);

#endif							/* AXME_SEND_H */
