/*
 * pool.c: the bounded pool of libpq connections that runs every request and stream read (one
 * short transaction each, as the key's role), and the one listener connection that LISTENs on
 * axme_changes and wakes the streams.
 *
 * Every connection logs in as the gateway's login role and runs SET ROLE axme_gateway once (the
 * login role is NOINHERIT: it has no rights of its own).  A request then runs
 * BEGIN; SET LOCAL ROLE <key role>; <statement>; COMMIT, and COMMIT (or ROLLBACK) puts the
 * connection back to axme_gateway.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

static PooledConn *pool;
static int	pool_n;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;

static PGconn *
connect_db(const char *application_name)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *vals[] = {gw_config.dsn, application_name, NULL};
	PGconn	   *c = PQconnectdbParams(keys, vals, 1);

	if (PQstatus(c) != CONNECTION_OK)
	{
		gw_log("database: cannot connect: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	PGresult   *r = PQexec(c, "SET ROLE axme_gateway");

	if (PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		gw_log("database: SET ROLE axme_gateway failed (the login role must be a member of "
			   "axme_gateway): %s", PQerrorMessage(c));
		PQclear(r);
		PQfinish(c);
		return NULL;
	}
	PQclear(r);
	return c;
}

int
pool_start(void)
{
	pool_n = gw_config.pool_size;
	pool = calloc((size_t) pool_n, sizeof(PooledConn));
	for (int i = 0; i < pool_n; i++)
		pool[i].index = i;
	/* one connection now, to report a wrong DSN at start; the others as they are needed */
	pool[0].conn = connect_db("axme-gateway");
	return pool[0].conn ? 0 : -1;
}

void
pool_stop(void)
{
	pthread_mutex_lock(&pool_lock);
	for (int i = 0; i < pool_n; i++)
		if (pool[i].conn)
		{
			PQfinish(pool[i].conn);
			pool[i].conn = NULL;
		}
	pthread_mutex_unlock(&pool_lock);
}

int
pool_idle(void)
{
	int			n = 0;

	pthread_mutex_lock(&pool_lock);
	for (int i = 0; i < pool_n; i++)
		if (!pool[i].busy)
			n++;
	pthread_mutex_unlock(&pool_lock);
	return n;
}

/* A free connection (connected), waiting up to wait_ms; NULL when none came or none connects. */
PooledConn *
pool_get(int wait_ms)
{
	struct timespec deadline;
	PooledConn *pc = NULL;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += wait_ms / 1000;
	deadline.tv_nsec += (long) (wait_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L)
	{
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&pool_lock);
	for (;;)
	{
		/* prefer a connected idle slot */
		for (int i = 0; i < pool_n && !pc; i++)
			if (!pool[i].busy && pool[i].conn)
				pc = &pool[i];
		for (int i = 0; i < pool_n && !pc; i++)
			if (!pool[i].busy)
				pc = &pool[i];
		if (pc)
			break;
		if (pthread_cond_timedwait(&pool_cond, &pool_lock, &deadline) == ETIMEDOUT)
			break;
	}
	if (pc)
		pc->busy = true;
	pthread_mutex_unlock(&pool_lock);
	if (!pc)
		return NULL;
	if (pc->conn && PQstatus(pc->conn) != CONNECTION_OK)
	{
		PQfinish(pc->conn);
		pc->conn = NULL;
	}
	if (!pc->conn)
		pc->conn = connect_db("axme-gateway");
	if (!pc->conn)
	{
		pool_put(pc);
		return NULL;
	}
	return pc;
}

void
pool_put(PooledConn *pc)
{
	pthread_mutex_lock(&pool_lock);
	pc->busy = false;
	pthread_cond_signal(&pool_cond);
	pthread_mutex_unlock(&pool_lock);
}

static void
set_error(DbResult *r, const char *state, const char *msg)
{
	snprintf(r->sqlstate, sizeof r->sqlstate, "%s", state);
	free(r->message);
	r->message = strdup(msg ? msg : "");
	size_t		n = strlen(r->message);

	while (n > 0 && (r->message[n - 1] == '\n' || r->message[n - 1] == ' '))
		r->message[--n] = '\0';
}

static void
set_error_from(DbResult *r, PGconn *c, PGresult *res)
{
	const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

	if (!st)
		st = PQstatus(c) == CONNECTION_OK ? "XX000" : "08006";
	set_error(r, st, msg ? msg : PQerrorMessage(c));
}

void
db_result_clear(DbResult *r)
{
	if (r->res)
		PQclear(r->res);
	free(r->message);
	r->res = NULL;
	r->message = NULL;
	r->sqlstate[0] = '\0';
}

