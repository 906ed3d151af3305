/*
 * stream.c: server-sent-event streams (an intent's events, an agent's new intents, an inbox's
 * changes) without a thread or a database connection per stream.
 *
 * A stream is a libmicrohttpd connection with a callback response.  When it has nothing to send
 * it is suspended (no CPU, no database connection).  A notification on axme_changes (pool.c),
 * a keep-alive or re-check timer, or shutdown queues it for a stream worker, which runs one short
 * read as the stream's role on a pooled connection, appends the SSE text and resumes the
 * connection.  One mutex guards every stream's fields, the list and the work queue; database
 * reads run outside it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

#define DEDUPE_N 512
#define STREAM_MAX_PENDING (4 * 1024 * 1024)	/* bytes written but not yet sent */

typedef struct Dedupe
{
	char		ids[DEDUPE_N][37];
	int			next;
} Dedupe;

struct Stream
{
	StreamKind	kind;
	char		role[128];
	char		target[300];	/* intent id, or the inbox owner's address */
	long long	agent_id;		/* the agent (agent streams), the owner (inbox streams) */
	char		cursor[64];
	bool		include_terminal;
	double		deadline;		/* wait_seconds: end with stream.timeout then; 0: none */
	double		next_keepalive;
	double		next_recheck;
	Buf			out;			/* SSE text not yet handed to libmicrohttpd */
	size_t		out_pos;
	bool		finished;		/* end the response once out is drained */
	bool		suspended;
	bool		closed;			/* libmicrohttpd freed the response */
	bool		queued;
	bool		busy;			/* a worker is reading for it */
	bool		dirty;			/* woken while busy: read again */
	int			refs;
	struct MHD_Connection *conn;
	Dedupe	   *dedupe;
	Stream	   *prev,
			   *next;
	Stream	   *qnext;
};

static pthread_mutex_t S = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cond = PTHREAD_COND_INITIALIZER;
static Stream *all_streams;
static int	n_streams;
static Stream *queue_head,
		   *queue_tail;
static bool stopping;
static pthread_t *workers;
static pthread_t timer_thread;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
streams_count(void)
{
	int			n;

	pthread_mutex_lock(&S);
	n = n_streams;
	pthread_mutex_unlock(&S);
	return n;
}

/* Queue a stream for a read (S held). */
static void
enqueue_locked(Stream *s)
{
	if (s->closed || s->finished)
		return;
	if (s->busy)
	{
		s->dirty = true;
		return;
	}
	if (s->queued)
		return;
	s->queued = true;
	s->refs++;
	s->qnext = NULL;
	if (queue_tail)
		queue_tail->qnext = s;
	else
		queue_head = s;
	queue_tail = s;
	pthread_cond_signal(&work_cond);
}

/*
 * After appending to s->out (S held): note that the connection must be resumed.  The caller
 * resumes it after releasing S (resume_after).
 */
static struct MHD_Connection *
take_resume_locked(Stream *s)
{
	if (s->suspended && !s->closed)
	{
		s->suspended = false;
		return s->conn;
	}
	return NULL;
}

static void
release_locked(Stream *s)
{
	if (--s->refs > 0)
		return;
	buf_free(&s->out);
	free(s->dedupe);
	free(s);
}

void
streams_wake_intent(const char *intent_id, long long agent_id)
{
	pthread_mutex_lock(&S);
	for (Stream *s = all_streams; s; s = s->next)
		if ((s->kind == STREAM_INTENT && strcmp(s->target, intent_id) == 0) ||
			(s->kind == STREAM_AGENT && s->agent_id == agent_id))
			enqueue_locked(s);
	pthread_mutex_unlock(&S);
}

void
streams_wake_owner(long long owner_id)
{
	pthread_mutex_lock(&S);
	for (Stream *s = all_streams; s; s = s->next)
		if (s->kind == STREAM_INBOX && s->agent_id == owner_id)
			enqueue_locked(s);
	pthread_mutex_unlock(&S);
}

void
streams_wake_all(void)
{
	pthread_mutex_lock(&S);
	for (Stream *s = all_streams; s; s = s->next)
		enqueue_locked(s);
	pthread_mutex_unlock(&S);
}

/* Reads.  Each returns false with err set when the statement failed. */

static const char *intent_sql =
"SELECT coalesce(string_agg(pg_catalog.format(E'id: %s\\nevent: %s\\ndata: %s\\n\\n', e.seq, e.event_type,"
"         pg_catalog.jsonb_build_object('intent_id', $1::uuid, 'seq', e.seq, 'event_type', e.event_type,"
"           'status', e.status, 'at', e.at, 'actor', e.actor, 'details', e.details)), '' ORDER BY e.seq), ''),"
"       coalesce(max(e.seq), $2::bigint),"
"       coalesce((array_agg(e.status ORDER BY e.seq DESC))[1] IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'), false)"
" FROM axme.intent_events($1::uuid, $2::bigint) e";

