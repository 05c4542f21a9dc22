//! The agent layer against plain actix, side by side in one run:
//! `AgentRef::ask` round trip vs `Addr::send`, and `AgentRef::tell`
//! throughput vs `Addr::do_send`, into one active instance whose handler
//! does no I/O (the layer is measured, not the store).
//!
//! Both actors run on the agent runtime's one event loop (an actix arbiter),
//! so they share a thread; same-thread callers run there too, cross-thread
//! callers on a tokio current-thread runtime on the bench thread.
//!
//! `cargo bench --bench local_messaging`; with `VALUEVERSE_BENCH_EXPORT=1`
//! every message's span is exported (batched to an exporter that drops
//! them), as a node with `--otlp-endpoint` does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler, Message};
use criterion::{Criterion, Throughput, criterion_group};
use serde::{Deserialize, Serialize};
use valueverse::{
    Agent, AgentMessage, AgentRef, HandlerError, Handling, RuntimeConfig, Store, System,
};

/// Messages per `tell` batch; the batch ends with an ask, so the time covers
/// every message handled, not only enqueued.
const BATCH: u64 = 100_000;
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

// --- the agent: a counter with no I/O -------------------------------------

struct Tally;

#[derive(Serialize, Deserialize)]
enum TallyMsg {
    Add(u64),
    Get,
}

impl AgentMessage for TallyMsg {
    fn name(&self) -> &'static str {
        match self {
            TallyMsg::Add(_) => "add",
            TallyMsg::Get => "get",
        }
    }
}

impl Agent for Tally {
    const MESSAGE_ID: u32 = 0xbe10;
    const KIND: &'static str = "tally";
    type State = u64;
    type Msg = TallyMsg;
    type Reply = u64;

    fn init(_key: &str) -> u64 {
        0
    }

    fn handle(
        state: &mut u64,
        msg: TallyMsg,
        _ctx: &mut Handling<'_>,
    ) -> Result<u64, HandlerError> {
        if let TallyMsg::Add(amount) = msg {
            *state += amount;
        }
        Ok(*state)
    }
}

// --- the baseline: the same counter as a plain actix actor ----------------

struct PlainTally(u64);

impl Actor for PlainTally {
    type Context = Context<Self>;
}

struct Add(u64);

impl Message for Add {
    type Result = u64;
}

impl Handler<Add> for PlainTally {
    type Result = u64;

    fn handle(&mut self, msg: Add, _ctx: &mut Context<Self>) -> u64 {
        self.0 += msg.0;
        self.0
    }
}

/// The plain actix actor, started on the agent runtime's one event loop, so
/// that both actors (and their same-thread callers) share one thread and the
/// comparison does not depend on how the OS places two threads.
fn start_plain_actor(system: &System) -> Addr<PlainTally> {
    let (sender, receiver) = std::sync::mpsc::channel();
    assert!(system.spawn(async move {
        sender.send(PlainTally(0).start()).unwrap();
    }));
    receiver.recv().unwrap()
}

fn start_agent(runtime: &tokio::runtime::Runtime) -> (System, AgentRef<Tally>) {
    let store = runtime
        .block_on(Store::open("sqlite::memory:", 1))
        .expect("in-memory store");
    let config = RuntimeConfig {
        // One event loop: the instance and the same-thread callers share it.
        workers: 1,
        // Room for a whole batch: the bench measures throughput, not refusals.
        mailbox_capacity: 2 * BATCH as usize,
        passivate_after: Duration::from_secs(3600),
        ..RuntimeConfig::default()
    };
    let system = System::start("bench", config, store).expect("system");
    let agent = system.agent_by_key::<Tally>("bench");
    runtime
        .block_on(agent.ask(TallyMsg::Get, ASK_TIMEOUT))
        .expect("activated");
    (system, agent)
}

