/*
 * main.c: axme-gateway's start and stop: configuration (flags, AXME_GATEWAY_* environment
 * variables, an optional config file), the open-files limit, the libmicrohttpd daemon, and a
 * clean SIGTERM (every stream gets a final event, requests in flight finish, the listener
 * unregisters).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gateway.h"

#ifndef GW_WWW_DIR
#define GW_WWW_DIR "/usr/share/postgresql/15/axme-gateway/www"
#endif

GwConfig	gw_config;
volatile int gw_shutting_down;

typedef enum OptType
{
	OPT_STR,
	OPT_INT,
	OPT_DOUBLE,
	OPT_BOOL,
	OPT_LISTEN
} OptType;

typedef struct Opt
{
	const char *name;
	OptType		type;
	void	   *ptr;
	const char *dflt;
	const char *help;
} Opt;

static char *listen_arg;
static char *config_file;

static Opt	opts[] = {
	{"dsn", OPT_STR, &gw_config.dsn, "", "libpq connection string of the database with axme (its role: see docs/gateway.md)"},
	{"listen", OPT_LISTEN, &listen_arg, "127.0.0.1:8080", "address:port to serve HTTP on (put a TLS proxy in front)"},
	{"pool-size", OPT_INT, &gw_config.pool_size, "8", "database connections for requests and stream reads"},
	{"threads", OPT_INT, &gw_config.threads, "4", "HTTP event-loop threads (epoll)"},
	{"stream-workers", OPT_INT, &gw_config.stream_workers, "2", "threads that read what woke a stream"},
	{"max-connections", OPT_INT, &gw_config.max_connections, "20000", "HTTP connections at once, streams included"},
	{"keepalive-seconds", OPT_INT, &gw_config.keepalive_seconds, "15", "SSE keep-alive comment on an idle stream this often"},
	{"recheck-seconds", OPT_INT, &gw_config.recheck_seconds, "30", "every stream re-reads at least this often (missed wake-ups)"},
	{"rate-limit", OPT_DOUBLE, &gw_config.rate_limit, "0", "requests per second per API key, per gateway process (0: none)"},
	{"rate-burst", OPT_DOUBLE, &gw_config.rate_burst, "0", "burst above the rate (default: 2 x rate-limit)"},
	{"pool-wait-ms", OPT_INT, &gw_config.pool_wait_ms, "5000", "a request waits this long for a free connection, then 503"},
	{"statement-timeout-ms", OPT_INT, &gw_config.statement_timeout_ms, "30000", "statement_timeout of each request"},
	{"agent-stream-margin", OPT_INT, &gw_config.agent_stream_margin_s, "5", "seconds an agent stream reads back (re-sent on resume)"},
	{"key-cache-seconds", OPT_INT, &gw_config.key_cache_seconds, "5", "how long a key check is cached (a revoked key works this long)"},
	{"max-body", OPT_INT, &gw_config.max_body, "1048576", "largest request body in bytes (413 above)"},
	{"www", OPT_STR, &gw_config.www_dir, GW_WWW_DIR, "directory of the web inbox's static files"},
	{"cookie-secure", OPT_BOOL, &gw_config.cookie_secure, "false", "mark the web inbox's cookies Secure (behind TLS)"},
	{"quiet", OPT_BOOL, &gw_config.quiet, "false", "no request log"},
	{"config", OPT_STR, &config_file, "", "a config file: lines \"name = value\" with the names above"},
	{NULL, 0, NULL, NULL, NULL}
};

static void
usage(FILE *f)
{
	fprintf(f,
			"axme-gateway %s: the AXME HTTP API, SSE streams and web inbox over the axme extension\n\n"
			"Usage: axme-gateway --dsn 'dbname=... host=... user=...' [--listen 127.0.0.1:8080] [options]\n\n"
			"Options (each also as environment variable AXME_GATEWAY_<NAME>, e.g. AXME_GATEWAY_POOL_SIZE,\n"
			"or as \"name = value\" in the --config file; a flag beats the environment, which beats the file):\n",
			GW_VERSION);
	for (Opt *o = opts; o->name; o++)
		fprintf(f, "  --%-22s %s (default: %s)\n", o->name, o->help, o->dflt[0] ? o->dflt : "none");
	fprintf(f, "  --help                   this text\n  --version                the version\n\n"
			"Endpoints, keys, errors and deployment: docs/gateway.md.\n");
}

static Opt *
find_opt(const char *name)
{
	for (Opt *o = opts; o->name; o++)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

static bool
set_opt(Opt *o, const char *v, const char *where)
{
	char	   *end;

	switch (o->type)
	{
		case OPT_STR:
		case OPT_LISTEN:
			*(char **) o->ptr = strdup(v);
			return true;
		case OPT_INT:
			{
				errno = 0;
				long		n = strtol(v, &end, 10);

				if (errno || *end || n < 0 || n > 1000000000L)
					break;
				if (o->ptr == &gw_config.max_body)
					gw_config.max_body = (size_t) n;
				else
					*(int *) o->ptr = (int) n;
				return true;
			}
		case OPT_DOUBLE:
			{
				double		d = strtod(v, &end);

				if (*end || d < 0)
					break;
				*(double *) o->ptr = d;
				return true;
			}
		case OPT_BOOL:
			if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "on") == 0 || strcmp(v, "yes") == 0)
				*(bool *) o->ptr = true;
			else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "off") == 0 || strcmp(v, "no") == 0)
				*(bool *) o->ptr = false;
			else
				break;
			return true;
	}
	fprintf(stderr, "axme-gateway: invalid value \"%s\" for %s (%s)\n", v, o->name, where);
	return false;
}

static char *
trim(char *s)
{
	while (isspace((unsigned char) *s))
		s++;
	char	   *e = s + strlen(s);

	while (e > s && isspace((unsigned char) e[-1]))
		*--e = '\0';
	return s;
}

static bool
load_file(const char *path)
{
	FILE	   *f = fopen(path, "r");
	char		line[4096];
	int			n = 0;

	if (!f)
	{
		fprintf(stderr, "axme-gateway: cannot open config file %s: %s\n", path, strerror(errno));
		return false;
	}
	while (fgets(line, sizeof line, f))
	{
		n++;
		char	   *s = trim(line);

		if (!*s || *s == '#')
			continue;
		char	   *eq = strchr(s, '=');

		if (!eq)
		{
			fprintf(stderr, "axme-gateway: %s:%d: expected name = value\n", path, n);
			fclose(f);
			return false;
		}
		*eq = '\0';
		char	   *name = trim(s),
				   *val = trim(eq + 1);
		size_t		vl = strlen(val);

		if (vl >= 2 && (val[0] == '\'' || val[0] == '"') && val[vl - 1] == val[0])
		{
			val[vl - 1] = '\0';
			val++;
		}
		for (char *p = name; *p; p++)
			if (*p == '_')
				*p = '-';
		Opt		   *o = find_opt(name);

		if (!o || o->ptr == &config_file)
		{
			fprintf(stderr, "axme-gateway: %s:%d: unknown setting \"%s\"\n", path, n, name);
			fclose(f);
			return false;
		}
		if (!set_opt(o, val, path))
		{
			fclose(f);
			return false;
		}
	}
	fclose(f);
	return true;
}

static bool
configure(int argc, char **argv)
{
	for (Opt *o = opts; o->name; o++)
		if (!set_opt(o, o->dflt, "default"))
			return false;

	/* the config file named by a flag or the environment comes first */
	const char *cf = getenv("AXME_GATEWAY_CONFIG");

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			cf = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			cf = argv[i] + 9;
	}
	if (cf && cf[0] && !load_file(cf))
		return false;

	for (Opt *o = opts; o->name; o++)
	{
		char		env[64];
		int			k = snprintf(env, sizeof env, "AXME_GATEWAY_");

		for (const char *p = o->name; *p && k < 62; p++)
			env[k++] = *p == '-' ? '_' : (char) toupper((unsigned char) *p);
		env[k] = '\0';
		const char *v = getenv(env);

		if (v && o->ptr != &config_file && !set_opt(o, v, env))
			return false;
	}

	for (int i = 1; i < argc; i++)
	{
		char	   *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
		{
			usage(stdout);
			exit(0);
		}
		if (strcmp(a, "--version") == 0)
		{
			printf("axme-gateway %s\n", GW_VERSION);
			exit(0);
		}
		if (strncmp(a, "--", 2) != 0)
		{
			fprintf(stderr, "axme-gateway: unexpected argument \"%s\" (see --help)\n", a);
			return false;
		}
		char		name[64];
		const char *val = NULL;
		const char *eq = strchr(a, '=');

		snprintf(name, sizeof name, "%.*s", (int) (eq ? eq - a - 2 : (long) strlen(a) - 2), a + 2);
		Opt		   *o = find_opt(name);

		if (!o)
		{
			fprintf(stderr, "axme-gateway: unknown option --%s (see --help)\n", name);
			return false;
		}
		if (eq)
			val = eq + 1;
		else if (o->type == OPT_BOOL)
			val = "true";
		else if (i + 1 < argc)
			val = argv[++i];
		else
		{
			fprintf(stderr, "axme-gateway: --%s needs a value\n", name);
			return false;
		}
		if (!set_opt(o, val, "command line"))
			return false;
	}

	if (!gw_config.dsn || !gw_config.dsn[0])
	{
		fprintf(stderr, "axme-gateway: --dsn (or AXME_GATEWAY_DSN) is required (see --help)\n");
		return false;
	}
	char	   *colon = strrchr(listen_arg, ':');

	if (!colon)
	{
		fprintf(stderr, "axme-gateway: --listen must be host:port\n");
		return false;
	}
	*colon = '\0';
	gw_config.listen_host = listen_arg;
	gw_config.listen_port = atoi(colon + 1);
	if (gw_config.listen_port <= 0 || gw_config.listen_port > 65535)
	{
		fprintf(stderr, "axme-gateway: invalid port in --listen\n");
		return false;
	}
	if (gw_config.pool_size < 1)
		gw_config.pool_size = 1;
	if (gw_config.threads < 1)
		gw_config.threads = 1;
	if (gw_config.stream_workers < 1)
		gw_config.stream_workers = 1;
	if (gw_config.keepalive_seconds < 1)
		gw_config.keepalive_seconds = 1;
	if (gw_config.recheck_seconds < 1)
		gw_config.recheck_seconds = 1;
	if (gw_config.rate_limit > 0 && gw_config.rate_burst < 1)
		gw_config.rate_burst = gw_config.rate_limit * 2 < 1 ? 1 : gw_config.rate_limit * 2;
	return true;
}

