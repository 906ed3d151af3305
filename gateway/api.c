/*
 * api.c: the HTTP side of axme-gateway: authentication (API key header, or the web inbox's
 * session cookie with a CSRF check), rate limits, routing, one SQL statement per endpoint, the
 * error JSON, static files of the web inbox, and one log line per request.
 *
 * Every endpoint is one statement run by db_exec() as the key's role; the statement builds the
 * response JSON itself, so the gateway never parses JSON.  Errors come back as SQLSTATEs and are
 * mapped by http_status_of_sqlstate() (docs/gateway.md has the table).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"

typedef struct Req
{
	Buf			body;
	bool		too_big;
	double		start;
	int			status;
	char		method[12];
	char		path[256];
	long long	key_id;
	char		trace[72];
	bool		is_stream;
} Req;

typedef struct Ctx
{
	struct MHD_Connection *conn;
	Req		   *req;
	AuthInfo	auth;
	bool		by_cookie;
} Ctx;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
random_hex(char *out, int nbytes)
{
	unsigned char b[64];
	int			fd = open("/dev/urandom", O_RDONLY);

	if (fd < 0 || read(fd, b, (size_t) nbytes) != nbytes)
		for (int i = 0; i < nbytes; i++)
			b[i] = (unsigned char) rand();
	if (fd >= 0)
		close(fd);
	for (int i = 0; i < nbytes; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static enum MHD_Result
send_response(Ctx *c, int status, const char *body, size_t len, const char *content_type,
			  const char *extra_name, const char *extra_value)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *) body, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;

	MHD_add_response_header(r, "Content-Type", content_type);
	MHD_add_response_header(r, "X-Trace-Id", c->req->trace);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	if (extra_name)
		MHD_add_response_header(r, extra_name, extra_value);
	c->req->status = status;
	ret = MHD_queue_response(c->conn, (unsigned) status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
send_json(Ctx *c, int status, const char *json)
{
	return send_response(c, status, json, strlen(json), "application/json", NULL, NULL);
}

static enum MHD_Result
send_error_h(Ctx *c, int status, const char *code, const char *message, bool retryable,
			 const char *hname, const char *hvalue)
{
	Buf			b;
	enum MHD_Result ret;

	buf_init(&b);
	buf_printf(&b, "{\"error\": {\"code\": \"%s\", \"message\": ", code);
	buf_json_string(&b, message);
	buf_printf(&b, ", \"retryable\": %s}}", retryable ? "true" : "false");
	ret = send_response(c, status, b.data, b.len, "application/json", hname, hvalue);
	buf_free(&b);
	return ret;
}

static enum MHD_Result
send_error(Ctx *c, int status, const char *code, const char *message, bool retryable)
{
	return send_error_h(c, status, code, message, retryable, NULL, NULL);
}

/* What kind of object an id in the path names, so that a refusal can be told from "not there". */
typedef enum Hide
{
	HIDE_NONE,
	HIDE_INTENT,
	HIDE_THREAD
} Hide;

/*
 * The error response of a failed statement.  42501 on an intent or thread that the role cannot
 * even see is 404, like an unknown one: a key learns nothing of other roles' intents.
 */
static enum MHD_Result
send_db_error(Ctx *c, DbResult *r, Hide hide, const char *id)
{
	const char *code;
	bool		retryable;
	int			status = http_status_of_sqlstate(r->sqlstate, &code, &retryable);
	char		msg[1200];
	enum MHD_Result ret;

	if (strcmp(r->sqlstate, "42501") == 0 && hide != HIDE_NONE && id)
	{
		DbResult	p;
		const char *params[1] = {id};
		const char *sql = hide == HIDE_INTENT
			? "SELECT EXISTS (SELECT FROM axme.intents i WHERE i.intent_id = $1::uuid)"
			: "SELECT EXISTS (SELECT FROM axme.threads t WHERE t.thread_id = $1::uuid OR t.intent_id = $1::uuid)";

		if (db_exec(c->auth.role, sql, 1, params, &p) && PQgetvalue(p.res, 0, 0)[0] == 'f')
		{
			db_result_clear(&p);
			db_result_clear(r);
			return send_error(c, 404, "not_found",
							  hide == HIDE_INTENT ? "intent not found" : "thread not found", false);
		}
		db_result_clear(&p);
	}
	if (status >= 500)
		gw_log("database error %s: %s (trace %s)", r->sqlstate, r->message ? r->message : "", c->req->trace);
	if (status == 500)
		snprintf(msg, sizeof msg, "internal error (SQLSTATE %s)", r->sqlstate);
	else
		snprintf(msg, sizeof msg, "%s", r->message ? r->message : "");
	{
		Buf			b;

		buf_init(&b);
		buf_printf(&b, "{\"error\": {\"code\": \"%s\", \"message\": ", code);
		buf_json_string(&b, msg);
		buf_printf(&b, ", \"retryable\": %s, \"sqlstate\": \"%s\"}}", retryable ? "true" : "false", r->sqlstate);
		ret = send_response(c, status, b.data, b.len, "application/json",
							retryable ? "Retry-After" : NULL, retryable ? "1" : NULL);
		buf_free(&b);
	}
	db_result_clear(r);
	return ret;
}

/* Run a statement whose first column of its one row is the response JSON. */
static enum MHD_Result
run_json(Ctx *c, const char *sql, int n, const char *const *params, Hide hide, const char *id)
{
	DbResult	r;
	enum MHD_Result ret;

	if (!db_exec(c->auth.role, sql, n, params, &r))
		return send_db_error(c, &r, hide, id);
	if (PQntuples(r.res) < 1 || PQgetisnull(r.res, 0, 0))
		ret = send_error(c, 404, "not_found", "not found", false);
	else
		ret = send_json(c, 200, PQgetvalue(r.res, 0, 0));
	db_result_clear(&r);
	return ret;
}