/// Runs `work(iterations)` on an actor thread via `spawn` and returns the
/// time it measured there.
fn timed_on_actor_thread<S, F, W>(spawn: S, iterations: u64, work: W) -> Duration
where
    S: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> bool,
    W: FnOnce(u64) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (done, elapsed) = std::sync::mpsc::channel();
    let future = work(iterations);
    let spawned = spawn(Box::pin(async move {
        let started = Instant::now();
        future.await;
        done.send(started.elapsed()).unwrap();
    }));
    assert!(spawned, "actor thread gone");
    elapsed.recv().unwrap()
}

/// Both actors, and a current-thread runtime for callers off the actor threads.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    system: System,
    agent: AgentRef<Tally>,
    plain: Addr<PlainTally>,
}

impl Fixture {
    fn start() -> Fixture {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (system, agent) = start_agent(&runtime);
        let plain = start_plain_actor(&system);
        Fixture {
            runtime,
            system,
            agent,
            plain,
        }
    }
}

/// Times `work(iterations)` run on the agent runtime's event loop.
fn iter_on_loop<W, F>(bencher: &mut criterion::Bencher<'_>, system: &System, work: W)
where
    W: Fn(u64) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    bencher.iter_custom(|iterations| timed_on_actor_thread(|f| system.spawn(f), iterations, &work));
}

/// Same thread: callers run on the actor's own event loop, as actix's own
/// figures are taken. These carry the targets.
fn same_thread(c: &mut Criterion) {
    let Fixture {
        runtime: _runtime,
        system,
        agent,
        plain,
    } = Fixture::start();

    let mut ask = c.benchmark_group("same_thread_ask_round_trip");
    ask.throughput(Throughput::Elements(1));
    ask.bench_function("plain_actix_send", |b| {
        iter_on_loop(b, &system, |n| {
            let plain = plain.clone();
            async move {
                for _ in 0..n {
                    black_box(plain.send(Add(1)).await.unwrap());
                }
            }
        })
    });
    // Reference only: actix's send with a deadline, as our ask always has one.
    ask.bench_function("plain_actix_send_with_timeout", |b| {
        iter_on_loop(b, &system, |n| {
            let plain = plain.clone();
            async move {
                for _ in 0..n {
                    black_box(plain.send(Add(1)).timeout(ASK_TIMEOUT).await.unwrap());
                }
            }
        })
    });
    ask.bench_function("agent_ref_ask", |b| {
        iter_on_loop(b, &system, |n| {
            let agent = agent.clone();
            async move {
                for _ in 0..n {
                    black_box(agent.ask(TallyMsg::Add(1), ASK_TIMEOUT).await.unwrap());
                }
            }
        })
    });
    ask.finish();

    let mut tell = c.benchmark_group("same_thread_tell_throughput");
    tell.throughput(Throughput::Elements(BATCH));
    tell.sample_size(30);
    tell.bench_function("plain_actix_do_send", |b| {
        iter_on_loop(b, &system, |n| {
            let plain = plain.clone();
            async move {
                for _ in 0..n {
                    for _ in 0..BATCH {
                        plain.do_send(Add(1));
                    }
                    plain.send(Add(0)).await.unwrap();
                }
            }
        })
    });
    tell.bench_function("agent_ref_tell", |b| {
        iter_on_loop(b, &system, |n| {
            let agent = agent.clone();
            async move {
                for _ in 0..n {
                    for _ in 0..BATCH {
                        agent.tell(TallyMsg::Add(1)).unwrap();
                    }
                    agent.ask(TallyMsg::Get, ASK_TIMEOUT).await.unwrap();
                }
            }
        })
    });
    tell.finish();
}

