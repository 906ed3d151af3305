/*
 * caller.c: who is calling, for the authorization checks of axme's SECURITY DEFINER functions.
 *
 * Public axme functions run as their owner (SECURITY DEFINER), so inside them current_user is the
 * owner, not the caller.  The caller is the role the session runs as at call time: the outer user
 * id (GetOuterUserId), which SET ROLE changes and SECURITY DEFINER does not.  Row-level security
 * policies, evaluated as whoever reads the table, use the current user id (GetUserId) instead.
 *
 * "Has role r" means has the privileges of r (directly, or through membership with INHERIT), as
 * PostgreSQL decides it for its own objects; superusers have every role.  An unknown or NULL role
 * name is held by superusers only (a dropped sender role is not an error).
 *
 * axme stores roles by OID (regrole columns): the regrole forms of the checks compare OIDs, so a
 * role created later under a dropped role's name never has the dropped role's rows.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "axme.h"

PG_FUNCTION_INFO_V1(axme_caller_fn);
PG_FUNCTION_INFO_V1(axme_caller_has_fn);
PG_FUNCTION_INFO_V1(axme_user_has_fn);
PG_FUNCTION_INFO_V1(axme_caller_has_oid_fn);
PG_FUNCTION_INFO_V1(axme_user_has_oid_fn);
PG_FUNCTION_INFO_V1(axme_caller_id_fn);
PG_FUNCTION_INFO_V1(axme_role_exists_fn);

static bool
role_has(Oid member, const char *role)
{
	Oid			roleid;

	if (superuser_arg(member))
		return true;
	if (role == NULL)
		return false;
	roleid = get_role_oid(role, true);
	return OidIsValid(roleid) && has_privs_of_role(member, roleid);
}

/*
 * Whether member has the privileges of the role with OID roleid: by OID, never by name.  A
 * dropped role's OID (or InvalidOid, 0) is held by superusers only.
 */
static bool
role_has_oid(Oid member, Oid roleid)
{
	if (superuser_arg(member))
		return true;
	return OidIsValid(roleid) && has_privs_of_role(member, roleid);
}

/*
 * The name of the calling role (the outer user id).
 */
char *
axme_caller_name(void)
{
	return GetUserNameFromId(GetOuterUserId(), false);
}

/*
 * True when the calling role has the privileges of role (see the file header).
 */
bool
axme_caller_has(const char *role)
{
	return role_has(GetOuterUserId(), role);
}

/*
 * Raise 42501 unless the caller may send: a superuser or a role with the privileges of
 * axme_sender or axme_admin.
 */
void
axme_check_caller_may_send(void)
{
	if (!axme_caller_has("axme_sender") && !axme_caller_has("axme_admin"))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to send intents: role \"%s\" is not a member of axme_sender",
						axme_caller_name()),
				 errhint("GRANT axme_sender TO %s;", quote_identifier(axme_caller_name()))));
}

/*
 * Raise 42501 unless the caller may name from_agent as the intent's sender: when from_agent is a
 * registered agent with a db_role, only roles that receive for it (have that role) and admins may
 * send as it.  An unregistered address, or an agent without db_role, is an unchecked label.
 * Must be called between SPI_connect and SPI_finish.
 */
void
axme_check_from_agent(const char *from_agent)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[1];
	Datum		d;
	bool		isnull;
	bool		by_oid;
	bool		has;
	char	   *role;

	if (from_agent == NULL)
		return;
	if (!axme_schema_has("agents", "db_role"))
		return;					/* SQL older than 0.3.0: no agent is mapped to a role */
	if (plan == NULL)
	{
		Oid			argtypes[1] = {TEXTOID};

		/* the role by OID (0.4.0: db_role is a regrole) and its name now, for the message */
		plan = axme_keep_plan("SELECT db_role, db_role::pg_catalog.text FROM axme.agents"
							  " WHERE address OPERATOR(pg_catalog.=) $1",
							  1, argtypes);
	}
	args[0] = CStringGetTextDatum(from_agent);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "from_agent lookup failed");
	if (SPI_processed == 0)
		return;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return;
	role = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	by_oid = SPI_gettypeid(SPI_tuptable->tupdesc, 1) == REGROLEOID;
	has = by_oid ? role_has_oid(GetOuterUserId(), DatumGetObjectId(d)) : axme_caller_has(role);
	if (!has && !axme_caller_has("axme_admin"))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to send as from_agent \"%s\": role \"%s\" does not receive for it",
						from_agent, axme_caller_name()),
				 errdetail("Agent \"%s\" is mapped to role \"%s\" (option db_role); only that role and "
						   "members of axme_admin may send in its name.", from_agent, role)));
}

/*
 * axme._caller() RETURNS text: the role the session runs as (current_user outside any SECURITY
 * DEFINER function; SET ROLE is honoured).
 */
Datum
axme_caller_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(axme_caller_name()));
}

/*
 * axme._caller_has(role text) RETURNS boolean: whether the calling role has the privileges of
 * role.  NULL or unknown role: true for superusers only.
 */
Datum
axme_caller_has_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(role_has(GetOuterUserId(),
							PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

/*
 * axme._user_has(role text) RETURNS boolean: whether the current user (the one row-level
 * security policies are evaluated for) has the privileges of role.  NULL or unknown role: true
 * for superusers only.
 */
Datum
axme_user_has_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(role_has(GetUserId(),
							PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0))));
}

/*
 * axme._caller_has(role regrole) RETURNS boolean: whether the calling role has the privileges of
 * the role with that OID.  NULL, 0 or a dropped role's OID: true for superusers only.
 */
Datum
axme_caller_has_oid_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(role_has_oid(GetOuterUserId(), PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0)));
}

/*
 * axme._user_has(role regrole) RETURNS boolean: the same for the current user (row-level
 * security policies).
 */
Datum
axme_user_has_oid_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(role_has_oid(GetUserId(), PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0)));
}

/*
 * axme._caller_id() RETURNS regrole: the calling role by OID (what sender_role and registered_by
 * store).
 */
Datum
axme_caller_id_fn(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(GetOuterUserId());
}

/*
 * axme._role_exists(role regrole) RETURNS boolean: whether a role with that OID exists now (a
 * syscache probe: cheap enough for every poll).  NULL or 0: false.
 */
Datum
axme_role_exists_fn(PG_FUNCTION_ARGS)
{
	Oid			roleid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);

	PG_RETURN_BOOL(OidIsValid(roleid) && SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(roleid)));
}

/*
 * axme._receipts_required() RETURNS boolean: whether a receiver's call without a receipt on a
 * handed-out intent is refused here: axme.require_receipts, except in axme's own background
 * workers (they act for the database, never as a stale receiver; a handler they run may call
 * complete for another intent).
 */
PG_FUNCTION_INFO_V1(axme_receipts_required);
Datum
axme_receipts_required(PG_FUNCTION_ARGS)
{
	if (MyBgworkerEntry != NULL && strcmp(MyBgworkerEntry->bgw_library_name, "axme") == 0)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(axme_require_receipts);
}
