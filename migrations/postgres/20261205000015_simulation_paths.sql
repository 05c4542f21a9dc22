-- The paths of a simulation job, beside its body: a tenant's paths in the
-- last hour are summed for its quota (`max_simulation_paths_per_hour`).
ALTER TABLE simulations ADD COLUMN paths BIGINT;