bool
db_exec(const char *role, const char *sql, int nparams, const char *const *params, DbResult *r)
{
	PooledConn *pc;
	PGresult   *res;
	Buf			pre;
	bool		ok = false;

	r->res = NULL;
	r->message = NULL;
	r->sqlstate[0] = '\0';
	pc = pool_get(gw_config.pool_wait_ms);
	if (!pc)
	{
		set_error(r, "53300", "no database connection is free");
		return false;
	}
	buf_init(&pre);
	buf_printf(&pre, "BEGIN; SET LOCAL statement_timeout = %d", gw_config.statement_timeout_ms);
	if (role)
	{
		char	   *ident = PQescapeIdentifier(pc->conn, role, strlen(role));

		buf_printf(&pre, "; SET LOCAL ROLE %s", ident ? ident : "\"\"");
		PQfreemem(ident);
	}
	res = PQexec(pc->conn, pre.data);
	buf_free(&pre);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		set_error_from(r, pc->conn, res);
		PQclear(res);
		goto rollback;
	}
	PQclear(res);

	res = PQexecParams(pc->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		set_error_from(r, pc->conn, res);
		PQclear(res);
		goto rollback;
	}
	r->res = res;

	res = PQexec(pc->conn, "COMMIT");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		set_error_from(r, pc->conn, res);
		PQclear(res);
		PQclear(r->res);
		r->res = NULL;
		goto rollback;
	}
	PQclear(res);
	ok = true;
	goto done;

rollback:
	if (PQstatus(pc->conn) == CONNECTION_OK &&
		PQtransactionStatus(pc->conn) != PQTRANS_IDLE)
		PQclear(PQexec(pc->conn, "ROLLBACK"));
done:
	pool_put(pc);
	return ok;
}

/*
 * Watches: what this gateway's streams watch (intents, agents, inbox owners), counted, mirrored
 * in axme.gateway_watches under the listener's backend pid so that only watched changes NOTIFY.
 * A watch is inserted (synchronously, on a pooled connection) before its stream's first read;
 * one that nobody needs any more is deleted by the listener thread.  watch_db_lock orders those
 * database writes, so that a delete never removes a row that a new stream has just counted on.
 */
typedef struct Watch
{
	char		kind;
	char		id[64];
	int			refs;
} Watch;

static Watch *watches;
static int	n_watches,
			cap_watches;
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t watch_db_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int listener_pid;	/* 0 while not connected */

static Watch *
find_watch(char kind, const char *id)
{
	for (int i = 0; i < n_watches; i++)
		if (watches[i].kind == kind && strcmp(watches[i].id, id) == 0)
			return &watches[i];
	return NULL;
}

/* Run axme._gateway_watch() for these kinds and ids; conn NULL: a pooled connection. */
static bool
watch_db(PGconn *conn, int pid, const char *kinds, const char *ids, bool on)
{
	char		spid[16];
	const char *params[4] = {spid, kinds, ids, on ? "true" : "false"};
	const char *sql = "SELECT axme._gateway_watch($1::int, $2::text[], $3::text[], $4::boolean)";
	bool		ok;

	snprintf(spid, sizeof spid, "%d", pid);
	if (conn)
	{
		PGresult   *r = PQexecParams(conn, sql, 4, NULL, params, NULL, NULL, 0);

		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		if (!ok)
			gw_log("watches: %s", PQerrorMessage(conn));
		PQclear(r);
		return ok;
	}
	DbResult	res;

	ok = db_exec(NULL, sql, 4, params, &res);
	if (!ok)
		gw_log("watches: %s %s", res.sqlstate, res.message ? res.message : "");
	db_result_clear(&res);
	return ok;
}

void
watch_add(char kind, const char *id)
{
	bool		first;

	pthread_mutex_lock(&watch_lock);
	Watch	   *w = find_watch(kind, id);

	if (!w)
	{
		if (n_watches == cap_watches)
		{
			cap_watches = cap_watches ? cap_watches * 2 : 64;
			watches = realloc(watches, sizeof(Watch) * (size_t) cap_watches);
		}
		w = &watches[n_watches++];
		w->kind = kind;
		snprintf(w->id, sizeof w->id, "%s", id);
		w->refs = 0;
	}
	first = w->refs++ == 0;
	pthread_mutex_unlock(&watch_lock);
	if (first)
	{
		char		kinds[8],
					ids[96];
		int			pid;

		snprintf(kinds, sizeof kinds, "{%c}", kind);
		snprintf(ids, sizeof ids, "{\"%s\"}", id);
		pthread_mutex_lock(&watch_db_lock);
		pid = listener_pid;
		/* not listening: the listener registers every watch when it connects */
		if (pid)
			watch_db(NULL, pid, kinds, ids, true);
		pthread_mutex_unlock(&watch_db_lock);
	}
}

void
watch_release(char kind, const char *id)
{
	pthread_mutex_lock(&watch_lock);
	Watch	   *w = find_watch(kind, id);

	if (w && w->refs > 0)
		w->refs--;
	pthread_mutex_unlock(&watch_lock);
}

/*
 * The listener thread's part: with all = false, delete the watches nobody needs (refs 0); with
 * all = true (after connecting), insert every watch still needed under the new pid.
 */