bool
stream_read_intent(const char *role, const char *intent_id, const char *since, Buf *out,
				   char *cursor_out, size_t cursor_len, bool *terminal, DbResult *err)
{
	const char *params[2] = {intent_id, since};

	if (!db_exec(role, intent_sql, 2, params, err))
		return false;
	buf_puts(out, PQgetvalue(err->res, 0, 0));
	snprintf(cursor_out, cursor_len, "%s", PQgetvalue(err->res, 0, 1));
	*terminal = PQgetvalue(err->res, 0, 2)[0] == 't';
	db_result_clear(err);
	return true;
}

static const char *agent_sql =
"SELECT i.intent_id, (extract(epoch FROM i.created_at) * 1000000)::bigint,"
"       pg_catalog.lower(i.status::text),"
"       pg_catalog.jsonb_build_object('intent_id', i.intent_id, 'intent_type', i.intent_type,"
"         'from_agent', i.from_agent, 'to_agent', i.to_agent, 'status', i.status,"
"         'correlation_id', i.correlation_id, 'created_at', i.created_at, 'deadline_at', i.deadline_at,"
"         'payload', i.payload)"
" FROM axme.intents i"
" WHERE i.agent_id = $1::bigint"
"   AND i.created_at > coalesce(pg_catalog.to_timestamp($2::bigint / 1000000.0), pg_catalog.now())"
"                      - pg_catalog.make_interval(secs => $3::int)"
"   AND ($4::boolean OR i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'))"
" ORDER BY i.created_at, i.intent_id LIMIT 1000";

void *
stream_dedupe_new(void)
{
	return calloc(1, sizeof(Dedupe));
}

static bool
dedupe_seen(Dedupe *d, const char *id)
{
	for (int i = 0; i < DEDUPE_N; i++)
		if (d->ids[i][0] && strcmp(d->ids[i], id) == 0)
			return true;
	snprintf(d->ids[d->next], sizeof d->ids[0], "%s", id);
	d->next = (d->next + 1) % DEDUPE_N;
	return false;
}

bool
stream_read_agent(const char *role, long long agent_id, const char *cursor, bool include_terminal,
				  Buf *out, char *cursor_out, size_t cursor_len, DbResult *err, void *dedupe)
{
	char		aid[32],
				margin[16];
	const char *params[4] = {aid, (cursor && cursor[0]) ? cursor : NULL, margin,
	include_terminal ? "true" : "false"};
	long long	max_us = (cursor && cursor[0]) ? atoll(cursor) : 0;

	snprintf(aid, sizeof aid, "%lld", agent_id);
	snprintf(margin, sizeof margin, "%d", gw_config.agent_stream_margin_s);
	if (!db_exec(role, agent_sql, 4, params, err))
		return false;
	for (int r = 0; r < PQntuples(err->res); r++)
	{
		const char *id = PQgetvalue(err->res, r, 0);
		long long	us = atoll(PQgetvalue(err->res, r, 1));

		if (us > max_us)
			max_us = us;
		if (dedupe && dedupe_seen(dedupe, id))
			continue;
		buf_printf(out, "id: %lld\nevent: intent.%s\ndata: %s\n\n", us, PQgetvalue(err->res, r, 2),
				   PQgetvalue(err->res, r, 3));
	}
	if (max_us > 0)
		snprintf(cursor_out, cursor_len, "%lld", max_us);
	else
		snprintf(cursor_out, cursor_len, "%s", cursor ? cursor : "");
	db_result_clear(err);
	return true;
}

static const char *inbox_sql =
"SELECT coalesce((SELECT string_agg(pg_catalog.format(E'id: %s\\nevent: inbox.changed\\ndata: %s\\n\\n',"
"                   c->>'cursor', (c->'thread')::text), '')"
"                 FROM pg_catalog.jsonb_array_elements(x.changes) c), ''), x.next_cursor, x.has_more"
" FROM axme.inbox_changes($1, nullif($2, ''), 100) x";

bool
stream_read_inbox(const char *role, const char *owner, const char *cursor, Buf *out,
				  char *cursor_out, size_t cursor_len, DbResult *err)
{
	const char *params[2] = {owner, cursor};
	bool		more;

	for (int round = 0; round < 10; round++)
	{
		if (!db_exec(role, inbox_sql, 2, params, err))
			return false;
		buf_puts(out, PQgetvalue(err->res, 0, 0));
		snprintf(cursor_out, cursor_len, "%s", PQgetvalue(err->res, 0, 1));
		more = PQgetvalue(err->res, 0, 2)[0] == 't';
		db_result_clear(err);
		if (!more)
			break;
		params[1] = cursor_out;
	}
	return true;
}

