/*
 * http.c: the http request pipeline of the delivery worker, on libcurl's multi interface.
 *
 * Requests are added as they are claimed and taken out as they finish, so the pipeline stays
 * full (no batch-and-wait).  curl's sockets are waited on through PostgreSQL's WaitEventSet
 * together with the process latch and postmaster death, so interrupts, SIGHUP and wake-ups are
 * seen while requests run; curl's own timer becomes the wait timeout.  No transaction is open
 * here.  Every request: POST, signed once per attempt, no redirects, only http/https, no proxy,
 * no signals, a whole-request timeout and a shorter connect timeout, response read up to a cap.
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <curl/curl.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "axme.h"
#include "delivery.h"

extern curl_socket_t axme_ssrf_opensocket(void *clientp, curlsocktype purpose,
										  struct curl_sockaddr *address);

typedef struct SockEntry
{
	curl_socket_t fd;			/* hash key */
	int			what;			/* CURL_POLL_* */
} SockEntry;

typedef struct AgentBusy
{
	int64		agent_id;		/* hash key */
	int			n;
} AgentBusy;

static CURLM *multi = NULL;
static HTAB *sockets = NULL;
static HTAB *busy = NULL;
static int	in_flight = 0;
static bool sockets_changed = true;
static WaitEventSet *wait_set = NULL;
static int	wait_set_size = 0;
static long timer_ms = -1;		/* curl's wanted timeout, from when it was set */
static TimestampTz timer_set_at = 0;
static List *finished = NIL;
static MemoryContext http_context = NULL;

static int	prereq_cb(void *clientp, char *conn_primary_ip, char *conn_local_ip,
					  int conn_primary_port, int conn_local_port);

#define MCHECK(call) multi_check((call), #call)
#define ECHECK(call) easy_check((call), #call)

static void
multi_check(CURLMcode rc, const char *what)
{
	if (rc != CURLM_OK)
		elog(ERROR, "%s failed: %s", what, curl_multi_strerror(rc));
}

static void
easy_check(CURLcode rc, const char *what)
{
	if (rc != CURLE_OK)
		elog(ERROR, "%s failed: %s", what, curl_easy_strerror(rc));
}

/* CURLMOPT_SOCKETFUNCTION: remember which sockets curl wants watched, and for what. */
static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	bool		found;
	SockEntry  *e;

	if (what == CURL_POLL_REMOVE)
	{
		hash_search(sockets, &s, HASH_REMOVE, &found);
		sockets_changed = true;
		return 0;
	}
	e = hash_search(sockets, &s, HASH_ENTER, &found);
	if (!found || e->what != what)
		sockets_changed = true;
	e->what = what;
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants to be called after timeout_ms (-1: no timer). */
static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	timer_ms = timeout_ms;
	timer_set_at = GetCurrentTimestamp();
	return 0;
}

/* CURLOPT_WRITEFUNCTION: keep up to AXME_RESPONSE_CAP bytes, count (and drop) the rest. */
static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	AxmeDelivery *d = userdata;
	size_t		n = size * nmemb;

	if (d->response.len < AXME_RESPONSE_CAP)
	{
		size_t		keep = Min(n, (size_t) (AXME_RESPONSE_CAP - d->response.len));

		appendBinaryStringInfo(&d->response, ptr, (int) keep);
	}
	d->response_total += n;
	return n;
}

static void
new_multi(void)
{
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "curl_multi_init failed");
	MCHECK(curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb));
	MCHECK(curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb));
	MCHECK(curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) Max(axme_max_in_flight, 16)));
}

/*
 * Called once when the worker starts: the multi handle and its bookkeeping.
 */
