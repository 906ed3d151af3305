/*
 * validate.c: the format rules of agent addresses and intent types (REFERENCE.md section 1).
 *
 * One implementation serves the C send path and, through axme._valid_address(), the SQL
 * functions, so the rule cannot drift between them.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "axme.h"

PG_FUNCTION_INFO_V1(axme_valid_address);

#define ADDRESS_PREFIX "agent://"

static bool
is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/*
 * A segment of len bytes: min..max characters, each alphanumeric or one of `extra`, starting and
 * ending alphanumeric.
 */
static bool
valid_segment(const char *s, size_t len, size_t min, size_t max, const char *extra)
{
	if (len < min || len > max)
		return false;
	if (!is_lower_alnum(s[0]) || !is_lower_alnum(s[len - 1]))
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (!is_lower_alnum(s[i]) && (s[i] == '\0' || strchr(extra, s[i]) == NULL))
			return false;
	}
	return true;
}

/*
 * agent://org/workspace/name: org and workspace 3..63 characters of [a-z0-9-], name 2..63 of
 * [a-z0-9._-]; every segment starts and ends with a letter or digit.
 */
bool
axme_address_is_valid(const char *s, size_t len)
{
	const char *org,
			   *ws,
			   *name,
			   *end = s + len;
	const char *slash;

	if (len < strlen(ADDRESS_PREFIX) || strncmp(s, ADDRESS_PREFIX, strlen(ADDRESS_PREFIX)) != 0)
		return false;
	org = s + strlen(ADDRESS_PREFIX);
	slash = memchr(org, '/', end - org);
	if (slash == NULL)
		return false;
	ws = slash + 1;
	if (!valid_segment(org, slash - org, 3, 63, "-"))
		return false;
	slash = memchr(ws, '/', end - ws);
	if (slash == NULL)
		return false;
	name = slash + 1;
	if (!valid_segment(ws, slash - ws, 3, 63, "-"))
		return false;
	return valid_segment(name, end - name, 2, 63, "._-");
}

/*
 * ^[a-z0-9_]+(\.[a-z0-9_]+)+\.v[0-9]+$, at most 255 bytes: dotted lower-case segments, at least
 * two before the version segment.
 */
bool
axme_intent_type_is_valid(const char *s, size_t len)
{
	int			segments = 1;
	size_t		seglen = 0;
	size_t		last;

	if (len == 0 || len > 255)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] == '.')
		{
			if (seglen == 0)
				return false;
			segments++;
			seglen = 0;
		}
		else if (is_lower_alnum(s[i]) || s[i] == '_')
			seglen++;
		else
			return false;
	}
	if (seglen < 2 || segments < 3)
		return false;
	last = len - seglen;
	if (s[last] != 'v')
		return false;
	for (size_t i = last + 1; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
	}
	return true;
}

/*
 * Raise 22023 naming the argument unless value is a valid agent address.  value may be NULL
 * (then the error says the argument must not be null).
 */
void
axme_check_address(const char *value, const char *argname)
{
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" must not be null", argname)));
	if (!axme_address_is_valid(value, strlen(value)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid agent address in \"%s\": \"%.300s\"", argname, value),
				 errhint("Use agent://org/workspace/name: org and workspace 3..63 characters of "
						 "[a-z0-9-], name 2..63 characters of [a-z0-9._-], starting and ending "
						 "with a letter or digit.")));
}

/*
 * axme._valid_address(address text) RETURNS boolean (STRICT)
 */
Datum
axme_valid_address(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(axme_address_is_valid(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)));
}
