/*
 * util.c: small pieces the rest of axme-gateway shares: a byte buffer with JSON string escaping,
 * the log, the API key cache, the per-key rate limiter and the SQLSTATE to HTTP mapping.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway.h"

void
buf_init(Buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void
buf_free(Buf *b)
{
	free(b->data);
	buf_init(b);
}

static void
buf_reserve(Buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t		cap = b->cap ? b->cap : 256;

	while (cap < b->len + extra + 1)
		cap *= 2;
	char	   *d = realloc(b->data, cap);

	if (d == NULL)
	{
		fprintf(stderr, "axme-gateway: out of memory\n");
		abort();
	}
	b->data = d;
	b->cap = cap;
}

void
buf_append(Buf *b, const char *s, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_puts(Buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void
buf_printf(Buf *b, const char *fmt,...)
{
	va_list		ap;
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_reserve(b, (size_t) n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t) n;
}

void
buf_json_string(Buf *b, const char *s)
{
	buf_puts(b, "\"");
	for (const unsigned char *p = (const unsigned char *) s; p && *p; p++)
	{
		switch (*p)
		{
			case '"':
				buf_puts(b, "\\\"");
				break;
			case '\\':
				buf_puts(b, "\\\\");
				break;
			case '\n':
				buf_puts(b, "\\n");
				break;
			case '\r':
				buf_puts(b, "\\r");
				break;
			case '\t':
				buf_puts(b, "\\t");
				break;
			default:
				if (*p < 0x20)
					buf_printf(b, "\\u%04x", *p);
				else
					buf_append(b, (const char *) p, 1);
		}
	}
	buf_puts(b, "\"");
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void
gw_log(const char *fmt,...)
{
	char		ts[40];
	struct timespec now;
	struct tm	tm;
	va_list		ap;

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s.%03ldZ ", ts, now.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	pthread_mutex_unlock(&log_lock);
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The key cache: a small table of (hash of key, key, result, expiry).  A revoked key keeps
 * working for at most key_cache_seconds on a gateway that saw it just before.
 */
#define AUTH_SLOTS 256
typedef struct AuthSlot
{
	char		key[160];
	AuthInfo	info;
	bool		valid;			/* false: a cached refusal */
	double		expires;
} AuthSlot;

static AuthSlot auth_slots[AUTH_SLOTS];
static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned
hash_str(const char *s)
{
	unsigned	h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char) *s) * 16777619u;
	return h;
}

int
auth_check(const char *key, AuthInfo *out)
{
	size_t		klen = strlen(key);

	if (klen < 8 || klen >= sizeof(auth_slots[0].key))
		return 0;
	for (size_t i = 0; i < klen; i++)
		if (!isgraph((unsigned char) key[i]))
			return 0;

	unsigned	slot = hash_str(key) % AUTH_SLOTS;
	double		now = now_seconds();

	pthread_mutex_lock(&auth_lock);
	if (auth_slots[slot].expires > now && strcmp(auth_slots[slot].key, key) == 0)
	{
		bool		valid = auth_slots[slot].valid;

		*out = auth_slots[slot].info;
		pthread_mutex_unlock(&auth_lock);
		return valid ? 1 : 0;
	}
	pthread_mutex_unlock(&auth_lock);

	DbResult	r;
	const char *params[1] = {key};

	if (!db_exec(NULL, "SELECT key_id, role_name FROM axme._gateway_authenticate($1)", 1, params, &r))
	{
		gw_log("auth: key check failed: %s %s", r.sqlstate, r.message ? r.message : "");
		db_result_clear(&r);
		return -1;
	}
	bool		valid = PQntuples(r.res) == 1;
	AuthInfo	info = {0};

	if (valid)
	{
		info.key_id = atoll(PQgetvalue(r.res, 0, 0));
		snprintf(info.role, sizeof info.role, "%s", PQgetvalue(r.res, 0, 1));
	}
	db_result_clear(&r);

	pthread_mutex_lock(&auth_lock);
	snprintf(auth_slots[slot].key, sizeof auth_slots[slot].key, "%s", key);
	auth_slots[slot].info = info;
	auth_slots[slot].valid = valid;
	auth_slots[slot].expires = now + gw_config.key_cache_seconds;
	pthread_mutex_unlock(&auth_lock);
	*out = info;
	return valid ? 1 : 0;
}

/* Token buckets per key id (per gateway process, documented). */
#define RATE_SLOTS 1024
typedef struct RateSlot
{
	long long	key_id;
	double		tokens;
	double		at;
} RateSlot;

static RateSlot rate_slots[RATE_SLOTS];
static pthread_mutex_t rate_lock = PTHREAD_MUTEX_INITIALIZER;

bool
rate_allow(long long key_id, int *retry_after)
{
	if (gw_config.rate_limit <= 0)
		return true;

	unsigned	slot = (unsigned) (key_id * 2654435761u) % RATE_SLOTS;
	double		now = now_seconds();
	bool		ok;

	pthread_mutex_lock(&rate_lock);
	RateSlot   *s = &rate_slots[slot];

	if (s->key_id != key_id)
	{
		s->key_id = key_id;
		s->tokens = gw_config.rate_burst;
		s->at = now;
	}
	s->tokens += (now - s->at) * gw_config.rate_limit;
	if (s->tokens > gw_config.rate_burst)
		s->tokens = gw_config.rate_burst;
	s->at = now;
	ok = s->tokens >= 1.0;
	if (ok)
		s->tokens -= 1.0;
	else
	{
		int			secs = (int) ((1.0 - s->tokens) / gw_config.rate_limit + 0.999);

		*retry_after = secs < 1 ? 1 : secs;
	}
	pthread_mutex_unlock(&rate_lock);
	return ok;
}

/*
 * The error mapping (docs/gateway.md has the table).  Input errors (class 22, P0002, 42501,
 * 23505, 55000, 54000) are 4xx; only the database itself failing is 5xx.
 */
int
http_status_of_sqlstate(const char *st, const char **code, bool *retryable)
{
	*retryable = false;
	if (strcmp(st, "23505") == 0 || strcmp(st, "55000") == 0 || strcmp(st, "55P03") == 0)
	{
		*code = "conflict";
		return 409;
	}
	if (strcmp(st, "42501") == 0)
	{
		*code = "forbidden";
		return 403;
	}
	if (strcmp(st, "P0002") == 0 || strcmp(st, "42704") == 0)
	{
		*code = strcmp(st, "P0002") == 0 ? "not_found" : "invalid_request";
		return strcmp(st, "P0002") == 0 ? 404 : 400;
	}
	if (strcmp(st, "54000") == 0)
	{
		*code = "payload_too_large";
		return 413;
	}
	if (strncmp(st, "22", 2) == 0 || strcmp(st, "42804") == 0 || strcmp(st, "23502") == 0 ||
		strcmp(st, "23514") == 0 || strcmp(st, "2201X") == 0)
	{
		*code = "invalid_request";
		return 400;
	}
	if (strcmp(st, "57014") == 0)
	{
		*code = "timeout";
		*retryable = true;
		return 504;
	}
	if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 || strncmp(st, "08", 2) == 0 ||
		strncmp(st, "53", 2) == 0 || strncmp(st, "57P", 3) == 0)
	{
		*code = "unavailable";
		*retryable = true;
		return 503;
	}
	*code = "internal";
	return 500;
}
