/*
 * ssrf.c: which addresses the delivery worker may connect to over http.
 *
 * Every connection libcurl opens goes through axme_ssrf_opensocket (CURLOPT_OPENSOCKETFUNCTION),
 * which sees the address actually dialled, after DNS: a name that resolves (or re-resolves) to a
 * private address is refused just like the literal address.  Only global unicast addresses pass,
 * unless the operator allows networks in axme.http_allowed_networks (PGC_SIGHUP: postgresql.conf
 * or ALTER SYSTEM only, so a database owner cannot open it).  IPv4-mapped IPv6 addresses are
 * checked as the IPv4 address they stand for.
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <curl/curl.h>

#include "utils/guc.h"

#include "delivery.h"

char	   *axme_http_allowed_networks = NULL;

typedef struct Net
{
	int			family;			/* 4 or 6 */
	int			bits;
	unsigned char addr[16];
} Net;

typedef struct NetList
{
	int			n;
	Net			nets[FLEXIBLE_ARRAY_MEMBER];
} NetList;

static NetList *allowed = NULL;

/* IPv4 ranges that are not global unicast (IANA special-purpose registry, multicast, reserved) */
static const struct
{
	unsigned char a[4];
	int			bits;
}			private_v4[] = {
	{{0, 0, 0, 0}, 8}, {{10, 0, 0, 0}, 8}, {{100, 64, 0, 0}, 10}, {{127, 0, 0, 0}, 8},
	{{169, 254, 0, 0}, 16}, {{172, 16, 0, 0}, 12}, {{192, 0, 0, 0}, 24}, {{192, 0, 2, 0}, 24},
	{{192, 88, 99, 0}, 24}, {{192, 168, 0, 0}, 16}, {{198, 18, 0, 0}, 15},
	{{198, 51, 100, 0}, 24}, {{203, 0, 113, 0}, 24}, {{224, 0, 0, 0}, 4}, {{240, 0, 0, 0}, 4},
};

/* IPv6: only 2000::/3 is global unicast, minus these */
static const struct
{
	unsigned char a[4];
	int			bits;
}			private_v6[] = {
	{{0x20, 0x01, 0x00, 0x00}, 23},		/* IETF protocol assignments, Teredo */
	{{0x20, 0x01, 0x0d, 0xb8}, 32},		/* documentation */
	{{0x20, 0x02, 0x00, 0x00}, 16},		/* 6to4 */
	{{0x3f, 0xff, 0x00, 0x00}, 20},		/* documentation */
};

static bool
prefix_match(const unsigned char *addr, const unsigned char *net, int bits)
{
	int			full = bits / 8;
	int			rest = bits % 8;

	if (memcmp(addr, net, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((addr[full] ^ net[full]) & (0xff << (8 - rest)) & 0xff) == 0;
}

static bool
is_global(int family, const unsigned char *a)
{
	if (family == 4)
	{
		for (int i = 0; i < (int) lengthof(private_v4); i++)
			if (prefix_match(a, private_v4[i].a, private_v4[i].bits))
				return false;
		return true;
	}
	if ((a[0] & 0xe0) != 0x20)
		return false;
	for (int i = 0; i < (int) lengthof(private_v6); i++)
		if (prefix_match(a, private_v6[i].a, private_v6[i].bits))
			return false;
	return true;
}

/*
 * true when the socket address may be connected to; otherwise why says which address and why.
 */
bool
axme_ssrf_check(const struct sockaddr *sa, char *why, size_t whylen)
{
	unsigned char a[16];
	int			family;
	char		text[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET)
	{
		memcpy(a, &((const struct sockaddr_in *) sa)->sin_addr, 4);
		family = 4;
	}
	else if (sa->sa_family == AF_INET6)
	{
		const struct in6_addr *in6 = &((const struct sockaddr_in6 *) sa)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(in6))
		{
			memcpy(a, ((const unsigned char *) in6) + 12, 4);
			family = 4;
		}
		else
		{
			memcpy(a, in6, 16);
			family = 6;
		}
	}
	else
	{
		snprintf(why, whylen, "address family %d is not allowed", sa->sa_family);
		return false;
	}

	if (allowed != NULL)
	{
		for (int i = 0; i < allowed->n; i++)
			if (allowed->nets[i].family == family &&
				prefix_match(a, allowed->nets[i].addr, allowed->nets[i].bits))
				return true;
	}
	if (is_global(family, a))
		return true;

	if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr, text, sizeof(text));
	else
		inet_ntop(AF_INET, a, text, sizeof(text));
	snprintf(why, whylen,
			 "connection to %s refused: not a public address and not in axme.http_allowed_networks",
			 text);
	return false;
}

