-- The agents' JSON bodies are rewritten on every write; lz4 compresses
-- them for a fraction of pglz's CPU (pglz showed in the saga benchmark's
-- profile). A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE sagas ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE value_models ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE simulations ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE commitments ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE plans ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE amplifications ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE agent_state ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available: bodies stay pglz-compressed';
END $$;
