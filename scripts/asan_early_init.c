/*
 * asan_early_init.c: a helper preloaded after libasan by scripts/sanitize.sh.  Not part of axme;
 * never installed.
 *
 * A preloaded libasan initialises lazily, at the first allocation, and some libraries that
 * Debian's postgres and psql link run library constructors before that: libgpg-error calls
 * bindtextdomain(), libp11-kit newlocale().  Those allocate while holding a glibc lock (gettext's,
 * the locale lock); the allocation initialises ASan, whose start-up goes through dlerror() ->
 * dcgettext(), which takes and releases the same lock, and the lock's state is lost: the next
 * bindtextdomain() (postgres's main) or freelocale() (psql's exit) waits forever.  These wrappers
 * make sure ASan is initialised before the lock is taken, then call glibc's function.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <locale.h>
#include <stdlib.h>

static void
asan_init_now(void)
{
	void	   *volatile p = malloc(1); /* volatile: the pair is not optimised away */

	free(p);
}

#define REAL(name) \
	static __typeof__(name) *real; \
	asan_init_now(); \
	if (real == NULL) \
		real = (__typeof__(name) *) dlsym(RTLD_NEXT, #name)

char	   *bindtextdomain(const char *domainname, const char *dirname);
char	   *textdomain(const char *domainname);

char *
bindtextdomain(const char *domainname, const char *dirname)
{
	REAL(bindtextdomain);
	return real(domainname, dirname);
}

char *
textdomain(const char *domainname)
{
	REAL(textdomain);
	return real(domainname);
}

locale_t
newlocale(int category_mask, const char *locale, locale_t base)
{
	REAL(newlocale);
	return real(category_mask, locale, base);
}

char *
setlocale(int category, const char *locale)
{
	REAL(setlocale);
	return real(category, locale);
}
