//! W3C trace context, carried with every message while spans are exported.
//!
//! Off (no exporter set, the default) a message pays one relaxed load: no
//! context is read from the current span and none travels. On, the sender's
//! span context rides in the message header (and in the envelope between
//! nodes), and the handler's span becomes its child. Parsing and writing the
//! `traceparent`/`tracestate` pair is OpenTelemetry's own propagator.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Turns propagation on; the binary calls it once the OpenTelemetry layer
/// is installed.
pub fn enable_propagation() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (and contexts carried).
#[inline]
pub fn propagating() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// One span's place in a trace: trace id, span id, flags and vendor state.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceContext(SpanContext);

impl TraceContext {
    /// The current span's context, when propagating and the span is
    /// recorded by the OpenTelemetry layer.
    #[inline]
    pub fn current() -> Option<TraceContext> {
        if !propagating() {
            return None;
        }
        TraceContext::of(&tracing::Span::current())
    }

    /// `span`'s context (starting it, for the OpenTelemetry layer).
    pub fn of(span: &tracing::Span) -> Option<TraceContext> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context
            .is_valid()
            .then_some(TraceContext(span_context))
    }

    /// From the `traceparent` and `tracestate` header values; `None` when
    /// `traceparent` is not a valid one. A `tracestate` over W3C's 512
    /// characters or holding anything but visible ASCII and spaces is
    /// dropped (W3C: the parent stands without it), so what is carried on
    /// is always a valid header value.
    pub fn from_headers(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        const MAX_PARENT: usize = 55;
        const MAX_STATE: usize = 512;
        if traceparent.len() > MAX_PARENT {
            return None;
        }
        let printable = |text: &str| text.bytes().all(|byte| (0x20..=0x7e).contains(&byte));
        let carrier = Pair {
            traceparent: Some(traceparent.to_owned()),
            tracestate: tracestate
                .filter(|state| state.len() <= MAX_STATE && printable(state))
                .map(str::to_owned),
        };
        let context = TraceContextPropagator::new().extract(&carrier);
        let span_context = context.span().span_context().clone();
        span_context
            .is_valid()
            .then_some(TraceContext(span_context))
    }

    /// The `traceparent` header value, and `tracestate` when there is one.
    pub fn headers(&self) -> (String, Option<String>) {
        let mut carrier = Pair::default();
        let context = Context::new().with_remote_span_context(self.0.clone());
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        (
            carrier.traceparent.unwrap_or_default(),
            carrier.tracestate.filter(|state| !state.is_empty()),
        )
    }

    /// One text for the wire and the store: `traceparent`, then a newline
    /// and `tracestate` when there is one (neither holds a newline).
    pub fn encode(&self) -> String {
        match self.headers() {
            (parent, Some(state)) => format!("{parent}\n{state}"),
            (parent, None) => parent,
        }
    }

    /// The inverse of [`TraceContext::encode`]; `None` for anything else.
    pub fn decode(text: &str) -> Option<TraceContext> {
        match text.split_once('\n') {
            Some((parent, state)) => TraceContext::from_headers(parent, Some(state)),
            None => TraceContext::from_headers(text, None),
        }
    }

    /// The trace's id, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.0.trace_id().to_string()
    }

    /// Makes `span` (not started yet) a child of this context.
    pub fn adopt(&self, span: &tracing::Span) {
        let parent = Context::new().with_remote_span_context(self.0.clone());
        // A span disabled by the filters has no parent to set: nothing lost.
        let _ = span.set_parent(parent);
    }

    /// Links `span` to this context (a span that follows it, not its child).
    pub fn link(&self, span: &tracing::Span) {
        span.add_link(self.0.clone());
    }
}

/// The two W3C headers, as the propagator reads and writes them.
#[derive(Default)]
struct Pair {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Extractor for Pair {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for Pair {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn contexts_round_trip_and_bad_ones_are_refused() {
        let context = TraceContext::from_headers(PARENT, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            context.headers(),
            (PARENT.to_owned(), Some("congo=t61rcWkgMzE".to_owned()))
        );
        assert_eq!(TraceContext::decode(&context.encode()), Some(context));
        let plain = TraceContext::decode(PARENT).unwrap();
        assert_eq!(plain.encode(), PARENT);
        for bad in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "not a trace",
        ] {
            assert_eq!(TraceContext::decode(bad), None, "{bad:?}");
        }
        // A bad or long tracestate is dropped, the parent kept.
        for state in [
            "a=b,".repeat(200),
            "a=b\r\nX-Evil: 1".to_owned(),
            "a=\u{e9}".to_owned(),
        ] {
            let context = TraceContext::from_headers(PARENT, Some(&state)).unwrap();
            assert_eq!(context.headers(), (PARENT.to_owned(), None), "{state:?}");
        }
        assert_eq!(TraceContext::decode(&format!("{PARENT}0")), None);
    }
}
