/*
 * trace.c: W3C Trace Context (https://www.w3.org/TR/trace-context/) for intents: the checks of
 * the traceparent and tracestate fields an intent may carry.  send_intent stores them as given;
 * the http worker sends them as headers on every attempt, poll returns traceparent.
 */
#include "postgres.h"

#include "axme.h"

static bool
is_lower_hex(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static bool
all_zero(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (s[i] != '0')
			return false;
	return true;
}

/*
 * A valid traceparent: version-traceid-parentid-flags, lower-case hex of 2, 32, 16 and 2 digits;
 * version ff is invalid, trace id and parent id must not be all zeros; version 00 has exactly
 * these four fields (55 characters), a later version may add fields after a '-' (at most 512
 * characters in all).
 */
bool
axme_traceparent_is_valid(const char *s)
{
	size_t		len = strlen(s);

	if (len < 55 || len > 512)
		return false;
	if (!is_lower_hex(s, 2) || s[2] != '-' || !is_lower_hex(s + 3, 32) || s[35] != '-' ||
		!is_lower_hex(s + 36, 16) || s[52] != '-' || !is_lower_hex(s + 53, 2))
		return false;
	if (strncmp(s, "ff", 2) == 0 || all_zero(s + 3, 32) || all_zero(s + 36, 16))
		return false;
	if (strncmp(s, "00", 2) == 0)
		return len == 55;
	return len == 55 || s[55] == '-';
}

/*
 * A valid tracestate: at most 512 characters of printable ASCII, at most 32 comma-separated
 * list members, each empty or key=value with a non-empty key and value.  (Vendors' keys and values
 * are not checked further: axme only carries the header.)
 */
bool
axme_tracestate_is_valid(const char *s)
{
	size_t		len = strlen(s);
	int			members = 1;
	const char *m = s;

	if (len > 512)
		return false;
	for (const char *p = s; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			return false;
	for (;;)
	{
		const char *end = strchr(m, ',');
		const char *eq;
		size_t		n = end ? (size_t) (end - m) : strlen(m);

		/* trim optional white space around a member */
		while (n > 0 && (*m == ' ' || *m == '\t'))
			m++, n--;
		while (n > 0 && (m[n - 1] == ' ' || m[n - 1] == '\t'))
			n--;
		if (n > 0)
		{
			eq = memchr(m, '=', n);
			if (eq == NULL || eq == m || eq == m + n - 1)
				return false;
		}
		if (end == NULL)
			break;
		m = end + 1;
		if (++members > 32)
			return false;
	}
	return true;
}
