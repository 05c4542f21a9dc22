//! Every handled message runs in a `handle` span carrying kind, key, message
//! name and correlation id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};
use valueverse::{CorrelationId, RuntimeConfig, System};

use crate::support::{Backend, Counter, CounterMsg, TestDb};

type Recorded = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Records the fields of every `handle` span.
struct SpanRecorder(Recorded);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "handle" {
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

/// The process-wide subscriber (spans are opened on the actor threads, so a
/// thread-local default would not see them).
fn recorded() -> Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED
        .get_or_init(|| {
            let recorded = Recorded::default();
            let subscriber = Registry::default().with(SpanRecorder(recorded.clone()));
            tracing::subscriber::set_global_default(subscriber).expect("first global subscriber");
            recorded
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_handled_in_a_span_with_its_identity() {
    let recorded = recorded();
    let db = TestDb::new(Backend::Sqlite).await;
    let runtime = RuntimeConfig {
        workers: 1,
        ..RuntimeConfig::default()
    };
    let system = System::start("spans", runtime, db.store().await).unwrap();
    system
        .agent_by_key::<Counter>("traced-key")
        .with_correlation_id(CorrelationId::parse("corr-7").unwrap())
        .ask(CounterMsg::Add(1), Duration::from_secs(5))
        .await
        .unwrap();
    let spans = recorded.lock().unwrap().clone();
    let span = spans
        .iter()
        .find(|fields| fields.get("key").map(String::as_str) == Some("traced-key"))
        .unwrap_or_else(|| panic!("no handle span for traced-key in {spans:?}"));
    assert_eq!(span["kind"], "counter");
    assert_eq!(span["msg"], "add");
    assert_eq!(span["correlation_id"], "corr-7");
}