void
axme_http_init(void)
{
	HASHCTL		ctl;

	http_context = AllocSetContextCreate(TopMemoryContext, "axme http", ALLOCSET_DEFAULT_SIZES);
	if (curl_global_init(CURL_GLOBAL_ALL) != 0)
		elog(ERROR, "curl_global_init failed");
	new_multi();

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(curl_socket_t);
	ctl.entrysize = sizeof(SockEntry);
	ctl.hcxt = http_context;
	sockets = hash_create("axme http sockets", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(AgentBusy);
	ctl.hcxt = http_context;
	busy = hash_create("axme http agents", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static void
busy_add(int64 agent_id, int delta)
{
	bool		found;
	AgentBusy  *b = hash_search(busy, &agent_id, HASH_ENTER, &found);

	if (!found)
		b->n = 0;
	b->n += delta;
	if (b->n <= 0)
		hash_search(busy, &agent_id, HASH_REMOVE, NULL);
	in_flight += delta;
}

/*
 * One TLS option of an http agent: PEM contents go to libcurl as a blob (copied); a file path is
 * checked again against axme.tls_files_directory (it may have changed since the registration),
 * and one not allowed is not read: the attempt fails with error class tls (see prereq_cb).
 */
static void
set_tls_source(AxmeDelivery *d, CURLoption file_opt, CURLoption blob_opt, const char *value,
			   const char *option)
{
	char	   *problem;

	if (strncmp(value, "-----BEGIN ", 11) == 0)
	{
		struct curl_blob blob;

		blob.data = (void *) value;
		blob.len = strlen(value);
		blob.flags = CURL_BLOB_COPY;
		ECHECK(curl_easy_setopt(d->easy, blob_opt, &blob));
		return;
	}
	problem = axme_tls_file_problem(value, true);
	if (problem != NULL)
	{
		if (d->tls_refused[0] == '\0')
			snprintf(d->tls_refused, sizeof(d->tls_refused), "option %s: %s", option, problem);
		pfree(problem);
		return;
	}
	ECHECK(curl_easy_setopt(d->easy, file_opt, value));
}

/*
 * Start one request.  d was filled by the claim; the request is signed here, at send time,
 * so webhook-timestamp is the time of this attempt.
 */
void
axme_http_start(AxmeDelivery *d)
{
	CURL	   *easy = curl_easy_init();
	struct curl_slist *h = NULL;
	int64		ts = (int64) time(NULL);
	char	   *sig;
	ListCell   *lc;
	long		connect_ms;
	MemoryContext old;

	if (easy == NULL)
		elog(ERROR, "curl_easy_init failed");
	d->easy = easy;
	old = MemoryContextSwitchTo(http_context);
	initStringInfo(&d->response);
	MemoryContextSwitchTo(old);
	d->response_total = 0;
	d->ssrf_blocked = false;
	d->ssrf_detail[0] = '\0';
	d->errbuf[0] = '\0';
	d->retry_after_ms = -1;

	sig = axme_sign(d->intent_id, ts, d->body, d->body_len, d->secrets);
	h = curl_slist_append(h, "content-type: application/json");
	h = curl_slist_append(h, "user-agent: axme/" AXME_VERSION);
	h = curl_slist_append(h, psprintf("webhook-id: %s", d->intent_id));
	h = curl_slist_append(h, psprintf("webhook-timestamp: " INT64_FORMAT, ts));
	if (sig[0] != '\0')
		h = curl_slist_append(h, psprintf("webhook-signature: %s", sig));
	h = curl_slist_append(h, "expect:");		/* no 100-continue round trip */
	foreach(lc, d->headers)
		h = curl_slist_append(h, (char *) lfirst(lc));
	if (h == NULL)
		elog(ERROR, "curl_slist_append failed");
	d->header_list = h;

	connect_ms = Min(10000L, Max((long) d->timeout_ms / 3, Min(1000L, (long) d->timeout_ms)));

	ECHECK(curl_easy_setopt(easy, CURLOPT_URL, d->url));
	ECHECK(curl_easy_setopt(easy, CURLOPT_POST, 1L));
	ECHECK(curl_easy_setopt(easy, CURLOPT_POSTFIELDS, d->body));
	ECHECK(curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) d->body_len));
	ECHECK(curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h));
	ECHECK(curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) d->timeout_ms));
	ECHECK(curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms));
	ECHECK(curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L));
	ECHECK(curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L));
	ECHECK(curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https"));
	ECHECK(curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"));
	ECHECK(curl_easy_setopt(easy, CURLOPT_PROXY, ""));	/* ignore *_proxy variables */
	ECHECK(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L));
	ECHECK(curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L));
	d->tls_refused[0] = '\0';
	if (d->ca_file)
		set_tls_source(d, CURLOPT_CAINFO, CURLOPT_CAINFO_BLOB, d->ca_file, "ca_file");
	if (d->client_cert && d->client_key)
	{
		set_tls_source(d, CURLOPT_SSLCERT, CURLOPT_SSLCERT_BLOB, d->client_cert, "client_cert_file");
		ECHECK(curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM"));
		set_tls_source(d, CURLOPT_SSLKEY, CURLOPT_SSLKEY_BLOB, d->client_key, "client_key_file");
		ECHECK(curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM"));
	}
	ECHECK(curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, axme_ssrf_opensocket));
	ECHECK(curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, d));
	ECHECK(curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, prereq_cb));
	ECHECK(curl_easy_setopt(easy, CURLOPT_PREREQDATA, d));
	ECHECK(curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb));
	ECHECK(curl_easy_setopt(easy, CURLOPT_WRITEDATA, d));
	ECHECK(curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, d->errbuf));
	ECHECK(curl_easy_setopt(easy, CURLOPT_PRIVATE, d));
	ECHECK(curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L));

	d->started_at = GetCurrentTimestamp();
	MCHECK(curl_multi_add_handle(multi, easy));
	busy_add(d->agent_id, 1);
}