/// Cross thread: the caller on a tokio runtime, the actor on an arbiter (how
/// HTTP handlers reach agents). Wake-up latency dominates; informative only.
fn cross_thread(c: &mut Criterion) {
    let Fixture {
        runtime,
        system: _system,
        agent,
        plain,
    } = Fixture::start();

    let mut ask = c.benchmark_group("cross_thread_ask_round_trip");
    ask.throughput(Throughput::Elements(1));
    ask.bench_function("plain_actix_send", |b| {
        b.to_async(&runtime)
            .iter(|| async { plain.send(Add(1)).await.unwrap() })
    });
    ask.bench_function("agent_ref_ask", |b| {
        b.to_async(&runtime)
            .iter(|| async { agent.ask(TallyMsg::Add(1), ASK_TIMEOUT).await.unwrap() })
    });
    ask.finish();

    let mut tell = c.benchmark_group("cross_thread_tell_throughput");
    tell.throughput(Throughput::Elements(BATCH));
    tell.sample_size(20);
    tell.bench_function("plain_actix_do_send", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                for _ in 0..BATCH {
                    plain.do_send(Add(1));
                }
                runtime.block_on(plain.send(Add(0))).unwrap();
            }
            started.elapsed()
        })
    });
    tell.bench_function("agent_ref_tell", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                for _ in 0..BATCH {
                    agent.tell(TallyMsg::Add(1)).unwrap();
                }
                runtime
                    .block_on(agent.ask(TallyMsg::Get, ASK_TIMEOUT))
                    .unwrap();
            }
            started.elapsed()
        })
    });
    tell.finish();
}

/// Same-thread ask against plain send, interleaved: rounds alternate the two
/// so that drifts of this shared VM (seen at +-40% between runs) hit both
/// alike. Prints the medians and the median of per-round ratios.
fn paired_ask_report() {
    const ROUNDS: usize = 101;
    const PER_ROUND: u64 = 20_000;
    let fixture = Fixture::start();
    let mut plain_ns = Vec::with_capacity(ROUNDS);
    let mut agent_ns = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let system = &fixture.system;
        let measure_plain = || {
            let plain = fixture.plain.clone();
            timed_on_actor_thread(
                |f| system.spawn(f),
                PER_ROUND,
                move |n| async move {
                    for _ in 0..n {
                        black_box(plain.send(Add(1)).await.unwrap());
                    }
                },
            )
        };
        let measure_agent = || {
            let agent = fixture.agent.clone();
            timed_on_actor_thread(
                |f| system.spawn(f),
                PER_ROUND,
                move |n| async move {
                    for _ in 0..n {
                        black_box(agent.ask(TallyMsg::Add(1), ASK_TIMEOUT).await.unwrap());
                    }
                },
            )
        };
        let (plain, agent) = if round % 2 == 0 {
            let plain = measure_plain();
            (plain, measure_agent())
        } else {
            let agent = measure_agent();
            (measure_plain(), agent)
        };
        let per_op = |elapsed: Duration| elapsed.as_nanos() as f64 / PER_ROUND as f64;
        plain_ns.push(per_op(plain));
        agent_ns.push(per_op(agent));
        ratios.push(per_op(agent) / per_op(plain));
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "paired same-thread ask ({ROUNDS} rounds of {PER_ROUND}): plain actix send {:.1} ns, \
         AgentRef::ask {:.1} ns, median ratio {:.2}x",
        median(&mut plain_ns),
        median(&mut agent_ns),
        median(&mut ratios),
    );
}

criterion_group!(benches, same_thread, cross_thread);

/// Drops what it is handed: the cost measured is the spans' and the batch
/// processor's, not a collector's.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        std::future::ready(Ok(()))
    }
}

/// Installs what a node with an OTLP endpoint installs, the exporter aside.
fn export_spans() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let tracer = provider.tracer("bench");
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    valueverse::actors::enable_propagation();
    // Exporting until the process ends.
    std::mem::forget(provider);
}

fn main() {
    if std::env::var_os("VALUEVERSE_BENCH_EXPORT").is_some() {
        export_spans();
        println!("spans exported (to an exporter that drops them)");
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench -- <filter>` and `--test` runs skip the paired report
    // unless the filter names it.
    let args: Vec<String> = std::env::args().collect();
    let filtered = args
        .iter()
        .skip(1)
        .any(|arg| !arg.starts_with('-') && !"paired".contains(arg.as_str()));
    if !filtered && !args.iter().any(|arg| arg == "--test") {
        paired_ask_report();
    }
}
