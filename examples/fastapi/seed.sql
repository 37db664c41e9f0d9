-- Demo rows for two tenants. Run as the table owner after schema.sql; FORCE ROW LEVEL
-- SECURITY applies to the owner too, so each tenant's rows are inserted with that tenant set.
--
--   psql -v ON_ERROR_STOP=1 -d qa -f examples/fastapi/seed.sql

BEGIN;
SELECT set_config('app.current_tenant', 'acme', true);
INSERT INTO calls (tenant_id, owner_id, subject) VALUES
    ('acme', 'alice', 'acme: alice onboarding call'),
    ('acme', 'alice', 'acme: alice renewal call'),
    ('acme', 'bob',   'acme: bob support call');
COMMIT;

BEGIN;
SELECT set_config('app.current_tenant', 'globex', true);
INSERT INTO calls (tenant_id, owner_id, subject) VALUES
    ('globex', 'alice', 'globex: alice escalation call'),
    ('globex', 'gina',  'globex: gina sales call');
COMMIT;
