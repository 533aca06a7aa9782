"""The Postgres path's atomic reservation and settlement (see ``apps.limits.counters``).

Every counter row a request touches is locked in one fixed order (scopes sorted, then budget,
concurrency, requests, tokens), so concurrent calls serialise per row and never deadlock.
"""

from django.db import migrations

LOCK = """
CREATE OR REPLACE FUNCTION switchyard_limits_lock(p_scope text, p_kind text, p_window bigint, p_expires bigint)
RETURNS limits_counter LANGUAGE plpgsql AS $$
DECLARE
    found_row limits_counter;
BEGIN
    SELECT * INTO found_row FROM limits_counter
     WHERE scope = p_scope AND kind = p_kind AND window_id = p_window FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO limits_counter (scope, kind, window_id, used, reserved, expires_ms)
        VALUES (p_scope, p_kind, p_window, 0, 0, p_expires)
        ON CONFLICT (scope, kind, window_id) DO NOTHING;
        SELECT * INTO found_row FROM limits_counter
         WHERE scope = p_scope AND kind = p_kind AND window_id = p_window FOR UPDATE;
    END IF;
    RETURN found_row;
END $$;
"""

RESERVE = """
CREATE OR REPLACE FUNCTION switchyard_limits_reserve(
    p_now bigint, p_request text, p_lease_until bigint, p_window bigint, p_window_expires bigint,
    p_tokens bigint, p_cost bigint, p_scopes text[], p_rpm bigint[], p_tpm bigint[], p_budget bigint[],
    p_conc bigint[], p_period bigint[], p_period_expires bigint[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_scopes, 1), 0);
    denied int := 0;
    denied_kind int := 0;
    c limits_counter;
    req bigint[] := '{}';
    tok bigint[] := '{}';
    spent bigint[] := '{}';
    res bigint[] := '{}';
    inflight bigint[] := '{}';
    freed bigint;
    result bigint[];
BEGIN
    FOR i IN 1..n LOOP
        req[i] := 0; tok[i] := 0; spent[i] := 0; res[i] := 0; inflight[i] := 0;
        IF p_budget[i] >= 0 THEN
            c := switchyard_limits_lock(p_scopes[i], 'b', p_period[i], nullif(p_period_expires[i], -1));
            -- Reservations whose request never settled (its process died) are given back.
            WITH gone AS (
                DELETE FROM limits_lease WHERE scope = p_scopes[i] AND kind = 'b' AND window_id = p_period[i]
                   AND expires_ms <= p_now RETURNING cost)
            SELECT coalesce(sum(cost), 0) INTO freed FROM gone;
            IF freed > 0 THEN
                UPDATE limits_counter SET reserved = greatest(reserved - freed, 0)
                 WHERE scope = p_scopes[i] AND kind = 'b' AND window_id = p_period[i];
                c.reserved := greatest(c.reserved - freed, 0);
            END IF;
            spent[i] := c.used; res[i] := c.reserved;
        END IF;
        IF p_conc[i] >= 0 THEN
            PERFORM switchyard_limits_lock(p_scopes[i], 'c', 0, NULL);
            DELETE FROM limits_lease WHERE scope = p_scopes[i] AND kind = 'c' AND expires_ms <= p_now;
            inflight[i] := (SELECT count(*) FROM limits_lease WHERE scope = p_scopes[i] AND kind = 'c');
        END IF;
        IF p_rpm[i] >= 0 THEN
            c := switchyard_limits_lock(p_scopes[i], 'r', p_window, p_window_expires);
            req[i] := c.used;
        END IF;
        IF p_tpm[i] >= 0 THEN
            c := switchyard_limits_lock(p_scopes[i], 't', p_window, p_window_expires);
            tok[i] := c.used;
        END IF;
        IF denied = 0 THEN
            IF p_rpm[i] >= 0 AND req[i] >= p_rpm[i] THEN denied := i; denied_kind := 1;
            ELSIF p_tpm[i] >= 0 AND tok[i] >= p_tpm[i] THEN denied := i; denied_kind := 2;
            ELSIF p_budget[i] >= 0 AND spent[i] + res[i] >= p_budget[i] THEN denied := i; denied_kind := 3;
            ELSIF p_conc[i] >= 0 AND inflight[i] >= p_conc[i] THEN denied := i; denied_kind := 4;
            END IF;
        END IF;
    END LOOP;
    IF denied = 0 THEN
        FOR i IN 1..n LOOP
            IF p_budget[i] >= 0 THEN
                UPDATE limits_counter SET reserved = reserved + p_cost
                 WHERE scope = p_scopes[i] AND kind = 'b' AND window_id = p_period[i];
                INSERT INTO limits_lease (scope, kind, window_id, request_id, cost, expires_ms)
                VALUES (p_scopes[i], 'b', p_period[i], p_request, p_cost, p_lease_until);
                res[i] := res[i] + p_cost;
            END IF;
            IF p_conc[i] >= 0 THEN
                INSERT INTO limits_lease (scope, kind, window_id, request_id, cost, expires_ms)
                VALUES (p_scopes[i], 'c', 0, p_request, 0, p_lease_until);
                inflight[i] := inflight[i] + 1;
            END IF;
            IF p_rpm[i] >= 0 THEN
                UPDATE limits_counter SET used = used + 1
                 WHERE scope = p_scopes[i] AND kind = 'r' AND window_id = p_window;
                req[i] := req[i] + 1;
            END IF;
            IF p_tpm[i] >= 0 THEN
                UPDATE limits_counter SET used = used + p_tokens
                 WHERE scope = p_scopes[i] AND kind = 't' AND window_id = p_window;
                tok[i] := tok[i] + p_tokens;
            END IF;
        END LOOP;
    END IF;
    result := ARRAY[denied, denied_kind]::bigint[];
    FOR i IN 1..n LOOP
        result := result || ARRAY[req[i], tok[i], spent[i], res[i], inflight[i]];
    END LOOP;
    RETURN result;
END $$;
"""

