/*
 * backoff.c: how long a failed attempt waits before the next one.
 *
 * Exponential growth from a base delay, capped, with jitter in the upper half of the window
 * ("equal jitter"): the delay is never below half the exponential value, so retries are always
 * spaced, and receivers are not hit in lock-step.  Randomness comes from pg_prng.
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"

#include "axme.h"

PG_FUNCTION_INFO_V1(axme_backoff_ms);

/*
 * The delay in milliseconds after `failures` failed attempts (1 for the first):
 * d = min(max_ms, base_ms * 2^(failures-1)), returned uniformly from [d/2, d].
 * Inputs must be positive; failures below 1 count as 1.
 */
int64
axme_backoff(int64 base_ms, int64 max_ms, int failures)
{
	int64		d = base_ms;

	if (base_ms < 1)
		base_ms = d = 1;
	if (max_ms < base_ms)
		max_ms = base_ms;
	for (int i = 1; i < failures && d < max_ms; i++)
		d = d > max_ms / 2 ? max_ms : d * 2;	/* never past max_ms, so never overflowing */
	if (d > max_ms)
		d = max_ms;
	return d / 2 + (int64) (pg_prng_double(&pg_global_prng_state) * (double) (d - d / 2));
}

/*
 * axme._backoff_ms(base_ms bigint, max_ms bigint, failures integer) RETURNS bigint
 */
Datum
axme_backoff_ms(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(axme_backoff(PG_GETARG_INT64(0), PG_GETARG_INT64(1), PG_GETARG_INT32(2)));
}