#define BATCH_MAX 1024

/*
 * Hand one read's outcome to a stream (S held): append what was read and move its cursor, or end
 * it.  Returns the connection to resume (after releasing S), or NULL.
 *
 * A stream that ended meanwhile (shutdown, wait_seconds) sent its last event already: what was
 * read now is read again by the client's resume from the cursor it was given.
 */
static struct MHD_Connection *
apply_locked(Stream *s, bool ok, const Buf *out, const char *new_cursor, bool terminal,
			 const Buf *error_event)
{
	if (!ok && error_event->len > 0 && !s->finished)
	{
		buf_append(&s->out, error_event->data, error_event->len);
		s->finished = true;
	}
	else if (ok && !s->finished)
	{
		if (s->out.len - s->out_pos + out->len > STREAM_MAX_PENDING)
		{
			/* a client that does not read: end its stream rather than buffer without bound */
			buf_printf(&s->out, "event: stream.closed\ndata: {\"reason\": \"slow_client\", \"cursor\": ");
			buf_json_string(&s->out, s->cursor);
			buf_puts(&s->out, "}\n\n");
			s->finished = true;
		}
		else
		{
			/* the cursor moves with what is handed out (agent streams: or skipped as sent) */
			if (new_cursor[0])
				snprintf(s->cursor, sizeof s->cursor, "%s", new_cursor);
			if (out->len > 0)
			{
				buf_append(&s->out, out->data, out->len);
				s->next_keepalive = now_s() + gw_config.keepalive_seconds;
			}
			if (terminal)
				s->finished = true;
		}
	}
	return take_resume_locked(s);
}

/*
 * The work of a batch: one read for streams[0] (as its role, from its cursor), its outcome handed
 * to every stream of the batch (the others are intent streams of the same intent, role and
 * cursor, so the read is theirs too), then their connections resumed.
 */
static void
stream_work(Stream **streams, int n)
{
	Stream	   *s = streams[0];
	char		role[128],
				target[300],
				cursor[64],
				new_cursor[64] = "";
	long long	agent_id;
	bool		include_terminal,
				terminal = false,
				ok;
	StreamKind	kind;
	Buf			out,
				error_event;
	DbResult	err = {0};
	struct MHD_Connection *resume[BATCH_MAX];
	int			n_resume = 0;

	pthread_mutex_lock(&S);
	memcpy(role, s->role, sizeof role);
	memcpy(target, s->target, sizeof target);
	memcpy(cursor, s->cursor, sizeof cursor);
	agent_id = s->agent_id;
	include_terminal = s->include_terminal;
	kind = s->kind;
	pthread_mutex_unlock(&S);

	buf_init(&out);
	buf_init(&error_event);
	switch (kind)
	{
		case STREAM_INTENT:
			ok = stream_read_intent(role, target, cursor, &out, new_cursor, sizeof new_cursor,
									&terminal, &err);
			break;
		case STREAM_AGENT:
			ok = stream_read_agent(role, agent_id, cursor, include_terminal, &out, new_cursor,
								   sizeof new_cursor, &err, s->dedupe);
			break;
		default:
			ok = stream_read_inbox(role, target, cursor, &out, new_cursor, sizeof new_cursor, &err);
			break;
	}
	if (!ok)
	{
		/* a transient failure: the re-check timer tries again; a refusal ends the stream */
		bool		retryable;
		const char *code;
		int			status = http_status_of_sqlstate(err.sqlstate, &code, &retryable);

		if (!retryable && status < 500)
		{
			buf_printf(&error_event, "event: stream.error\ndata: {\"error\": {\"code\": \"%s\", \"retryable\": false, \"message\": ", code);
			buf_json_string(&error_event, err.message ? err.message : "");
			buf_puts(&error_event, "}}\n\n");
		}
		else
			gw_log("stream read failed (will retry): %s %s", err.sqlstate, err.message ? err.message : "");
		db_result_clear(&err);
	}

	pthread_mutex_lock(&S);
	for (int i = 0; i < n; i++)
	{
		struct MHD_Connection *c = apply_locked(streams[i], ok, &out, new_cursor, terminal, &error_event);

		if (c)
			resume[n_resume++] = c;
	}
	pthread_mutex_unlock(&S);
	buf_free(&out);
	buf_free(&error_event);
	for (int i = 0; i < n_resume; i++)
		MHD_resume_connection(resume[i]);
}

