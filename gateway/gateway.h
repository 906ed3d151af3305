/*
 * gateway.h: the shared declarations of axme-gateway, the HTTP API and SSE streams of axme.
 *
 * The program is libmicrohttpd (epoll, a small pool of event-loop threads, suspend/resume for
 * streams) in front of a bounded pool of libpq connections.  Every request runs in one short
 * transaction as the role of its API key; no transaction is held while a client waits.  Streams
 * are woken by LISTEN axme_changes on one listener connection.
 */
#ifndef AXME_GATEWAY_H
#define AXME_GATEWAY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>
#include <microhttpd.h>

#define GW_VERSION "0.4.0"

/* Configuration: flags, AXME_GATEWAY_* environment variables, a config file (in that order of
 * precedence: a flag beats the environment, which beats the file). */
typedef struct GwConfig
{
	char	   *dsn;
	char	   *listen_host;
	int			listen_port;
	int			pool_size;			/* pooled connections for requests and streams */
	int			threads;			/* libmicrohttpd event-loop threads */
	int			stream_workers;		/* threads that read what woke a stream */
	int			max_connections;	/* HTTP connections at once (streams included) */
	int			keepalive_seconds;	/* SSE comment this often on an idle stream */
	int			recheck_seconds;	/* every stream re-reads at least this often */
	double		rate_limit;			/* requests per second per key; 0: no limit */
	double		rate_burst;
	int			pool_wait_ms;		/* a request waits this long for a connection, then 503 */
	int			statement_timeout_ms;
	int			agent_stream_margin_s;	/* agent streams re-read this far back (commit order) */
	int			key_cache_seconds;
	size_t		max_body;
	char	   *www_dir;
	bool		cookie_secure;		/* add Secure to cookies (behind a TLS proxy) */
	bool		quiet;				/* no request log */
} GwConfig;

extern GwConfig gw_config;
extern volatile int gw_shutting_down;

/* A growable byte buffer (NUL-terminated). */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

void		buf_init(Buf *b);
void		buf_free(Buf *b);
void		buf_append(Buf *b, const char *s, size_t n);
void		buf_puts(Buf *b, const char *s);
void		buf_printf(Buf *b, const char *fmt,...) __attribute__((format(printf, 2, 3)));
void		buf_json_string(Buf *b, const char *s);	/* "..." with JSON escapes */

/* Logging (stderr, one line each). */
void		gw_log(const char *fmt,...) __attribute__((format(printf, 1, 2)));

/* The pool. */
typedef struct PooledConn
{
	PGconn	   *conn;
	int			index;
	bool		busy;
} PooledConn;

int			pool_start(void);
void		pool_stop(void);
PooledConn *pool_get(int wait_ms);
void		pool_put(PooledConn *pc);
int			pool_idle(void);

/* The outcome of one statement run as a role. */
typedef struct DbResult
{
	PGresult   *res;			/* PGRES_TUPLES_OK or PGRES_COMMAND_OK, else NULL */
	char		sqlstate[6];	/* "" on success */
	char	   *message;		/* malloc'd, error text */
} DbResult;

/*
 * Run one statement as role in its own transaction (BEGIN; SET LOCAL ROLE; SET LOCAL
 * statement_timeout; the statement; COMMIT).  role NULL: as the gateway's own role.
 * Returns false with r->sqlstate set on error (08006 when no connection could be had).
 */
bool		db_exec(const char *role, const char *sql, int nparams, const char *const *params,
					DbResult *r);
void		db_result_clear(DbResult *r);

/* Watches: kind 'i' (intent id), 'a' (agent id), 'o' (inbox owner id); counted. */
void		watch_add(char kind, const char *id);	/* before a stream's first read */
void		watch_release(char kind, const char *id);

/* The listener connection (LISTEN axme_changes). */
int			listener_start(void);
void		listener_stop(void);
bool		listener_ok(void);

/* Authentication: an API key to (key_id, role), cached briefly. */
typedef struct AuthInfo
{
	long long	key_id;
	char		role[128];
} AuthInfo;

/* 1 ok, 0 unknown key, -1 database unavailable */
int			auth_check(const char *key, AuthInfo *out);
/* true when the key may make a request now; else *retry_after seconds */
bool		rate_allow(long long key_id, int *retry_after);

/* Streams. */
typedef enum StreamKind
{
	STREAM_INTENT,				/* events of one intent */
	STREAM_AGENT,				/* new intents of an agent */
	STREAM_INBOX				/* an inbox owner's changes */
} StreamKind;

typedef struct Stream Stream;

int			streams_start(void);
void		streams_shutdown(void);		/* final event to every stream, then end them */
void		streams_stop(void);
int			streams_count(void);
void		streams_wake_intent(const char *intent_id, long long agent_id);
void		streams_wake_owner(long long owner_id);
void		streams_wake_all(void);

/*
 * Start an SSE response for a stream whose first read (initial, may be empty) already ran.
 * cursor: the last seq (intent), created_at microseconds (agent), inbox cursor (inbox).
 */
struct MHD_Response *stream_response(StreamKind kind, const char *role, const char *target,
									 long long agent_id, const char *cursor, int wait_seconds,
									 bool include_terminal, const char *initial, bool finished,
									 struct MHD_Connection *connection, void *dedupe);
void	   *stream_dedupe_new(void);	/* for agent streams: the ids already sent */

/* Stream reads (also used for the first read in the request). */
bool		stream_read_intent(const char *role, const char *intent_id, const char *since,
							   Buf *out, char *cursor_out, size_t cursor_len, bool *terminal,
							   DbResult *err);
bool		stream_read_agent(const char *role, long long agent_id, const char *cursor,
							  bool include_terminal, Buf *out, char *cursor_out, size_t cursor_len,
							  DbResult *err, void *dedupe);
bool		stream_read_inbox(const char *role, const char *owner, const char *cursor,
							  Buf *out, char *cursor_out, size_t cursor_len, DbResult *err);

/* The HTTP side. */
enum MHD_Result api_handler(void *cls, struct MHD_Connection *connection, const char *url,
							const char *method, const char *version, const char *upload_data,
							size_t *upload_data_size, void **con_cls);
void		api_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
						  enum MHD_RequestTerminationCode toe);

/* Errors: the HTTP status and code of a SQLSTATE. */
int			http_status_of_sqlstate(const char *sqlstate, const char **code, bool *retryable);

#endif
