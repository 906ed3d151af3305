/*
 * schema.c: what the C code needs of the installed SQL: prepared plans kept for the life of the
 * backend, probes for tables and columns added by later releases, and the extension lock that
 * keeps a worker transaction from deadlocking with DROP EXTENSION.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"

#include "axme.h"

/*
 * Prepare a statement through SPI and keep its plan for the life of the backend (SPI_keepplan).
 * Must be called between SPI_connect and SPI_finish.  "Cannot happen" errors only: the SQL is
 * ours.
 */
SPIPlanPtr
axme_keep_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Whether table axme.<relname> exists now, and when colname is not NULL, whether it has that
 * column.  The library of a newer release may run against the SQL of an older one until ALTER
 * EXTENSION axme UPDATE; the few statements that need a table or column added since check with
 * this (syscache lookups, cheap enough for every call).
 */
bool
axme_schema_has(const char *relname, const char *colname)
{
	Oid			nsp = get_namespace_oid("axme", true);
	Oid			rel;

	if (!OidIsValid(nsp))
		return false;
	rel = get_relname_relid(relname, nsp);
	return OidIsValid(rel) && (colname == NULL || get_attnum(rel, colname) != InvalidAttrNumber);
}

/*
 * The type of column colname of table axme.<relname>, InvalidOid when there is none (the SQL of
 * an older release: sender_role and db_role became regrole in 0.4.0).
 */
Oid
axme_schema_column_type(const char *relname, const char *colname)
{
	Oid			nsp = get_namespace_oid("axme", true);
	Oid			rel;
	AttrNumber	att;

	if (!OidIsValid(nsp))
		return InvalidOid;
	rel = get_relname_relid(relname, nsp);
	if (!OidIsValid(rel))
		return InvalidOid;
	att = get_attnum(rel, colname);
	return att == InvalidAttrNumber ? InvalidOid : get_atttype(rel, att);
}

/*
 * In a background worker's transaction, before it touches axme's tables: whether axme is
 * installed in this database, taking a share lock on the extension object when it is.
 *
 * DROP EXTENSION locks the extension object exclusively before it drops any member, so with this
 * lock a worker transaction either runs wholly before the drop or starts after it (and finds no
 * extension), instead of holding one of axme's tables while the drop holds another: a deadlock
 * that would fail the user's DROP EXTENSION.  Needs a transaction; the lock is held to its end.
 */
bool
axme_lock_extension(void)
{
	Oid			ext = get_extension_oid("axme", true);

	if (!OidIsValid(ext))
		return false;
	LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
	/* dropped while we waited for the lock?  (locking accepted the invalidations) */
	return OidIsValid(get_extension_oid("axme", true));
}
