-- Schema for the realmgate FastAPI + RLS example.
--
-- Run it once per database as the role that owns the tables (a migration role or the
-- database owner), NOT as the role the application connects with:
--
--   psql -v ON_ERROR_STOP=1 -d qa -f examples/fastapi/schema.sql
--
-- Tenant isolation lives in PostgreSQL, not in the application: every row carries its
-- tenant_id, row-level security compares it with the transaction-local setting
-- `app.current_tenant`, and the application connects as `qa_app`, a role that neither owns
-- the table nor may bypass RLS. A request that forgets to set the tenant therefore sees
-- nothing and can write nothing, instead of seeing everything.

-- The application's login role. Roles are cluster-wide, so this is idempotent and safe when
-- two migrations race (a concurrent CREATE ROLE fails with unique_violation, not
-- duplicate_object). Give it a password out of band (ALTER ROLE qa_app PASSWORD ...) where
-- connections are not trusted.
DO $$
BEGIN
    CREATE ROLE qa_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- A pre-existing qa_app with superuser or BYPASSRLS would silently defeat every policy below.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qa_app' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role qa_app must not be a superuser or have BYPASSRLS';
    END IF;
END
$$;

CREATE TABLE calls (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  text        NOT NULL CHECK (tenant_id <> ''),
    owner_id   text        NOT NULL CHECK (owner_id <> ''),
    subject    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every query is filtered by tenant (RLS) and `own`-scope queries also by owner.
CREATE INDEX calls_tenant_owner_idx ON calls (tenant_id, owner_id);

-- ENABLE turns the policies on; FORCE applies them to the table owner too (superusers and
-- BYPASSRLS roles are still exempt, hence the check above and the separate qa_app role).
ALTER TABLE calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE calls FORCE ROW LEVEL SECURITY;

-- `current_setting(..., true)` is NULL when the setting was never made and '' after a
-- transaction-local value expired; neither equals a tenant id, so both see no rows.
-- WITH CHECK makes inserts and updates of another tenant's rows fail with
-- "new row violates row-level security policy".
CREATE POLICY tenant_isolation ON calls
    AS PERMISSIVE
    FOR ALL
    TO PUBLIC
    USING (tenant_id = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id = current_setting('app.current_tenant', true));

-- Only what the application needs: read and create calls. No UPDATE/DELETE, no DDL.
REVOKE ALL ON calls FROM PUBLIC;
GRANT SELECT, INSERT ON calls TO qa_app;