/* Run a statement for its effect; respond with json_ok. */
static enum MHD_Result
run_void(Ctx *c, const char *sql, int n, const char *const *params, Hide hide, const char *id,
		 const char *json_ok)
{
	DbResult	r;

	if (!db_exec(c->auth.role, sql, n, params, &r))
		return send_db_error(c, &r, hide, id);
	db_result_clear(&r);
	return send_json(c, 200, json_ok);
}

static const char *
arg(Ctx *c, const char *name)
{
	const char *v = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, name);

	return (v && v[0]) ? v : NULL;
}

static const char *
header(Ctx *c, const char *name)
{
	return MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, name);
}

static const char *
body_or_empty_object(Ctx *c)
{
	return c->req->body.len > 0 ? c->req->body.data : "{}";
}

/* Static files of the web inbox. */
static enum MHD_Result
serve_static(Ctx *c, const char *path)
{
	const char *name = strcmp(path, "/") == 0 ? "index.html" : path + 1;
	char		file[1024];
	const char *type = "application/octet-stream";
	const char *dot = strrchr(name, '.');

	for (const char *p = name; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '.' || *p == '-' || *p == '_') ||
			(p[0] == '.' && p[1] == '.'))
			return send_error(c, 404, "not_found", "no such page", false);
	if (dot && strcmp(dot, ".html") == 0)
		type = "text/html; charset=utf-8";
	else if (dot && strcmp(dot, ".js") == 0)
		type = "text/javascript; charset=utf-8";
	else if (dot && strcmp(dot, ".css") == 0)
		type = "text/css; charset=utf-8";
	else if (dot && strcmp(dot, ".svg") == 0)
		type = "image/svg+xml";
	snprintf(file, sizeof file, "%s/%s", gw_config.www_dir, name);

	FILE	   *f = fopen(file, "rb");

	if (!f)
		return send_error(c, 404, "not_found", "no such page", false);
	Buf			b;
	char		chunk[8192];
	size_t		n;

	buf_init(&b);
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		buf_append(&b, chunk, n);
	fclose(f);
	struct MHD_Response *r = MHD_create_response_from_buffer(b.len, b.data ? b.data : "", MHD_RESPMEM_MUST_COPY);

	buf_free(&b);
	MHD_add_response_header(r, "Content-Type", type);
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "X-Frame-Options", "DENY");
	MHD_add_response_header(r, "Content-Security-Policy",
							"default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
	c->req->status = 200;
	enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);

	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
health(Ctx *c)
{
	DbResult	r;
	bool		db = db_exec(NULL, "SELECT 1", 0, NULL, &r);
	bool		listening = listener_ok();
	Buf			b;
	enum MHD_Result ret;

	db_result_clear(&r);
	buf_init(&b);
	buf_printf(&b, "{\"ok\": %s, \"version\": \"%s\", \"database\": %s, \"listener\": %s, "
			   "\"streams\": %d, \"pool\": {\"size\": %d, \"idle\": %d}, \"shutting_down\": %s}",
			   db && listening && !gw_shutting_down ? "true" : "false", GW_VERSION,
			   db ? "true" : "false", listening ? "true" : "false", streams_count(),
			   gw_config.pool_size, pool_idle(), gw_shutting_down ? "true" : "false");
	ret = send_json(c, db && listening && !gw_shutting_down ? 200 : 503, b.data);
	buf_free(&b);
	return ret;
}

/* A cookie value from the Cookie header (MHD parses them). */
static const char *
cookie(Ctx *c, const char *name)
{
	return MHD_lookup_connection_value(c->conn, MHD_COOKIE_KIND, name);
}

/*
 * Authenticate: x-api-key, Authorization: Bearer, or the session cookie (a state-changing
 * request with the cookie must repeat the CSRF cookie in X-CSRF-Token).  Returns true when the
 * request may go on; else a response has been queued.
 */
static bool
authenticate(Ctx *c, enum MHD_Result *ret)
{
	const char *key = header(c, "x-api-key");
	const char *authz = header(c, "Authorization");

	if (!key && authz && strncasecmp(authz, "Bearer ", 7) == 0)
		key = authz + 7;
	if (!key)
	{
		key = cookie(c, "axme_session");
		if (key)
		{
			c->by_cookie = true;
			if (strcmp(c->req->method, "GET") != 0 && strcmp(c->req->method, "HEAD") != 0)
			{
				const char *want = cookie(c, "axme_csrf");
				const char *got = header(c, "X-CSRF-Token");

				if (!want || !got || strlen(want) < 16 || strcmp(want, got) != 0)
				{
					*ret = send_error(c, 403, "csrf_failed",
									  "the X-CSRF-Token header must repeat the axme_csrf cookie", false);
					return false;
				}
			}
		}
	}
	if (!key || !key[0])
	{
		*ret = send_error_h(c, 401, "unauthorized", "an API key is required (x-api-key or Authorization: Bearer)",
							false, "WWW-Authenticate", "Bearer");
		return false;
	}
	int			ok = auth_check(key, &c->auth);

	if (ok < 0)
	{
		*ret = send_error_h(c, 503, "unavailable", "the database is not reachable", true, "Retry-After", "1");
		return false;
	}
	if (ok == 0)
	{
		*ret = send_error_h(c, 401, "unauthorized", "invalid, revoked or expired API key", false,
							"WWW-Authenticate", "Bearer");
		return false;
	}
	c->req->key_id = c->auth.key_id;

	int			retry_after = 1;

	if (!rate_allow(c->auth.key_id, &retry_after))
	{
		char		ra[16];

		snprintf(ra, sizeof ra, "%d", retry_after);
		*ret = send_error_h(c, 429, "rate_limited", "too many requests for this API key", true, "Retry-After", ra);
		return false;
	}
	return true;
}

