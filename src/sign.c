/*
 * sign.c: Standard Webhooks signatures.
 *
 * The signed content is "{webhook-id}.{webhook-timestamp}.{body}", exactly the bytes sent; the
 * HMAC-SHA256 key is the base64-DECODED part of the agent's "whsec_..." secret (not the string).
 * One "v1,<base64>" entry per valid secret, space separated.  Also makes new secrets.
 */
#include "postgres.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/base64.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "port.h"
#include "utils/builtins.h"

#include "delivery.h"

PG_FUNCTION_INFO_V1(axme_random_secret);

#define SECRET_PREFIX "whsec_"
#define SECRET_BYTES 32

/*
 * The webhook-signature header value for one message, palloc'd in the current context.
 * Secrets that do not decode are skipped (register_agent validates them, so none should).
 */
char *
axme_sign(const char *msg_id, int64 timestamp, const char *body, int body_len, List *secrets)
{
	StringInfoData content;
	StringInfoData out;
	ListCell   *lc;

	initStringInfo(&content);
	appendStringInfo(&content, "%s." INT64_FORMAT ".", msg_id, timestamp);
	appendBinaryStringInfo(&content, body, body_len);

	initStringInfo(&out);
	foreach(lc, secrets)
	{
		const char *secret = lfirst(lc);
		const char *b64 = secret;
		int			b64len;
		char	   *key;
		int			keylen;
		unsigned char mac[EVP_MAX_MD_SIZE];
		unsigned int maclen = 0;
		char		encoded[128];
		int			enclen;

		if (strncmp(b64, SECRET_PREFIX, strlen(SECRET_PREFIX)) == 0)
			b64 += strlen(SECRET_PREFIX);
		b64len = strlen(b64);
		key = palloc(pg_b64_dec_len(b64len) + 1);
		keylen = pg_b64_decode(b64, b64len, key, pg_b64_dec_len(b64len));
		if (keylen <= 0)
		{
			pfree(key);
			continue;
		}
		if (HMAC(EVP_sha256(), key, keylen, (unsigned char *) content.data, content.len,
				 mac, &maclen) == NULL)
			elog(ERROR, "HMAC-SHA256 failed");
		pfree(key);
		enclen = pg_b64_encode((char *) mac, (int) maclen, encoded, sizeof(encoded) - 1);
		if (enclen < 0)
			elog(ERROR, "base64 encoding of a signature failed");
		encoded[enclen] = '\0';
		if (out.len > 0)
			appendStringInfoChar(&out, ' ');
		appendStringInfo(&out, "v1,%s", encoded);
	}
	pfree(content.data);
	return out.data;
}

/*
 * axme._random_secret() RETURNS text: "whsec_" + base64 of 32 strong random bytes.
 */
Datum
axme_random_secret(PG_FUNCTION_ARGS)
{
	char		raw[SECRET_BYTES];
	char		encoded[128];
	int			len;

	if (!pg_strong_random(raw, sizeof(raw)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes for a secret")));
	len = pg_b64_encode(raw, sizeof(raw), encoded, sizeof(encoded) - 1);
	if (len < 0)
		elog(ERROR, "base64 encoding of a secret failed");
	encoded[len] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(psprintf(SECRET_PREFIX "%s", encoded)));
}
