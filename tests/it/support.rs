//! Test harness: a fresh database per test (SQLite file or PostgreSQL
//! database created and dropped), and a small agent that can be told to
//! misbehave.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Connection;
use tokio::sync::broadcast;
use valueverse::actors::{LifecycleChange, SupervisionEvent};
use valueverse::{Agent, AgentMessage, HandlerError, Handling, RestartStrategy, Store};

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn postgres_admin_url() -> String {
    std::env::var("VALUEVERSE_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A database of its own for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    postgres_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("vv_test_{}", uuid::Uuid::new_v4().simple());
                let mut connection =
                    sqlx::PgConnection::connect(&admin)
                        .await
                        .unwrap_or_else(|error| {
                            panic!(
                                "PostgreSQL must run at {admin} for the tests (see README): {error}"
                            )
                        });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut connection)
                    .await
                    .expect("create test database");
                connection.close().await.ok();
                let base = admin
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    postgres_name: Some(name),
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, 4).await.expect("open test store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let admin = postgres_admin_url();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut connection)
                        .await;
                }
            })
        });
        let _ = dropped.join();
    }
}

/// Drops a database the tests made by other means than [`TestDb`].
pub async fn drop_postgres_database(name: &str) {
    let mut connection = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("admin connection");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await
        .expect("drop database");
}

/// An agent that counts, and can be told to fail in every way a handler can.
pub struct Counter;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CounterState {
    pub total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CounterMsg {
    Add(i64),
    Get,
    Panic,
    Fatal,
    Reject,
    EchoCorrelation,
    /// Blocks the handler: only for filling a mailbox in tests.
    Sleep(u64),
}

impl AgentMessage for CounterMsg {
    fn name(&self) -> &'static str {
        match self {
            CounterMsg::Add(_) => "add",
            CounterMsg::Get => "get",
            CounterMsg::Panic => "panic",
            CounterMsg::Fatal => "fatal",
            CounterMsg::Reject => "reject",
            CounterMsg::EchoCorrelation => "echo_correlation",
            CounterMsg::Sleep(_) => "sleep",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CounterReply {
    Total(i64),
    Correlation(Option<String>),
    Done,
}

impl Agent for Counter {
    const MESSAGE_ID: u32 = 0x7e01;
    const KIND: &'static str = "counter";
    type State = CounterState;
    type Msg = CounterMsg;
    type Reply = CounterReply;

    fn init(_key: &str) -> CounterState {
        CounterState::default()
    }

    fn handle(
        state: &mut CounterState,
        msg: CounterMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<CounterReply, HandlerError> {
        match msg {
            CounterMsg::Add(amount) => {
                state.total += amount;
                ctx.persist();
                Ok(CounterReply::Total(state.total))
            }
            CounterMsg::Get => Ok(CounterReply::Total(state.total)),
            CounterMsg::Panic => {
                // Changed in memory, never saved: a restart must drop this.
                state.total += 1_000_000;
                panic!("counter told to panic")
            }
            CounterMsg::Fatal => Err(HandlerError::fatal("counter told to fail")),
            CounterMsg::Reject => Err(HandlerError::rejected(
                valueverse::actors::RejectionCode::Invalid,
                "amount is above the limit",
                Some("amount"),
            )),
            CounterMsg::EchoCorrelation => Ok(CounterReply::Correlation(
                ctx.correlation_id().map(|id| id.as_str().to_owned()),
            )),
            CounterMsg::Sleep(millis) => {
                std::thread::sleep(Duration::from_millis(millis));
                Ok(CounterReply::Done)
            }
        }
    }

    fn strategy() -> RestartStrategy {
        RestartStrategy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            backoff_factor: 2.0,
            jitter: 0.0,
            max_restarts: 3,
            restart_window: Duration::from_secs(30),
        }
    }
}

/// Waits for the next event about `key` matching `wanted`, at most `within`.
pub async fn wait_for_event(
    events: &mut broadcast::Receiver<SupervisionEvent>,
    key: &str,
    within: Duration,
    wanted: impl Fn(&LifecycleChange) -> bool,
) -> SupervisionEvent {
    let deadline = Instant::now() + within;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Ok(event)) if *event.key == *key && wanted(&event.change) => return event,
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => panic!("event stream broke: {error}"),
            Err(_) => panic!("no matching event for {key} within {within:?}"),
        }
    }
}

/// A node's configuration for tests: a free port, this database, two
/// agent event loops, development mode (no API keys; the auth tests turn
/// it off).
pub fn test_config(db: &TestDb) -> valueverse::Config {
    let mut config = valueverse::Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        dev: true,
        ..valueverse::Config::default()
    };
    config.runtime.workers = 2;
    // The webhook tests' receivers listen on loopback, which webhooks may
    // reach only when allowed.
    config.notifier.allow_networks =
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    config
}

/// GET `url` and its JSON body; panics on a transport or decoding error.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: not JSON: {error}"))
}

/// A node started for a test, with the base URLs of its HTTP API.
pub struct Started {
    pub node: valueverse::Node,
    /// `http://127.0.0.1:port`
    pub base: String,
    /// `http://127.0.0.1:port/api/v1`
    pub api: String,
}

/// Starts a node on `db` with [`test_config`] as `configure` leaves it.
pub async fn start_node(db: &TestDb, configure: impl FnOnce(&mut valueverse::Config)) -> Started {
    start_node_with(db, configure, |_| {}).await
}

/// [`start_node`], registering agent kinds of the test's own first.
pub async fn start_node_with(
    db: &TestDb,
    configure: impl FnOnce(&mut valueverse::Config),
    register: impl FnOnce(&valueverse::System),
) -> Started {
    let mut config = test_config(db);
    configure(&mut config);
    let node = valueverse::Node::start(&config, register)
        .await
        .expect("node starts");
    let base = format!("http://{}", node.http_addr());
    Started {
        api: format!("{base}/api/v1"),
        base,
        node,
    }
}

/// Sends `request`; answers its status and JSON body (`null` when the
/// body is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `check` every 20 ms until it answers `Some`, at most `within`;
/// panics naming `what` (and the last state `check` saw) after that.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?} (last seen: {last})")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// GETs `url` until its JSON body satisfies `done`, at most `within`;
/// answers that body.
pub async fn poll_json(
    client: &reqwest::Client,
    url: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let done = &done;
    eventually(&format!("GET {url}"), within, move || async move {
        let (_, body) = send(client.get(url)).await;
        if done(&body) {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await
}