static enum MHD_Result
session_create(Ctx *c)
{
	const char *key = header(c, "x-api-key");
	AuthInfo	info;

	if (!key)
		return send_error(c, 400, "invalid_request", "send the API key in the x-api-key header", false);
	int			ok = auth_check(key, &info);

	if (ok < 0)
		return send_error(c, 503, "unavailable", "the database is not reachable", true);
	if (ok == 0)
		return send_error(c, 401, "unauthorized", "invalid, revoked or expired API key", false);

	char		csrf[33];
	char		cookie1[512],
				cookie2[160];
	const char *secure = gw_config.cookie_secure ? "; Secure" : "";

	random_hex(csrf, 16);
	snprintf(cookie1, sizeof cookie1, "axme_session=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200%s", key, secure);
	snprintf(cookie2, sizeof cookie2, "axme_csrf=%s; Path=/; SameSite=Strict; Max-Age=43200%s", csrf, secure);

	Buf			b;

	buf_init(&b);
	buf_printf(&b, "{\"ok\": true, \"role\": ");
	buf_json_string(&b, info.role);
	buf_printf(&b, ", \"csrf_token\": \"%s\"}", csrf);
	struct MHD_Response *r = MHD_create_response_from_buffer(b.len, b.data, MHD_RESPMEM_MUST_COPY);

	buf_free(&b);
	MHD_add_response_header(r, "Content-Type", "application/json");
	MHD_add_response_header(r, "Set-Cookie", cookie1);
	MHD_add_response_header(r, "Set-Cookie", cookie2);
	MHD_add_response_header(r, "X-Trace-Id", c->req->trace);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	c->req->status = 200;
	enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);

	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
session_delete(Ctx *c)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(12, (void *) "{\"ok\": true}", MHD_RESPMEM_PERSISTENT);

	MHD_add_response_header(r, "Content-Type", "application/json");
	MHD_add_response_header(r, "Set-Cookie", "axme_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
	MHD_add_response_header(r, "Set-Cookie", "axme_csrf=; Path=/; SameSite=Strict; Max-Age=0");
	c->req->status = 200;
	enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);

	MHD_destroy_response(r);
	return ret;
}

/* An integer lo..hi, else -1. */
static long
parse_int_in(const char *v, long lo, long hi)
{
	char	   *end;

	errno = 0;
	long		n = strtol(v, &end, 10);

	if (errno || *end || end == v || n < lo || n > hi)
		return -1;
	return n;
}

/* wait_seconds: 1..60 (default 30); -1 when invalid. */
static int
parse_wait(const char *v, int dflt)
{
	if (!v)
		return dflt;
	char	   *end;

	errno = 0;
	long		n = strtol(v, &end, 10);

	if (errno || *end || n < 1 || n > 60)
		return -1;
	return (int) n;
}

static bool
is_uuid(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (int i = 0; i < 36; i++)
	{
		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (s[i] != '-')
				return false;
		}
		else if (!isxdigit((unsigned char) s[i]))
			return false;
	}
	return true;
}

/* ---- intents ---------------------------------------------------------------------------- */

static enum MHD_Result
intents_create(Ctx *c)
{
	const char *params[2] = {c->req->body.len ? c->req->body.data : "", header(c, "Idempotency-Key")};

	return run_json(c,
					"SELECT pg_catalog.jsonb_build_object('ok', true, 'intent_id', s.id, 'status', 'accepted',"
					" 'created_at', pg_catalog.now())::text"
					" FROM (SELECT axme.send_intent($1::jsonb, $2) AS id) s", 2, params, HIDE_NONE, NULL);
}

static const char *events_sql =
"SELECT pg_catalog.jsonb_build_object('ok', true, 'events', coalesce(pg_catalog.jsonb_agg("
"  pg_catalog.jsonb_build_object('intent_id', $1::uuid, 'seq', e.seq, 'event_type', e.event_type,"
"    'status', e.status, 'at', e.at, 'actor', e.actor, 'details', e.details) ORDER BY e.seq), '[]'))::text"
" FROM axme.intent_events($1::uuid, coalesce($2::bigint, 0)) e";