/*
 * CURLOPT_PREREQFUNCTION: runs before each request is sent, on a new or a kept-alive connection.
 * The address was checked when the connection was opened; check it again here so that a
 * connection kept alive across a change of axme.http_allowed_networks obeys the new list.
 */
static int
prereq_cb(void *clientp, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
		  int conn_local_port)
{
	AxmeDelivery *d = clientp;
	struct sockaddr_storage ss;

	if (d->tls_refused[0] != '\0')
		return CURL_PREREQFUNC_ABORT;	/* a TLS file not allowed: nothing is sent */
	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, conn_primary_ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, conn_primary_ip, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		return CURL_PREREQFUNC_OK;	/* a unix socket or a proxy: not used (no proxies) */
	if (!axme_ssrf_check((struct sockaddr *) &ss, d->ssrf_detail, sizeof(d->ssrf_detail)))
	{
		d->ssrf_blocked = true;
		return CURL_PREREQFUNC_ABORT;
	}
	return CURL_PREREQFUNC_OK;
}

/* Retry-After: delay seconds or an HTTP date; -1 when absent or unreadable. */
static int64
retry_after_ms(CURL *easy)
{
	struct curl_header *hdr;
	const char *v;
	char	   *end;
	long		secs;
	time_t		when;

	if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK)
		return -1;
	v = hdr->value;
	while (*v == ' ')
		v++;
	secs = strtol(v, &end, 10);
	if (end != v && (*end == '\0' || *end == ' ') && secs >= 0)
		return (int64) Min(secs, 365L * 86400) * 1000;
	when = curl_getdate(v, NULL);
	if (when == -1)
		return -1;
	return when > time(NULL) ? (int64) (when - time(NULL)) * 1000 : 0;
}

/* The error class of a transfer that got no usable response. */
static const char *
classify(CURLcode rc, AxmeDelivery *d)
{
	switch (rc)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
			return "dns";
		case CURLE_COULDNT_CONNECT:
			return d->ssrf_blocked ? "ssrf_blocked" : "connect";
		case CURLE_OPERATION_TIMEDOUT:
			return "timeout";
		case CURLE_URL_MALFORMAT:
			return "invalid_url";

			/*
			 * Not the URL: register_agent admits only http and https, so this is a server that
			 * answered with no HTTP response (curl reports HTTP/0.9 this way), like a reset.
			 */
		case CURLE_UNSUPPORTED_PROTOCOL:
			return d->ssrf_blocked ? "ssrf_blocked" : "network";
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
		case CURLE_SSL_CRL_BADFILE:
		case CURLE_SSL_SHUTDOWN_FAILED:
		case CURLE_SSL_ENGINE_INITFAILED:
			return "tls";
		default:
			return d->ssrf_blocked ? "ssrf_blocked" : "network";
	}
}

/* Take finished transfers out of the multi handle and classify them. */
static void
harvest(void)
{
	CURLMsg    *msg;
	int			left;
	MemoryContext old = MemoryContextSwitchTo(http_context);

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		AxmeDelivery *d;
		long		status = 0;
		CURLcode	rc;

		if (msg->msg != CURLMSG_DONE)
			continue;
		rc = msg->data.result;
		ECHECK(curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &d));
		d->duration_ms = (double) (GetCurrentTimestamp() - d->started_at) / 1000.0;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
		d->http_status = (int) status;
		if (rc == CURLE_OK)
		{
			if (status >= 200 && status < 300)
				d->error_class = NULL;
			else if (status >= 300 && status < 400)
			{
				char	   *location = NULL;

				d->error_class = "redirect";
				curl_easy_getinfo(msg->easy_handle, CURLINFO_REDIRECT_URL, &location);
				d->error = psprintf("HTTP %ld redirect not followed%s%s", status,
									location ? " to " : "", location ? location : "");
			}
			else
			{
				d->error_class = "http";
				d->error = psprintf("HTTP %ld", status);
				if (status == 429 || status == 503)
					d->retry_after_ms = retry_after_ms(msg->easy_handle);
			}
		}
		else if (d->tls_refused[0] != '\0')
		{
			d->error_class = "tls";
			d->error = pstrdup(d->tls_refused);
		}
		else
		{
			d->error_class = classify(rc, d);
			if (d->ssrf_blocked && strcmp(d->error_class, "ssrf_blocked") == 0)
				d->error = pstrdup(d->ssrf_detail);
			else
				d->error = psprintf("%s%s%s", curl_easy_strerror(rc),
									d->errbuf[0] ? ": " : "", d->errbuf);
		}
		MCHECK(curl_multi_remove_handle(multi, msg->easy_handle));
		curl_easy_cleanup(msg->easy_handle);
		d->easy = NULL;
		curl_slist_free_all((struct curl_slist *) d->header_list);
		d->header_list = NULL;
		busy_add(d->agent_id, -1);
		finished = lappend(finished, d);
	}
	MemoryContextSwitchTo(old);
}