/* Streams need one descriptor each: raise the soft open-files limit to the hard one. */
static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
	{
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t) gw_config.max_connections + 64)
	{
		gw_log("open-files limit %ld: at most about %ld connections (raise ulimit -n)",
			   (long) rl.rlim_cur, (long) rl.rlim_cur - 64);
		gw_config.max_connections = (int) rl.rlim_cur - 64;
	}
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char		msg[1024];

	(void) cls;
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t		n = strlen(msg);

	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	gw_log("http: %s", msg);
}

int
main(int argc, char **argv)
{
	sigset_t	sigs;
	int			sig;
	struct sockaddr_in addr;

	if (!configure(argc, argv))
		return 2;

	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t) gw_config.listen_port);
	if (strcmp(gw_config.listen_host, "localhost") == 0)
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	else if (strcmp(gw_config.listen_host, "*") == 0 || gw_config.listen_host[0] == '\0')
		addr.sin_addr.s_addr = htonl(INADDR_ANY);
	else if (inet_pton(AF_INET, gw_config.listen_host, &addr.sin_addr) != 1)
	{
		fprintf(stderr, "axme-gateway: --listen host must be an IPv4 address, localhost or *\n");
		return 2;
	}

	/* SIGTERM and SIGINT are taken by sigwait() below; every thread inherits the mask */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();

	if (pool_start() != 0)
	{
		gw_log("cannot connect to the database; check --dsn and that the login role is a member of axme_gateway");
		return 1;
	}
	if (streams_start() != 0 || listener_start() != 0)
	{
		gw_log("cannot start threads");
		return 1;
	}

	struct MHD_Daemon *d = MHD_start_daemon(
											MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
											0, NULL, NULL, api_handler, NULL,
											MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
											MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
											MHD_OPTION_THREAD_POOL_SIZE, (unsigned) gw_config.threads,
											MHD_OPTION_CONNECTION_LIMIT, (unsigned) gw_config.max_connections,
											MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) 120,
											MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) 16384,
											MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned) 1024,
											MHD_OPTION_NOTIFY_COMPLETED, api_completed, NULL,
											MHD_OPTION_END);

	if (!d)
	{
		gw_log("cannot listen on %s:%d", gw_config.listen_host, gw_config.listen_port);
		return 1;
	}
	gw_log("axme-gateway %s listening on %s:%d (pool %d, %d threads)", GW_VERSION,
		   gw_config.listen_host, gw_config.listen_port, gw_config.pool_size, gw_config.threads);

	for (;;)
	{
		if (sigwait(&sigs, &sig) == 0 && (sig == SIGTERM || sig == SIGINT))
			break;
	}
	gw_log("shutting down (%s): closing %d streams", sig == SIGTERM ? "SIGTERM" : "SIGINT", streams_count());
	gw_shutting_down = 1;
	MHD_quiesce_daemon(d);		/* no new connections */
	streams_shutdown();
	MHD_stop_daemon(d);
	streams_stop();
	listener_stop();
	pool_stop();
	gw_log("stopped");
	return 0;
}