static enum MHD_Result
intent_route(Ctx *c, char *id, const char *rest)
{
	const char *m = c->req->method;
	bool		get = strcmp(m, "GET") == 0,
				post = strcmp(m, "POST") == 0;

	if (!is_uuid(id))
		return send_error(c, 400, "invalid_request", "the intent id must be a UUID", false);
	for (char *q = id; *q; q++)	/* the form PostgreSQL prints, which notifications carry */
		*q = (char) tolower((unsigned char) *q);

	if (rest[0] == '\0' && get)
	{
		const char *p[1] = {id};

		return run_json(c, "SELECT pg_catalog.jsonb_build_object('ok', true, 'intent', axme.get_intent($1::uuid))::text",
						1, p, HIDE_INTENT, id);
	}
	if (strcmp(rest, "/events") == 0 && get)
	{
		const char *p[2] = {id, arg(c, "since")};

		return run_json(c, events_sql, 2, p, HIDE_INTENT, id);
	}
	if (strcmp(rest, "/events/stream") == 0 && get)
	{
		const char *since = header(c, "Last-Event-ID");
		int			wait = parse_wait(arg(c, "wait_seconds"), 30);

		if (!since || !since[0])
			since = arg(c, "since");
		if (!since)
			since = "0";
		if (wait < 0)
			return send_error(c, 400, "invalid_request", "wait_seconds must be an integer 1..60", false);

		Buf			out;
		char		cursor[64];
		bool		terminal = false;
		DbResult	err = {0};

		buf_init(&out);
		watch_add('i', id);		/* before the first read: what commits after it is announced */
		if (!stream_read_intent(c->auth.role, id, since, &out, cursor, sizeof cursor, &terminal, &err))
		{
			watch_release('i', id);
			buf_free(&out);
			return send_db_error(c, &err, HIDE_INTENT, id);
		}
		struct MHD_Response *r = stream_response(STREAM_INTENT, c->auth.role, id, 0, cursor, wait, false,
												 out.data, terminal, c->conn, NULL);

		buf_free(&out);
		if (!r)
		{
			watch_release('i', id);
			return send_error(c, 503, "unavailable", "cannot start a stream", true);
		}
		MHD_add_response_header(r, "X-Trace-Id", c->req->trace);
		c->req->status = 200;
		c->req->is_stream = true;
		enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);

		MHD_destroy_response(r);
		return ret;
	}
	if (strcmp(rest, "/attempts") == 0 && get)
	{
		const char *p[1] = {id};

		return run_json(c,
						"SELECT pg_catalog.jsonb_build_object('ok', true, 'intent_id', $1::uuid, 'attempts',"
						" coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(a) ORDER BY a.attempt)"
						"           FROM axme.delivery_attempts a WHERE a.intent_id = $1::uuid), '[]'),"
						" 'intent', axme.get_intent($1::uuid))::text", 1, p, HIDE_INTENT, id);
	}
	if (!post)
		return send_error(c, 405, "method_not_allowed", "method not allowed here", false);

	const char *p[2] = {id, body_or_empty_object(c)};

	if (strcmp(rest, "/resolve") == 0)
		return run_json(c,
						"SELECT pg_catalog.jsonb_build_object('ok', true, 'intent_id', $1::uuid, 'status', x.b->>'status')::text"
						" FROM (SELECT $2::jsonb AS b) x,"
						" LATERAL (SELECT axme.resolve($1::uuid, x.b->>'status',"
						"   CASE x.b->>'status' WHEN 'FAILED' THEN coalesce(x.b->'error', x.b->'result')"
						"     WHEN 'CANCELED' THEN coalesce(x.b->'result', CASE WHEN x.b ? 'reason'"
						"       THEN pg_catalog.jsonb_build_object('reason', x.b->>'reason') END)"
						"     ELSE x.b->'result' END)) r", 2, p, HIDE_INTENT, id);
	if (strcmp(rest, "/complete") == 0)
		return run_void(c,
						"SELECT axme.complete($1::uuid, coalesce(x.b->'result', '{}'), (x.b->>'attempt')::int)"
						" FROM (SELECT $2::jsonb AS b) x", 2, p, HIDE_INTENT, id,
						"{\"ok\": true, \"status\": \"COMPLETED\"}");
	if (strcmp(rest, "/fail") == 0)
		return run_void(c,
						"SELECT axme.fail($1::uuid, coalesce(x.b->'error', '{}'), coalesce((x.b->>'retry')::boolean, false),"
						" (x.b->>'attempt')::int) FROM (SELECT $2::jsonb AS b) x", 2, p, HIDE_INTENT, id,
						"{\"ok\": true}");
	if (strcmp(rest, "/ack") == 0)
		return run_void(c, "SELECT axme.ack($1::uuid, ($2::jsonb->>'attempt')::int)", 2, p, HIDE_INTENT, id,
						"{\"ok\": true, \"status\": \"ACKNOWLEDGED\"}");
	if (strcmp(rest, "/extend") == 0)
		return run_json(c,
						"SELECT pg_catalog.jsonb_build_object('ok', true, 'lease_until',"
						" axme.extend_lease($1::uuid, pg_catalog.make_interval(secs => coalesce((x.b->>'lease_seconds')::int, 30)),"
						" (x.b->>'attempt')::int))::text FROM (SELECT $2::jsonb AS b) x", 2, p, HIDE_INTENT, id);
	if (strcmp(rest, "/progress") == 0)
		return run_void(c,
						"SELECT axme.progress($1::uuid, coalesce(x.b->'details', '{}'), (x.b->>'attempt')::int)"
						" FROM (SELECT $2::jsonb AS b) x", 2, p, HIDE_INTENT, id,
						"{\"ok\": true, \"status\": \"IN_PROGRESS\"}");
	if (strcmp(rest, "/replay") == 0)
		return run_void(c, "SELECT axme.replay($1::uuid)", 1, p, HIDE_INTENT, id,
						"{\"ok\": true, \"status\": \"SUBMITTED\"}");
	return send_error(c, 404, "not_found", "no such endpoint", false);
}

/* ---- agents: claim (HTTP polling) and the agent stream -------------------------------------- */

static const char *agent_check_sql =
"SELECT axme.channel($1) IS NOT NULL, a.agent_id,"
"       pg_catalog.pg_has_role('axme_admin', 'USAGE') OR EXISTS (SELECT FROM pg_catalog.pg_roles r"
"         WHERE r.oid = a.db_role AND pg_catalog.pg_has_role(r.oid, 'USAGE'))"
" FROM axme.agents a WHERE a.address = $1";

