-- Types and validation shared by every concern: the status domains, agent address and interval
-- checks, JSON helpers, and the retry delay (backoff with jitter, computed in C: src/backoff.c).

CREATE FUNCTION axme._valid_address(address text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'axme_valid_address';
COMMENT ON FUNCTION axme._valid_address(text) IS
    'Private: true when address is a valid agent address, agent://org/workspace/name.';

CREATE FUNCTION axme._backoff_ms(base_ms bigint, max_ms bigint, failures integer) RETURNS bigint
    LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'axme_backoff_ms';
COMMENT ON FUNCTION axme._backoff_ms(bigint, bigint, integer) IS
    'Private: retry delay in milliseconds after the given number of failed attempts: '
    'exponential from base_ms, capped at max_ms, with jitter in the upper half.';

-- Statuses and waiting reasons as domains rather than table CHECKs: a domain's check is compiled
-- once per session, a table CHECK is re-parsed at the start of every INSERT (measured: 15 % of the
-- cost of send_intent).
CREATE DOMAIN axme.intent_status AS text
    CHECK (VALUE IN ('CREATED', 'SUBMITTED', 'DELIVERED', 'ACKNOWLEDGED', 'IN_PROGRESS', 'WAITING',
                     'COMPLETED', 'FAILED', 'CANCELED', 'TIMED_OUT'));
COMMENT ON DOMAIN axme.intent_status IS 'An intent status: CREATED, SUBMITTED, DELIVERED, ACKNOWLEDGED, IN_PROGRESS, WAITING, COMPLETED, FAILED, CANCELED or TIMED_OUT.';

CREATE DOMAIN axme.waiting_reason AS text
    CHECK (VALUE IN ('WAITING_FOR_HUMAN', 'WAITING_FOR_TOOL', 'WAITING_FOR_AGENT', 'WAITING_FOR_TIME'));
COMMENT ON DOMAIN axme.waiting_reason IS 'Why a WAITING intent waits.';

-- An agent address: agent://org/workspace/name, org and workspace 3..63 characters of [a-z0-9-],
-- name 2..63 of [a-z0-9._-].  Raises 22023 naming the argument.
CREATE FUNCTION axme._check_address(address text, argname text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF address IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', argname USING ERRCODE = '22023';
    END IF;
    IF NOT axme._valid_address(address) THEN
        RAISE EXCEPTION 'invalid agent address in "%": "%"', argname, left(address, 300)
            USING ERRCODE = '22023',
                  HINT = 'Use agent://org/workspace/name: org and workspace 3..63 characters of '
                         '[a-z0-9-], name 2..63 characters of [a-z0-9._-], starting and ending '
                         'with a letter or digit.';
    END IF;
    RETURN address;
END $$;

-- A lease, timeout or grace interval within [lo, hi]; raises 22023 naming the argument.  Every
-- interval argument of a public function goes through here (wait_for checks its own in C) before
-- it is added to a timestamp: an unbounded one ('178000000 years') would overflow the addition
-- and fail with 22008 naming nothing.
CREATE FUNCTION axme._check_interval(value interval, argname text, lo interval, hi interval)
RETURNS interval LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', argname USING ERRCODE = '22023';
    END IF;
    IF value < lo OR value > hi THEN
        RAISE EXCEPTION 'argument "%" must be between % and %, got %', argname, lo, hi, value
            USING ERRCODE = '22023';
    END IF;
    RETURN value;
END $$;

-- Integer option/field from a jsonb value, within [lo, hi]; raises 22023 naming the field.
CREATE FUNCTION axme._jsonb_int(value jsonb, field text, lo bigint, hi bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    n numeric;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'number' THEN
        RAISE EXCEPTION '"%" must be an integer, got %', field, jsonb_typeof(value)
            USING ERRCODE = '22023';
    END IF;
    n := value::numeric;
    -- 3.0 is refused too: its text form is read later with ::integer, which cannot parse it
    IF value::text !~ '^-?[0-9]+$' OR n < lo OR n > hi THEN
        RAISE EXCEPTION '"%" must be an integer between % and %, got %', field, lo, hi, n
            USING ERRCODE = '22023';
    END IF;
    RETURN n::bigint;
END $$;

-- Deep merge of agent options: nested objects merge, a JSON null removes the key.
CREATE FUNCTION axme._jsonb_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, v) FILTER (WHERE v IS NOT NULL), '{}')
    FROM (
        SELECT k,
               CASE WHEN bv IS NULL THEN av
                    WHEN jsonb_typeof(bv) = 'null' THEN NULL
                    WHEN jsonb_typeof(av) = 'object' AND jsonb_typeof(bv) = 'object'
                        THEN axme._jsonb_merge(av, bv)
                    ELSE bv END AS v
        FROM (SELECT coalesce(x.key, y.key) AS k, x.value AS av, y.value AS bv
              FROM jsonb_each(a) x FULL JOIN jsonb_each(b) y ON x.key = y.key) s
    ) t
$$;

-- Whether a JSON value has a JSON Schema basic type.
CREATE FUNCTION axme._json_has_type(v jsonb, t text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE t
        WHEN 'integer' THEN jsonb_typeof(v) = 'number' AND v::text::numeric = trunc(v::text::numeric)
        ELSE jsonb_typeof(v) = t END
$$;
COMMENT ON FUNCTION axme._json_has_type(jsonb, text) IS
    'Private: whether a JSON value has a JSON Schema basic type (integer: a number without fraction).';

-- Add the counts of b to a (both {"table": n}).
CREATE FUNCTION axme._add_counts(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, coalesce((a->>k)::bigint, 0) + coalesce((b->>k)::bigint, 0)), '{}')
    FROM (SELECT jsonb_object_keys(a) UNION SELECT jsonb_object_keys(b)) s(k)
$$;
COMMENT ON FUNCTION axme._add_counts(jsonb, jsonb) IS
    'Private: add two {"table": count} objects key by key.';
