/*
 * url.c: endpoint URL syntax, as libcurl (which sends the requests) reads it.
 *
 * register_agent refuses an http agent's endpoint_url that libcurl cannot parse, or whose host is
 * empty or malformed (an unclosed IPv6 bracket such as http://[::1, a bad port), instead of
 * storing it and failing every delivery later.  And the TLS file options: PEM contents, or files
 * inside axme.tls_files_directory only.
 */
#include "postgres.h"

#include <stdlib.h>
#include <curl/curl.h>

#include "fmgr.h"
#include "utils/builtins.h"

#include "axme.h"

PG_FUNCTION_INFO_V1(axme_url_problem);

/*
 * axme._url_problem(url text) RETURNS text: NULL when libcurl parses url with a non-empty host,
 * else libcurl's reason (e.g. "Bad IPv6 address").  STRICT.
 */
Datum
axme_url_problem(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CURLU	   *h = curl_url();
	CURLUcode	rc;
	char	   *host = NULL;
	char	   *problem = NULL;

	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory parsing a URL")));
	rc = curl_url_set(h, CURLUPART_URL, url, 0);
	if (rc != CURLUE_OK)
		problem = pstrdup(curl_url_strerror(rc));
	else if (curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK || host == NULL || host[0] == '\0')
		problem = pstrdup("No host part in the URL");
	if (host != NULL)
		curl_free(host);
	curl_url_cleanup(h);
	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * Whether value (an agent option ca_file, client_cert_file or client_key_file) may be read as a
 * file: a PEM text (starts with "-----BEGIN ") is no file and is always fine.  A path must lie
 * inside axme.tls_files_directory (set by the administrator in postgresql.conf; empty: no paths
 * at all), lexically (absolute, no "." or ".." component) and, once the file exists, after
 * resolving symbolic links.  The worker reads these files as the server's OS user, so a path
 * elsewhere could read any file that user can.  Returns NULL when allowed, else why not
 * (palloc'd).  must_exist: a missing file is refused too (at delivery; at registration it may be
 * provisioned later).
 */
char *
axme_tls_file_problem(const char *value, bool must_exist)
{
	const char *dir = axme_tls_files_directory;
	size_t		dlen;
	size_t		vlen;
	char	   *real_dir;
	char	   *real_file;
	char	   *problem = NULL;

	if (strncmp(value, "-----BEGIN ", 11) == 0)
		return NULL;
	if (dir == NULL || dir[0] == '\0')
		return psprintf("file paths are not allowed: axme.tls_files_directory is not set");
	if (dir[0] != '/')
		return psprintf("axme.tls_files_directory \"%s\" is not an absolute path", dir);
	dlen = strlen(dir);
	while (dlen > 1 && dir[dlen - 1] == '/')
		dlen--;
	vlen = strlen(value);
	if (value[0] != '/' || vlen <= dlen + 1 || strncmp(value, dir, dlen) != 0 ||
		(value[dlen] != '/' && dlen > 1) ||
		strstr(value, "/./") != NULL || strstr(value, "/../") != NULL || strstr(value, "//") != NULL ||
		(vlen >= 2 && strcmp(value + vlen - 2, "/.") == 0) ||
		(vlen >= 3 && strcmp(value + vlen - 3, "/..") == 0))
		return psprintf("\"%s\" is not a file inside axme.tls_files_directory (%s)", value, dir);
	/* realpath(p, NULL) mallocs (a MAXPGPATH buffer would be below PATH_MAX) */
	real_file = realpath(value, NULL);
	if (real_file == NULL)
		return must_exist ? psprintf("could not open \"%s\": %m", value) : NULL;
	real_dir = realpath(dir, NULL);
	if (real_dir == NULL)
		problem = psprintf("axme.tls_files_directory \"%s\": %m", dir);
	else
	{
		dlen = strlen(real_dir);
		if (strncmp(real_file, real_dir, dlen) != 0 ||
			(real_file[dlen] != '/' && real_dir[dlen - 1] != '/'))
			problem = psprintf("\"%s\" leads outside axme.tls_files_directory (%s)", value, dir);
	}
	free(real_file);
	free(real_dir);
	return problem;
}

PG_FUNCTION_INFO_V1(axme_tls_file_problem_fn);

/*
 * axme._tls_file_problem(value text) RETURNS text: NULL when value is PEM contents or a file path
 * allowed by axme.tls_files_directory, else why not.  STRICT.
 */
Datum
axme_tls_file_problem_fn(PG_FUNCTION_ARGS)
{
	char	   *problem = axme_tls_file_problem(text_to_cstring(PG_GETARG_TEXT_PP(0)), false);

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