static void *
worker_main(void *arg)
{
	Stream	   *batch[BATCH_MAX];

	(void) arg;
	pthread_mutex_lock(&S);
	for (;;)
	{
		while (!queue_head && !stopping)
			pthread_cond_wait(&work_cond, &S);
		if (stopping)
			break;
		Stream	   *s = queue_head;
		int			n = 0;

		queue_head = s->qnext;
		if (!queue_head)
			queue_tail = NULL;
		s->queued = false;
		if (s->closed || s->finished)
		{
			release_locked(s);
			continue;
		}
		batch[n++] = s;

		/*
		 * Streams of the same intent, as the same role, at the same cursor (1,000 clients
		 * watching one intent) share one read: take them out of the queue too.
		 */
		if (s->kind == STREAM_INTENT)
		{
			Stream	   *prev = NULL;

			for (Stream *q = queue_head; q && n < BATCH_MAX;)
			{
				Stream	   *next = q->qnext;

				if (q->kind == STREAM_INTENT && !q->closed && !q->finished &&
					strcmp(q->target, s->target) == 0 && strcmp(q->role, s->role) == 0 &&
					strcmp(q->cursor, s->cursor) == 0)
				{
					if (prev)
						prev->qnext = next;
					else
						queue_head = next;
					if (queue_tail == q)
						queue_tail = prev;
					q->queued = false;
					batch[n++] = q;
				}
				else
					prev = q;
				q = next;
			}
		}
		for (int i = 0; i < n; i++)
		{
			batch[i]->busy = true;
			batch[i]->dirty = false;
		}
		pthread_mutex_unlock(&S);
		stream_work(batch, n);
		pthread_mutex_lock(&S);
		for (int i = 0; i < n; i++)
		{
			batch[i]->busy = false;
			if (batch[i]->dirty)
				enqueue_locked(batch[i]);
			release_locked(batch[i]);
		}
	}
	pthread_mutex_unlock(&S);
	return NULL;
}

/* Every second: wait_seconds deadlines, keep-alive comments, periodic re-reads. */
static void *
timer_main(void *arg)
{
	(void) arg;
	while (!stopping)
	{
		sleep(1);
		double		now = now_s();
		int			n = 0,
					cap = 64;
		struct MHD_Connection **resume = malloc(sizeof(*resume) * (size_t) cap);

		pthread_mutex_lock(&S);
		for (Stream *s = all_streams; s; s = s->next)
		{
			if (s->closed || s->finished)
				continue;
			bool		touched = false;

			if (s->deadline > 0 && now >= s->deadline)
			{
				buf_printf(&s->out, "event: stream.timeout\ndata: {\"cursor\": ");
				buf_json_string(&s->out, s->cursor);
				buf_puts(&s->out, "}\n\n");
				s->finished = true;
				touched = true;
			}
			else if (now >= s->next_keepalive && s->out.len == s->out_pos)
			{
				buf_puts(&s->out, ": keep-alive\n\n");
				s->next_keepalive = now + gw_config.keepalive_seconds;
				touched = true;
			}
			if (!s->finished && now >= s->next_recheck)
			{
				s->next_recheck = now + gw_config.recheck_seconds;
				enqueue_locked(s);
			}
			if (touched)
			{
				struct MHD_Connection *c = take_resume_locked(s);

				if (c)
				{
					if (n == cap)
					{
						cap *= 2;
						resume = realloc(resume, sizeof(*resume) * (size_t) cap);
					}
					resume[n++] = c;
				}
			}
		}
		pthread_mutex_unlock(&S);
		for (int i = 0; i < n; i++)
			MHD_resume_connection(resume[i]);
		free(resume);
	}
	return NULL;
}

int
streams_start(void)
{
	workers = calloc((size_t) gw_config.stream_workers, sizeof(pthread_t));
	for (int i = 0; i < gw_config.stream_workers; i++)
		if (pthread_create(&workers[i], NULL, worker_main, NULL) != 0)
			return -1;
	return pthread_create(&timer_thread, NULL, timer_main, NULL);
}