static void
watch_sync(PGconn *c, int pid, bool all)
{
	Buf			kinds,
				ids;
	int			n = 0;

	buf_init(&kinds);
	buf_init(&ids);
	buf_puts(&kinds, "{");
	buf_puts(&ids, "{");
	pthread_mutex_lock(&watch_db_lock);
	if (all)
		listener_pid = pid;		/* watch_add() from now on inserts under this pid itself */
	pthread_mutex_lock(&watch_lock);
	for (int i = 0; i < n_watches;)
	{
		Watch	   *w = &watches[i];

		if ((all && w->refs > 0) || (!all && w->refs == 0))
		{
			buf_printf(&kinds, "%s%c", n ? "," : "", w->kind);
			buf_printf(&ids, "%s\"%s\"", n ? "," : "", w->id);
			n++;
		}
		if (!all && w->refs == 0)
			watches[i] = watches[--n_watches];
		else
			i++;
	}
	pthread_mutex_unlock(&watch_lock);
	buf_puts(&kinds, "}");
	buf_puts(&ids, "}");
	if (n > 0)
		watch_db(c, pid, kinds.data, ids.data, all);
	pthread_mutex_unlock(&watch_db_lock);
	buf_free(&kinds);
	buf_free(&ids);
}

/* The listener. */
static pthread_t listener_thread;
static volatile bool listener_connected;
static volatile bool listener_stopping;
static char listener_name[128];

bool
listener_ok(void)
{
	return listener_connected;
}

static bool
listener_cmd(PGconn *c, const char *sql)
{
	PGresult   *r = PQexec(c, sql);
	bool		ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

	if (!ok)
		gw_log("listener: %s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	return ok;
}

static void
handle_notify(const char *payload)
{
	char		id[64];
	long long	n;

	if (strcmp(payload, "*") == 0)
		streams_wake_all();
	else if (sscanf(payload, "i %63s %lld", id, &n) == 2)
		streams_wake_intent(id, n);
	else if (sscanf(payload, "o %lld", &n) == 1)
		streams_wake_owner(n);
}

static bool
listener_register(PGconn *c)
{
	const char *params[1] = {listener_name};
	PGresult   *r = PQexecParams(c, "SELECT axme._gateway_listen($1)", 1, NULL, params, NULL, NULL, 0);
	bool		ok = PQresultStatus(r) == PGRES_TUPLES_OK;

	if (!ok)
		gw_log("listener: registering failed: %s", PQerrorMessage(c));
	PQclear(r);
	return ok;
}

static void *
listener_main(void *arg)
{
	PGconn	   *c = NULL;
	time_t		last_beat = 0;

	(void) arg;
	while (!listener_stopping)
	{
		if (!c)
		{
			c = connect_db("axme-gateway listener");
			if (c && (!listener_cmd(c, "LISTEN axme_changes") || !listener_register(c)))
			{
				PQfinish(c);
				c = NULL;
			}
			if (!c)
			{
				listener_connected = false;
				sleep(1);
				continue;
			}
			last_beat = time(NULL);
			watch_sync(c, PQbackendPID(c), true);
			listener_connected = true;
			gw_log("listener: listening on axme_changes");
			/* anything may have happened while we were not listening */
			streams_wake_all();
		}
		struct pollfd pfd = {.fd = PQsocket(c),.events = POLLIN};
		int			rc = poll(&pfd, 1, 1000);

		if (rc > 0)
		{
			if (!PQconsumeInput(c))
			{
				gw_log("listener: connection lost: %s", PQerrorMessage(c));
				PQfinish(c);
				c = NULL;
				listener_connected = false;
				listener_pid = 0;
				continue;
			}
			PGnotify   *n;

			while ((n = PQnotifies(c)) != NULL)
			{
				handle_notify(n->extra);
				PQfreemem(n);
			}
		}
		watch_sync(c, PQbackendPID(c), false);
		if (time(NULL) - last_beat >= 30)
		{
			last_beat = time(NULL);
			if (!listener_register(c) || PQstatus(c) != CONNECTION_OK)
			{
				PQfinish(c);
				c = NULL;
				listener_connected = false;
				listener_pid = 0;
			}
		}
	}
	if (c)
	{
		listener_cmd(c, "SELECT axme._gateway_unlisten()");
		PQfinish(c);
	}
	listener_connected = false;
	listener_pid = 0;
	return NULL;
}

int
listener_start(void)
{
	char		host[64] = "?";

	gethostname(host, sizeof host - 1);
	snprintf(listener_name, sizeof listener_name, "axme-gateway %s pid %d %s:%d", host, (int) getpid(),
			 gw_config.listen_host, gw_config.listen_port);
	return pthread_create(&listener_thread, NULL, listener_main, NULL);
}

void
listener_stop(void)
{
	listener_stopping = true;
	pthread_join(listener_thread, NULL);
}
