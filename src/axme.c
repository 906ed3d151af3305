/*
 * axme.c: the module's entry point.
 *
 * _PG_init defines the settings (guc.c), registers the commit callbacks and, when preloading,
 * the shared memory hooks (doorbell.c), the utility hook (ddl.c) and the launcher (bgworker.c).  Without
 * shared_preload_libraries there is no shared memory and no worker: wait_for falls back to a
 * short re-check loop and nothing is delivered over http.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "axme.h"
#include "doorbell.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	axme_define_gucs();
	axme_doorbell_init();
	if (process_shared_preload_libraries_in_progress)
	{
		axme_ddl_init();
		axme_launcher_register();
	}
}
