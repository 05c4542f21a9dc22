-- Tenants (issue 21). Every row carries the tenant it belongs to; rows made
-- before tenants belong to `default`. The `id` of an agent's row is the
-- instance key (`Tenant::key`): a bare id for the default tenant (so no row
-- moves) and `tenant/id` for the others, unique across tenants.
CREATE TABLE tenants (
    name          TEXT   PRIMARY KEY,
    display_name  TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    -- Quotas: NULL takes the node's configured default.
    max_active_instances       BIGINT,
    max_simulation_paths_hour  BIGINT,
    max_models                 BIGINT
);
INSERT INTO tenants (name, display_name, created_at_ms) VALUES ('default', 'Default', 0);

ALTER TABLE agent_state ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE simulations ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE value_models ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE commitments ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE plans ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE amplifications ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE subscriptions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE notifications ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sagas ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE outbox_events ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE api_keys ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

-- Lists read one tenant's rows: the filter indexes lead with it.
DROP INDEX value_models_by_customer;
DROP INDEX value_models_by_industry;
DROP INDEX value_models_by_status;
DROP INDEX commitments_by_model;
DROP INDEX commitments_by_status;
DROP INDEX plans_by_status;
DROP INDEX plans_by_commitment;
DROP INDEX sagas_by_status;
CREATE INDEX value_models_by_tenant ON value_models (tenant, created_at_ms);
CREATE INDEX value_models_by_customer ON value_models (tenant, customer, created_at_ms);
CREATE INDEX value_models_by_industry ON value_models (tenant, industry, created_at_ms);
CREATE INDEX value_models_by_status ON value_models (tenant, status, created_at_ms);
CREATE INDEX commitments_by_tenant ON commitments (tenant, created_at_ms);
CREATE INDEX commitments_by_model ON commitments (tenant, model_id, created_at_ms);
CREATE INDEX commitments_by_status ON commitments (tenant, status, created_at_ms);
CREATE INDEX plans_by_tenant ON plans (tenant, created_at_ms);
CREATE INDEX plans_by_status ON plans (tenant, status, created_at_ms);
CREATE INDEX plans_by_commitment ON plans (tenant, commitment_id, created_at_ms);
CREATE INDEX sagas_by_tenant ON sagas (tenant, created_at_ms);
CREATE INDEX sagas_by_status ON sagas (tenant, status, created_at_ms);
CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant, created_at_ms);
CREATE INDEX simulations_by_tenant ON simulations (tenant, created_at_ms);
CREATE INDEX notifications_by_tenant ON notifications (tenant, updated_at_ms);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at_ms);
