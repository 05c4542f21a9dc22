-- The paths of a finished, server-seeded simulation (NULL otherwise): the
-- committer stands only on such a run of at least
-- `simulation.min_evidence_paths` paths.
ALTER TABLE simulations ADD COLUMN evidence_paths BIGINT;
CREATE INDEX simulations_evidence ON simulations (tenant, model_id, model_version, evidence_paths);