int
axme_http_in_flight(void)
{
	return in_flight;
}

/*
 * The agents with requests in flight and how many each, palloc'd in the current context.
 */
int
axme_http_busy(int64 **agents, int **counts)
{
	HASH_SEQ_STATUS seq;
	AgentBusy  *b;
	int			n = 0;
	long		total = hash_get_num_entries(busy);

	*agents = palloc(sizeof(int64) * (total + 1));
	*counts = palloc(sizeof(int) * (total + 1));
	hash_seq_init(&seq, busy);
	while ((b = hash_seq_search(&seq)) != NULL)
	{
		(*agents)[n] = b->agent_id;
		(*counts)[n] = b->n;
		n++;
	}
	return n;
}

/*
 * The finished deliveries since the last call (caller records and frees them).
 */
List *
axme_http_collect(void)
{
	List	   *l = finished;

	finished = NIL;
	return l;
}

static void
rebuild_wait_set(void)
{
	HASH_SEQ_STATUS seq;
	SockEntry  *e;
	int			n = (int) hash_get_num_entries(sockets);

	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set_size = n + 2;
	wait_set = CreateWaitEventSet(http_context, wait_set_size);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	hash_seq_init(&seq, sockets);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		uint32		ev = 0;

		if (e->what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (e->what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev)
			AddWaitEventToSet(wait_set, ev, e->fd, NULL, NULL);
	}
	sockets_changed = false;
}

/* Let curl act on its timer if it has run out. */
static void
run_timer(void)
{
	int			running;

	if (timer_ms < 0)
		return;
	if (timer_ms == 0 ||
		TimestampDifferenceExceeds(timer_set_at, GetCurrentTimestamp(), (int) timer_ms))
	{
		timer_ms = -1;
		MCHECK(curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running));
	}
}

/*
 * Drive curl, then sleep until a socket is ready, the latch is set, curl's timer or
 * max_timeout_ms (-1: none) runs out; drive curl again with what happened.  Returns the number of
 * deliveries ready in axme_http_collect(); *latch_set tells whether the latch woke us (it is reset).
 */
long
axme_http_wait(long max_timeout_ms, bool *latch_set)
{
	WaitEvent  *events;
	int			nevents;
	long		timeout = max_timeout_ms;
	int			running;

	*latch_set = false;
	run_timer();
	harvest();
	if (finished != NIL)
		timeout = 0;
	if (timer_ms >= 0)
	{
		long		left = timer_ms - (long) ((GetCurrentTimestamp() - timer_set_at) / 1000);

		left = Max(left, 0);
		if (timeout < 0 || left < timeout)
			timeout = left;
	}
	if (sockets_changed || wait_set == NULL)
		rebuild_wait_set();
	events = palloc(sizeof(WaitEvent) * wait_set_size);
	nevents = WaitEventSetWait(wait_set, timeout, events, wait_set_size, PG_WAIT_EXTENSION);
	for (int i = 0; i < nevents; i++)
	{
		WaitEvent  *ev = &events[i];

		if (ev->events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			*latch_set = true;
		}
		else if (ev->events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			mask = 0;

			if (ev->events & WL_SOCKET_READABLE)
				mask |= CURL_CSELECT_IN;
			if (ev->events & WL_SOCKET_WRITEABLE)
				mask |= CURL_CSELECT_OUT;
			MCHECK(curl_multi_socket_action(multi, ev->fd, mask, &running));
		}
	}
	pfree(events);
	run_timer();
	harvest();
	return list_length(finished);
}

/*
 * Free a recorded delivery (it is no longer in curl).
 */
void
axme_http_free(AxmeDelivery *d)
{
	if (d->response.data)
		pfree(d->response.data);
	if (d->error)
		pfree(d->error);
	list_free_deep(d->secrets);
	list_free_deep(d->headers);
	pfree(d->url);
	pfree(d->body);
	if (d->ca_file)
		pfree(d->ca_file);
	if (d->client_cert)
		pfree(d->client_cert);
	if (d->client_key)
		pfree(d->client_key);
	pfree(d);
}