static enum MHD_Result
agent_route(Ctx *c, const char *rest)
{
	/* rest: "<address>/claim" or "<address>/intents/stream"; the address may hold slashes */
	char		address[300];
	const char *tail = NULL;
	size_t		len = strlen(rest);
	static const char *s_claim = "/claim",
			   *s_stream = "/intents/stream";

	if (len > strlen(s_stream) && strcmp(rest + len - strlen(s_stream), s_stream) == 0)
		tail = s_stream;
	else if (len > strlen(s_claim) && strcmp(rest + len - strlen(s_claim), s_claim) == 0)
		tail = s_claim;
	if (!tail)
		return send_error(c, 404, "not_found", "no such endpoint", false);
	len -= strlen(tail);
	if (strncmp(rest, "agent://", 8) == 0 || strncmp(rest, "agent:/", 7) != 0)
		snprintf(address, sizeof address, "%s%.*s", strncmp(rest, "agent://", 8) == 0 ? "" : "agent://",
				 (int) len, rest);
	else						/* "agent:/x" after a proxy merged the slashes */
		snprintf(address, sizeof address, "agent://%.*s", (int) len - 7, rest + 7);

	if (tail == s_claim)
	{
		if (strcmp(c->req->method, "POST") != 0)
			return send_error(c, 405, "method_not_allowed", "use POST", false);
		const char *p[2] = {address, body_or_empty_object(c)};

		return run_json(c,
						"SELECT pg_catalog.jsonb_build_object('ok', true, 'intents', coalesce(pg_catalog.jsonb_agg("
						"  pg_catalog.to_jsonb(p) ORDER BY p.lease_until, p.intent_id), '[]'))::text"
						" FROM (SELECT $2::jsonb AS b) x,"
						" LATERAL axme.poll($1, coalesce((x.b->>'max_count')::int, 1),"
						"   pg_catalog.make_interval(secs => coalesce((x.b->>'lease_seconds')::int, 30))) p",
						2, p, HIDE_NONE, NULL);
	}
	if (strcmp(c->req->method, "GET") != 0)
		return send_error(c, 405, "method_not_allowed", "use GET", false);

	DbResult	r;
	const char *p[1] = {address};

	if (!db_exec(c->auth.role, agent_check_sql, 1, p, &r))
		return send_db_error(c, &r, HIDE_NONE, NULL);
	if (PQntuples(r.res) != 1)
	{
		db_result_clear(&r);
		return send_error(c, 404, "not_found", "agent not registered", false);
	}
	long long	agent_id = atoll(PQgetvalue(r.res, 0, 1));
	bool		may = PQgetvalue(r.res, 0, 2)[0] == 't';

	db_result_clear(&r);
	if (!may)
		return send_error(c, 403, "forbidden", "this key's role does not receive for the agent", false);

	const char *cursor = header(c, "Last-Event-ID");
	const char *inc = arg(c, "include_terminal");
	bool		include_terminal = inc && (strcmp(inc, "true") == 0 || strcmp(inc, "1") == 0);

	if (!cursor || !cursor[0])
		cursor = arg(c, "since");
	if (cursor)
		for (const char *q = cursor; *q; q++)
			if (!isdigit((unsigned char) *q) || q - cursor > 18)
				return send_error(c, 400, "invalid_request", "the cursor (Last-Event-ID, since) is a number", false);

	void	   *dedupe = stream_dedupe_new();
	Buf			out;
	char		new_cursor[64];
	DbResult	err = {0};

	char		wid[32];

	snprintf(wid, sizeof wid, "%lld", agent_id);
	buf_init(&out);
	watch_add('a', wid);
	if (!stream_read_agent(c->auth.role, agent_id, cursor, include_terminal, &out, new_cursor,
						   sizeof new_cursor, &err, dedupe))
	{
		watch_release('a', wid);
		free(dedupe);
		buf_free(&out);
		return send_db_error(c, &err, HIDE_NONE, NULL);
	}
	struct MHD_Response *resp = stream_response(STREAM_AGENT, c->auth.role, address, agent_id, new_cursor,
												0, include_terminal, out.data, false, c->conn, dedupe);

	buf_free(&out);
	if (!resp)
	{
		watch_release('a', wid);
		return send_error(c, 503, "unavailable", "cannot start a stream", true);
	}
	MHD_add_response_header(resp, "X-Trace-Id", c->req->trace);
	c->req->status = 200;
	c->req->is_stream = true;
	enum MHD_Result ret = MHD_queue_response(c->conn, 200, resp);

	MHD_destroy_response(resp);
	return ret;
}

/* ---- inbox ------------------------------------------------------------------------------- */

/* The owner of a request: ?owner=, else the first inbox agent of the key's role. */
#define OWNER_SQL \
	"coalesce($1::text, (SELECT a.address FROM axme.agents a WHERE a.delivery_mode = 'inbox'" \
	" AND EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = a.db_role" \
	"             AND pg_catalog.pg_has_role(r.oid, 'USAGE')) ORDER BY a.address LIMIT 1))"

static const char *inbox_list_sql =
"WITH owners AS ("
"  SELECT a.address FROM axme.agents a"
"  WHERE $1::text IS NULL AND a.delivery_mode = 'inbox'"
"    AND EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = a.db_role AND pg_catalog.pg_has_role(r.oid, 'USAGE'))"
"  UNION SELECT $1 WHERE $1 IS NOT NULL AND axme._inbox_reader($1, $2) IS NOT NULL)"
"SELECT pg_catalog.jsonb_build_object('ok', true, 'threads', coalesce(pg_catalog.jsonb_agg(t.j ORDER BY t.created_at DESC, t.thread_id DESC), '[]'))::text"
" FROM (SELECT x.created_at, x.thread_id, pg_catalog.to_jsonb(x) || pg_catalog.jsonb_build_object('owner_agent', o.address,"
"         'reminders', (SELECT count(*) FROM axme.thread_messages m WHERE m.thread_id = x.thread_id AND m.kind = 'reminder'))"
"         AS j"
"       FROM owners o, LATERAL (SELECT * FROM axme.inbox(o.address, $2) LIMIT coalesce($3::int, 100) OFFSET coalesce($4::int, 0)) x) t";