SETTLE = """
CREATE OR REPLACE FUNCTION switchyard_limits_settle(
    p_request text, p_window bigint, p_tokens_delta bigint, p_reserved bigint, p_actual bigint,
    p_scopes text[], p_tpm bigint[], p_budget bigint[], p_conc bigint[], p_period bigint[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_scopes, 1), 0);
    result bigint[] := '{}';
    before bigint;
    after bigint;
    held bigint;
BEGIN
    FOR i IN 1..n LOOP
        before := NULL; after := NULL;
        IF p_budget[i] >= 0 THEN
            -- What this request still holds (nothing if its lease expired and was given back).
            held := NULL;
            PERFORM 1 FROM limits_counter  -- the counter row first, as reservations lock it
             WHERE scope = p_scopes[i] AND kind = 'b' AND window_id = p_period[i] FOR UPDATE;
            DELETE FROM limits_lease WHERE scope = p_scopes[i] AND kind = 'b' AND request_id = p_request
            RETURNING cost INTO held;
            UPDATE limits_counter SET used = used + p_actual, reserved = greatest(reserved - coalesce(held, 0), 0)
             WHERE scope = p_scopes[i] AND kind = 'b' AND window_id = p_period[i]
            RETURNING used - p_actual, used INTO before, after;
        END IF;
        IF p_tpm[i] >= 0 AND p_tokens_delta <> 0 THEN
            UPDATE limits_counter SET used = used + p_tokens_delta
             WHERE scope = p_scopes[i] AND kind = 't' AND window_id = p_window;
        END IF;
        IF p_conc[i] >= 0 THEN
            DELETE FROM limits_lease WHERE scope = p_scopes[i] AND kind = 'c' AND request_id = p_request;
        END IF;
        result := result || ARRAY[coalesce(before, -1), coalesce(after, -1)];
    END LOOP;
    RETURN result;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS switchyard_limits_settle(text, bigint, bigint, bigint, bigint, text[], bigint[], bigint[],
    bigint[], bigint[]);
DROP FUNCTION IF EXISTS switchyard_limits_reserve(bigint, text, bigint, bigint, bigint, bigint, bigint, text[],
    bigint[], bigint[], bigint[], bigint[], bigint[], bigint[]);
DROP FUNCTION IF EXISTS switchyard_limits_lock(text, text, bigint, bigint);
"""


class Migration(migrations.Migration):
    dependencies = [("limits", "0001_initial")]

    operations = [migrations.RunSQL(LOCK + RESERVE + SETTLE, DROP)]
