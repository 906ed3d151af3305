/*
 * delivery.h: declarations shared by the files of the http delivery pipeline, run by the delivery
 * worker (delivery_worker.c): claim and record (claim.c), requests (http.c), signing (sign.c),
 * the SSRF check (ssrf.c).
 */
#ifndef AXME_DELIVERY_H
#define AXME_DELIVERY_H

#include <sys/socket.h>

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

/* bytes of a response body kept to parse a status body / stored as the attempt's excerpt */
#define AXME_RESPONSE_CAP 65536
#define AXME_EXCERPT_CAP 1024

/* GUC (ssrf.c; the others are in axme.h) */
extern char *axme_http_allowed_networks;

/*
 * One claimed delivery: what to send (filled by claim.c from axme._http_claim), the request
 * state (http.c) and its outcome (http.c, recorded by claim.c).  Allocated in the worker's
 * delivery context and freed once recorded.
 */
typedef struct AxmeDelivery
{
	char		intent_id[37];
	int			attempt;
	int64		agent_id;
	char	   *url;
	char	   *body;
	int			body_len;
	List	   *secrets;		/* of char * (whsec_...) */
	List	   *headers;		/* of char * ("name: value") */
	int			timeout_ms;
	char	   *ca_file;
	char	   *client_cert;	/* mTLS (client_cert_file / client_key_file options), or NULL */
	char	   *client_key;

	/* request */
	void	   *easy;			/* CURL * */
	void	   *header_list;	/* struct curl_slist * */
	TimestampTz started_at;
	StringInfoData response;	/* up to AXME_RESPONSE_CAP bytes */
	size_t		response_total;
	bool		ssrf_blocked;
	char		ssrf_detail[160];
	char		errbuf[256];
	char		tls_refused[256];	/* a TLS file option not allowed now: why, else "" */

	/* outcome */
	int			http_status;	/* 0: no response */
	const char *error_class;	/* NULL: 2xx */
	char	   *error;
	int64		retry_after_ms; /* -1: none */
	double		duration_ms;
} AxmeDelivery;

/* claim.c */
extern bool axme_queue_ready(bool full_check);
extern List *axme_queue_claim(int max_total, int nbusy, int64 *busy_agents, int *busy_counts,
							  TimestampTz *next_due, bool *ext_gone);
#define AXME_RECORD_OK 1
#define AXME_RECORD_GONE 0
#define AXME_RECORD_FAILED (-1)
extern int	axme_queue_record(List *done);

/* http.c */
extern void axme_http_init(void);
extern void axme_http_start(AxmeDelivery *d);
extern int	axme_http_in_flight(void);
extern int	axme_http_busy(int64 **agents, int **counts);
extern List *axme_http_collect(void);
extern long axme_http_wait(long max_timeout_ms, bool *latch_set);
extern void axme_http_free(AxmeDelivery *d);

/* sign.c */
extern char *axme_sign(const char *msg_id, int64 timestamp, const char *body, int body_len,
					   List *secrets);

/* ssrf.c */
extern void axme_ssrf_define_guc(void);
extern bool axme_ssrf_check(const struct sockaddr *sa, char *why, size_t whylen);

#endif							/* AXME_DELIVERY_H */