static const char *decide_sql_fmt =
"WITH x AS (SELECT axme.inbox_thread(%s) AS d, coalesce(nullif($2, ''), '{}')::jsonb AS b),"
"     y AS (SELECT x.*, %s AS o FROM x)"
"SELECT pg_catalog.jsonb_build_object('ok', true, 'thread_id', y.d->'thread_id', 'intent_id', y.d->'intent_id', 'outcome', y.o)::text"
" FROM y, LATERAL (SELECT axme.decide((y.d->>'intent_id')::uuid, y.o, y.b->>'comment', coalesce(y.b->'data', '{}'), y.b->>'actor')) z";

#define PICK_OUTCOME \
	"(SELECT o FROM pg_catalog.jsonb_array_elements_text(x.d->'task'->'allowed_outcomes') o WHERE o = ANY ($3::text[]) LIMIT 1)"

static const char *approve_outcomes = "{approved,confirmed,assigned,override_approved,completed,provided}";
static const char *reject_outcomes = "{rejected,declined,failed}";

static enum MHD_Result
decide_on(Ctx *c, const char *thread_expr, const char *id, const char *kind, const char *body)
{
	char		sql[2048];
	const char *p[3] = {id, body, NULL};

	if (strcmp(kind, "approve") == 0 || strcmp(kind, "reject") == 0)
	{
		p[2] = strcmp(kind, "approve") == 0 ? approve_outcomes : reject_outcomes;
		snprintf(sql, sizeof sql, decide_sql_fmt, thread_expr, PICK_OUTCOME);
		return run_json(c, sql, 3, p, HIDE_THREAD, id);
	}
	snprintf(sql, sizeof sql, decide_sql_fmt, thread_expr, "x.b->>'outcome'");
	return run_json(c, sql, 2, p, HIDE_THREAD, id);
}

static enum MHD_Result
inbox_route(Ctx *c, const char *rest)
{
	bool		get = strcmp(c->req->method, "GET") == 0;

	if ((rest[0] == '\0' || strcmp(rest, "/") == 0) && get)
	{
		const char *p[4] = {arg(c, "owner"), arg(c, "status"), arg(c, "limit"), arg(c, "offset")};

		if ((p[2] && parse_int_in(p[2], 1, 1000) < 0) || (p[3] && parse_int_in(p[3], 0, 1000000000) < 0))
			return send_error(c, 400, "invalid_request", "limit must be 1..1000 and offset 0 or more", false);
		if (p[1] && strcmp(p[1], "pending") != 0 && strcmp(p[1], "active") != 0 && strcmp(p[1], "done") != 0)
			return send_error(c, 400, "invalid_request", "status must be pending, active or done", false);

		return run_json(c, inbox_list_sql, 4, p, HIDE_NONE, NULL);
	}
	if (strcmp(rest, "/changes") == 0 && get)
	{
		const char *p[3] = {arg(c, "owner"), arg(c, "cursor"), arg(c, "max_count")};

		return run_json(c,
						"SELECT pg_catalog.jsonb_build_object('ok', true, 'changes', x.changes, 'next_cursor', x.next_cursor,"
						" 'has_more', x.has_more)::text FROM axme.inbox_changes(" OWNER_SQL ", $2, coalesce($3::int, 50)) x",
						3, p, HIDE_NONE, NULL);
	}
	if (strcmp(rest, "/stream") == 0 && get)
	{
		const char *p[1] = {arg(c, "owner")};
		DbResult	r;

		if (!db_exec(c->auth.role, "SELECT a.address, a.agent_id FROM axme.agents a WHERE a.address = " OWNER_SQL,
					 1, p, &r))
			return send_db_error(c, &r, HIDE_NONE, NULL);
		if (PQntuples(r.res) != 1)
		{
			db_result_clear(&r);
			return send_error(c, 404, "not_found", "no inbox for this key (give ?owner=)", false);
		}
		char		owner[300];
		long long	owner_id = atoll(PQgetvalue(r.res, 0, 1));

		snprintf(owner, sizeof owner, "%s", PQgetvalue(r.res, 0, 0));
		db_result_clear(&r);

		const char *cursor = header(c, "Last-Event-ID");

		if (!cursor || !cursor[0])
			cursor = arg(c, "cursor");
		Buf			out;
		char		new_cursor[64] = "";
		DbResult	err = {0};

		char		wid[32];

		snprintf(wid, sizeof wid, "%lld", owner_id);
		buf_init(&out);
		watch_add('o', wid);
		if (!stream_read_inbox(c->auth.role, owner, cursor, &out, new_cursor, sizeof new_cursor, &err))
		{
			watch_release('o', wid);
			buf_free(&out);
			return send_db_error(c, &err, HIDE_NONE, NULL);
		}
		struct MHD_Response *resp = stream_response(STREAM_INBOX, c->auth.role, owner, owner_id, new_cursor,
													0, false, out.data, false, c->conn, NULL);

		buf_free(&out);
		if (!resp)
		{
			watch_release('o', wid);
			return send_error(c, 503, "unavailable", "cannot start a stream", true);
		}
		MHD_add_response_header(resp, "X-Trace-Id", c->req->trace);
		c->req->status = 200;
		c->req->is_stream = true;
		enum MHD_Result ret = MHD_queue_response(c->conn, 200, resp);

		MHD_destroy_response(resp);
		return ret;
	}

	/* /{thread_id}[/action] */
	char		id[40];
	const char *slash = strchr(rest + 1, '/');
	size_t		idlen = slash ? (size_t) (slash - rest - 1) : strlen(rest + 1);
	const char *action = slash ? slash + 1 : "";

	if (rest[0] != '/' || idlen >= sizeof id)
		return send_error(c, 400, "invalid_request", "the thread id must be a UUID", false);
	memcpy(id, rest + 1, idlen);
	id[idlen] = '\0';
	if (!is_uuid(id))
		return send_error(c, 400, "invalid_request", "the thread id must be a UUID", false);

	if (action[0] == '\0' && get)
	{
		const char *p[1] = {id};

		return run_json(c, "SELECT pg_catalog.jsonb_build_object('ok', true, 'thread', axme.inbox_thread($1::uuid))::text",
						1, p, HIDE_THREAD, id);
	}
	if (strcmp(c->req->method, "POST") != 0)
		return send_error(c, 405, "method_not_allowed", "method not allowed here", false);

	const char *p[2] = {id, body_or_empty_object(c)};

	if (strcmp(action, "reply") == 0)
		return run_void(c, "SELECT axme.reply($1::uuid, x.b->>'message', x.b->>'actor') FROM (SELECT $2::jsonb AS b) x",
						2, p, HIDE_THREAD, id, "{\"ok\": true}");
	if (strcmp(action, "delegate") == 0)
		return run_void(c, "SELECT axme.delegate($1::uuid, x.b->>'delegate_to', x.b->>'note') FROM (SELECT $2::jsonb AS b) x",
						2, p, HIDE_THREAD, id, "{\"ok\": true}");
	if (strcmp(action, "approve") == 0 || strcmp(action, "reject") == 0 || strcmp(action, "decision") == 0)
		return decide_on(c, "$1::uuid", id, action, p[1]);
	return send_error(c, 404, "not_found", "no such endpoint", false);
}

