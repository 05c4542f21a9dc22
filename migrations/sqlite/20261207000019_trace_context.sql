-- Tracing (issue 23): the span that raised an event (W3C `traceparent`,
-- then a newline and `tracestate` when there is one), so that the webhooks
-- it causes continue its trace. NULL while no spans are exported.
ALTER TABLE outbox_events ADD COLUMN trace_context TEXT;
ALTER TABLE notifications ADD COLUMN trace_context TEXT;