/*
 * CURLOPT_OPENSOCKETFUNCTION: open the socket only for an allowed address.  clientp is the
 * AxmeDelivery; a refusal is remembered there so the failure is classified ssrf_blocked.
 */
curl_socket_t axme_ssrf_opensocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address);

curl_socket_t
axme_ssrf_opensocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	AxmeDelivery *d = clientp;

	if (!axme_ssrf_check(&address->addr, d->ssrf_detail, sizeof(d->ssrf_detail)))
	{
		d->ssrf_blocked = true;
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

/*
 * Parse "cidr, cidr, ..." into a malloc'd NetList; NULL and a message on error.
 */
static NetList *
parse_networks(const char *value, char **err)
{
	char	   *copy = pstrdup(value ? value : "");
	char	   *tok;
	char	   *save = NULL;
	int			cap = 1;
	NetList    *list;

	for (const char *p = copy; *p; p++)
		if (*p == ',')
			cap++;
	list = malloc(offsetof(NetList, nets) + cap * sizeof(Net));
	if (list == NULL)
	{
		*err = "out of memory";
		return NULL;
	}
	list->n = 0;
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
	{
		char	   *slash;
		char	   *end;
		Net		   *net = &list->nets[list->n];
		int			maxbits;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok == '\0')
			continue;
		slash = strchr(tok, '/');
		if (slash)
			*slash = '\0';
		memset(net->addr, 0, sizeof(net->addr));
		if (inet_pton(AF_INET, tok, net->addr) == 1)
		{
			net->family = 4;
			maxbits = 32;
		}
		else if (inet_pton(AF_INET6, tok, net->addr) == 1)
		{
			net->family = 6;
			maxbits = 128;
		}
		else
		{
			*err = psprintf("\"%s\" is not an IP address", tok);
			free(list);
			return NULL;
		}
		net->bits = maxbits;
		if (slash)
		{
			char	   *bend;
			long		bits = strtol(slash + 1, &bend, 10);

			if (slash[1] == '\0' || *bend != '\0' || bits < 0 || bits > maxbits)
			{
				*err = psprintf("invalid prefix length \"%s\" for %s", slash + 1, tok);
				free(list);
				return NULL;
			}
			net->bits = (int) bits;
		}
		list->n++;
	}
	return list;
}

static bool
check_networks(char **newval, void **extra, GucSource source)
{
	char	   *err = NULL;
	NetList    *list = parse_networks(*newval, &err);

	if (list == NULL)
	{
		GUC_check_errdetail("%s", err);
		GUC_check_errhint("Use comma-separated CIDR networks, e.g. 127.0.0.0/8, ::1/128.");
		return false;
	}
	*extra = list;
	return true;
}

static void
assign_networks(const char *newval, void *extra)
{
	allowed = (NetList *) extra;
}

/*
 * Defined whenever the library loads: SHOW works everywhere, only the worker uses it.
 */
void
axme_ssrf_define_guc(void)
{
	DefineCustomStringVariable("axme.http_allowed_networks",
							   "Non-public networks the delivery worker may connect to.",
							   "Comma-separated CIDRs such as 10.1.0.0/16, 127.0.0.0/8. By default "
							   "only public (global unicast) addresses are reached.",
							   &axme_http_allowed_networks,
							   "",
							   PGC_SIGHUP, 0,
							   check_networks, assign_networks, NULL);
}