static enum MHD_Result
approvals_route(Ctx *c, const char *rest)
{
	char		id[40];
	const char *slash = strchr(rest + 1, '/');

	if (rest[0] != '/' || !slash || strcmp(slash, "/decision") != 0 || (size_t) (slash - rest - 1) >= sizeof id)
		return send_error(c, 404, "not_found", "no such endpoint", false);
	memcpy(id, rest + 1, (size_t) (slash - rest - 1));
	id[slash - rest - 1] = '\0';
	if (!is_uuid(id))
		return send_error(c, 400, "invalid_request", "the approval id must be a UUID", false);
	if (strcmp(c->req->method, "POST") != 0)
		return send_error(c, 405, "method_not_allowed", "use POST", false);

	/* {"decision": "approve" | "reject", "comment"}: checked here, so that no outcome is guessed */
	DbResult	r;
	const char *p[1] = {body_or_empty_object(c)};

	if (!db_exec(c->auth.role, "SELECT CASE WHEN pg_catalog.jsonb_typeof(b) = 'object' THEN b->>'decision' END"
				 " FROM (SELECT $1::jsonb AS b) x", 1, p, &r))
		return send_db_error(c, &r, HIDE_NONE, NULL);
	char		decision[16] = "";

	snprintf(decision, sizeof decision, "%s", PQgetvalue(r.res, 0, 0));
	db_result_clear(&r);
	if (strcmp(decision, "approve") != 0 && strcmp(decision, "reject") != 0)
		return send_error(c, 400, "invalid_request", "decision must be \"approve\" or \"reject\"", false);

	/* the id is an intent id (its open task thread) or a thread id */
	return decide_on(c,
					 "coalesce((SELECT th.thread_id FROM axme.threads th WHERE th.intent_id = $1::uuid"
					 " AND th.kind = 'task' ORDER BY th.created_at DESC LIMIT 1), $1::uuid)",
					 id, decision, p[0]);
}

/* ---- operations (admins see everything; others what row-level security shows them) ------- */

static enum MHD_Result
ops_route(Ctx *c, const char *rest)
{
	if (strcmp(c->req->method, "GET") != 0)
		return send_error(c, 405, "method_not_allowed", "use GET", false);
	if (strcmp(rest, "/queues") == 0)
		return run_json(c, "SELECT pg_catalog.jsonb_build_object('ok', true, 'queues', coalesce(pg_catalog.jsonb_agg("
						"pg_catalog.to_jsonb(q) ORDER BY q.agent), '[]'))::text FROM axme.queue_depth q", 0, NULL, HIDE_NONE, NULL);
	if (strcmp(rest, "/dead_letters") == 0)
		return run_json(c, "SELECT pg_catalog.jsonb_build_object('ok', true, 'dead_letters', coalesce(pg_catalog.jsonb_agg("
						"pg_catalog.to_jsonb(d) ORDER BY d.dead_lettered_at DESC), '[]'))::text"
						" FROM (SELECT * FROM axme.dead_letters ORDER BY dead_lettered_at DESC LIMIT 200) d", 0, NULL, HIDE_NONE, NULL);
	if (strcmp(rest, "/endpoints") == 0)
		return run_json(c, "SELECT pg_catalog.jsonb_build_object('ok', true, 'endpoints', coalesce(pg_catalog.jsonb_agg("
						"pg_catalog.to_jsonb(e) ORDER BY e.agent), '[]'))::text FROM axme.endpoint_health e", 0, NULL, HIDE_NONE, NULL);
	return send_error(c, 404, "not_found", "no such endpoint", false);
}