/* Shutdown, first step: a final event to every stream; they end once it is written. */
void
streams_shutdown(void)
{
	int			n = 0;
	struct MHD_Connection **resume;

	pthread_mutex_lock(&S);
	resume = malloc(sizeof(*resume) * (size_t) (n_streams + 1));
	for (Stream *s = all_streams; s; s = s->next)
	{
		if (s->closed)
			continue;
		if (!s->finished)
		{
			buf_printf(&s->out, "event: stream.closed\ndata: {\"reason\": \"shutdown\", \"cursor\": ");
			buf_json_string(&s->out, s->cursor);
			buf_puts(&s->out, "}\n\n");
			s->finished = true;
		}
		struct MHD_Connection *c = take_resume_locked(s);

		if (c)
			resume[n++] = c;
	}
	pthread_mutex_unlock(&S);
	for (int i = 0; i < n; i++)
		MHD_resume_connection(resume[i]);
	free(resume);
	/* up to 3 s for the final events to go out */
	for (int i = 0; i < 30 && streams_count() > 0; i++)
		usleep(100000);
}

void
streams_stop(void)
{
	pthread_mutex_lock(&S);
	stopping = true;
	pthread_cond_broadcast(&work_cond);
	pthread_mutex_unlock(&S);
	for (int i = 0; i < gw_config.stream_workers; i++)
		pthread_join(workers[i], NULL);
	pthread_join(timer_thread, NULL);
}

/* libmicrohttpd asks for the next bytes of a stream. */
static ssize_t
stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	Stream	   *s = cls;
	ssize_t		n;

	(void) pos;
	pthread_mutex_lock(&S);
	if (s->out.len > s->out_pos)
	{
		size_t		avail = s->out.len - s->out_pos;

		n = (ssize_t) (avail < max ? avail : max);
		memcpy(buf, s->out.data + s->out_pos, (size_t) n);
		s->out_pos += (size_t) n;
		if (s->out_pos == s->out.len)
		{
			s->out.len = 0;
			s->out_pos = 0;
		}
	}
	else if (s->finished)
		n = MHD_CONTENT_READER_END_OF_STREAM;
	else
	{
		s->suspended = true;
		MHD_suspend_connection(s->conn);
		n = 0;
	}
	pthread_mutex_unlock(&S);
	return n;
}

/* libmicrohttpd is done with the response (stream ended, client gone, shutdown). */
static void
stream_free(void *cls)
{
	Stream	   *s = cls;
	char		id[32];

	if (s->kind == STREAM_INTENT)
		watch_release('i', s->target);
	else
	{
		snprintf(id, sizeof id, "%lld", s->agent_id);
		watch_release(s->kind == STREAM_AGENT ? 'a' : 'o', id);
	}
	pthread_mutex_lock(&S);
	s->closed = true;
	s->suspended = false;
	if (s->prev)
		s->prev->next = s->next;
	else
		all_streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	n_streams--;
	release_locked(s);
	pthread_mutex_unlock(&S);
}

struct MHD_Response *
stream_response(StreamKind kind, const char *role, const char *target, long long agent_id,
				const char *cursor, int wait_seconds, bool include_terminal, const char *initial,
				bool finished, struct MHD_Connection *connection, void *dedupe)
{
	Stream	   *s = calloc(1, sizeof(Stream));
	double		now = now_s();

	s->kind = kind;
	snprintf(s->role, sizeof s->role, "%s", role);
	snprintf(s->target, sizeof s->target, "%s", target ? target : "");
	snprintf(s->cursor, sizeof s->cursor, "%s", cursor ? cursor : "");
	s->agent_id = agent_id;
	s->include_terminal = include_terminal;
	s->deadline = wait_seconds > 0 ? now + wait_seconds : 0;
	s->next_keepalive = now + gw_config.keepalive_seconds;
	/* a first re-read after a second: a commit whose trigger ran just before the stream's watch
	 * was committed, and that committed after the first read, notified nobody */
	s->next_recheck = now + 1;
	s->finished = finished;
	s->conn = connection;
	s->refs = 1;
	s->dedupe = dedupe;
	if (kind == STREAM_AGENT && !s->dedupe)
		s->dedupe = stream_dedupe_new();
	buf_init(&s->out);
	/* a retry hint for EventSource, then what the first read found */
	buf_puts(&s->out, "retry: 2000\n\n");
	if (initial)
		buf_puts(&s->out, initial);

	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
																  stream_reader, s, stream_free);

	if (!resp)
	{
		buf_free(&s->out);
		free(s->dedupe);		/* the caller's too: it is ours now */
		free(s);
		return NULL;
	}
	pthread_mutex_lock(&S);
	s->next = all_streams;
	if (all_streams)
		all_streams->prev = s;
	all_streams = s;
	n_streams++;
	if (gw_shutting_down && !s->finished)
	{
		buf_puts(&s->out, "event: stream.closed\ndata: {\"reason\": \"shutdown\"}\n\n");
		s->finished = true;
	}
	pthread_mutex_unlock(&S);
	MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-cache, no-store");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	return resp;
}