static const char *whoami_sql =
"SELECT pg_catalog.jsonb_build_object('ok', true, 'role', current_user, 'key_id', $1::bigint,"
" 'admin', pg_catalog.pg_has_role('axme_admin', 'USAGE'),"
" 'inboxes', coalesce((SELECT pg_catalog.jsonb_agg(a.address ORDER BY a.address) FROM axme.agents a"
"   WHERE a.delivery_mode = 'inbox' AND (pg_catalog.pg_has_role('axme_admin', 'USAGE') OR EXISTS ("
"     SELECT FROM pg_catalog.pg_roles r WHERE r.oid = a.db_role AND pg_catalog.pg_has_role(r.oid, 'USAGE')))),"
"   '[]'))::text";

static enum MHD_Result
route(Ctx *c, const char *url)
{
	const char *m = c->req->method;
	enum MHD_Result ret;

	if (strcmp(url, "/health") == 0)
		return health(c);
	if (strncmp(url, "/v1/", 4) != 0)
	{
		if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0)
			return send_error(c, 405, "method_not_allowed", "method not allowed here", false);
		return serve_static(c, url);
	}
	if (strcmp(url, "/v1/session") == 0)
	{
		if (strcmp(m, "POST") == 0)
			return session_create(c);
		if (strcmp(m, "DELETE") == 0)
			return session_delete(c);
		return send_error(c, 405, "method_not_allowed", "use POST or DELETE", false);
	}
	if (c->req->too_big)
		return send_error(c, 413, "payload_too_large", "the request body is too large", false);
	if (!authenticate(c, &ret))
		return ret;
	if (gw_shutting_down)
		return send_error_h(c, 503, "unavailable", "the gateway is shutting down", true, "Retry-After", "1");

	if (strcmp(url, "/v1/whoami") == 0)
	{
		char		kid[24];
		const char *p[1] = {kid};

		snprintf(kid, sizeof kid, "%lld", c->auth.key_id);
		return run_json(c, whoami_sql, 1, p, HIDE_NONE, NULL);
	}
	if (strcmp(url, "/v1/intents") == 0)
	{
		if (strcmp(m, "POST") != 0)
			return send_error(c, 405, "method_not_allowed", "use POST", false);
		return intents_create(c);
	}
	if (strncmp(url, "/v1/intents/", 12) == 0)
	{
		char		id[64];
		const char *s = url + 12;
		const char *slash = strchr(s, '/');
		size_t		n = slash ? (size_t) (slash - s) : strlen(s);

		if (n >= sizeof id)
			return send_error(c, 400, "invalid_request", "the intent id must be a UUID", false);
		memcpy(id, s, n);
		id[n] = '\0';
		return intent_route(c, id, s + n);
	}
	if (strncmp(url, "/v1/agents/", 11) == 0)
		return agent_route(c, url + 11);
	if (strcmp(url, "/v1/inbox") == 0 || strncmp(url, "/v1/inbox/", 10) == 0)
		return inbox_route(c, url + 9);
	if (strncmp(url, "/v1/approvals/", 13) == 0)
		return approvals_route(c, url + 13);
	if (strncmp(url, "/v1/ops/", 7) == 0)
		return ops_route(c, url + 7);
	return send_error(c, 404, "not_found", "no such endpoint", false);
}

enum MHD_Result
api_handler(void *cls, struct MHD_Connection *connection, const char *url, const char *method,
			const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	Req		   *req = *con_cls;

	(void) cls;
	(void) version;
	if (!req)
	{
		req = calloc(1, sizeof(Req));
		buf_init(&req->body);
		req->start = now_s();
		snprintf(req->method, sizeof req->method, "%s", method);
		snprintf(req->path, sizeof req->path, "%s", url);
		const char *t = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "X-Trace-Id");
		bool		good = t && t[0] && strlen(t) <= 64;

		for (const char *p = t; good && *p; p++)
			if (!(isalnum((unsigned char) *p) || *p == '-' || *p == '_' || *p == '.' || *p == ':'))
				good = false;
		if (good)
			snprintf(req->trace, sizeof req->trace, "%s", t);
		else
			random_hex(req->trace, 16);
		*con_cls = req;
		return MHD_YES;
	}
	if (*upload_data_size > 0)
	{
		if (req->body.len + *upload_data_size > gw_config.max_body)
			req->too_big = true;
		else
			buf_append(&req->body, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	/* a JSON body must not hold NUL bytes (they would end the text early) */
	if (req->body.len > 0 && strlen(req->body.data) != req->body.len)
	{
		Ctx			c0 = {.conn = connection,.req = req};

		return send_error(&c0, 400, "invalid_request", "the body holds a NUL byte", false);
	}

	Ctx			c = {.conn = connection,.req = req};

	return route(&c, url);
}

void
api_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
			  enum MHD_RequestTerminationCode toe)
{
	Req		   *req = *con_cls;

	(void) cls;
	(void) connection;
	if (!req)
		return;
	if (!gw_config.quiet)
		gw_log("%s %s %d %.1fms key=%lld trace=%s%s%s", req->method, req->path, req->status,
			   (now_s() - req->start) * 1000.0, req->key_id, req->trace,
			   req->is_stream ? " stream" : "",
			   toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" :
			   toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? " client-closed" :
			   toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? " shutdown" : " aborted");
	buf_free(&req->body);
	free(req);
	*con_cls = NULL;
}
