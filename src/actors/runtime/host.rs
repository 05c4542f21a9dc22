//! The generic host actor that runs one agent instance: loads its state,
//! handles its mailbox one message at a time inside `catch_unwind`, writes
//! changed state through to the store, carries out its supervisor's decision
//! on failure, and passivates it when idle.
//!
//! A restart happens in place: the state is dropped and reloaded after the
//! backoff while the mailbox (and what waits in it) is kept, so a restart is
//! another start from the store with nothing carried over but the queue.
//!
//! While the host waits (state load, write-through, restart backoff) it is
//! `busy`: arriving messages are stashed in order, and asks among them are
//! answered `Expired` at their deadline by a timer of the host's own. So an
//! instance answers every ask by its deadline whenever its thread is free,
//! which lets same-thread asks skip a timer of their own.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, SpawnHandle, WrapFuture,
};

use super::agent::{Agent, AgentMessage, Handling};
use super::envelope::{CorrelationId, Envelope, ReplySender};
use super::error::{AgentError, ExitStatus, HandlerError, HandlingError, OperatorError, SendError};
use super::events::DomainEvent;
use super::registry::{InstanceCell, KindRuntime};
use super::supervisor::{
    Decision, InstanceStatus, LifecycleChange, OperatorAction, RestartHistory,
};
use crate::metrics::Outcome;
use crate::state::StateError;

enum Phase<S> {
    /// State is being loaded (activation, restart or reset).
    Loading,
    Active {
        state: S,
        version: i64,
    },
    /// Escalated: answers every message with an error until reset.
    Failed,
}

/// Backoff of loads while the store is unreachable: 100 ms doubling to 10 s.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

pub(crate) struct Host<A: Agent> {
    kind: Arc<KindRuntime<A>>,
    /// The event loop this host runs on (its metric shard).
    worker: usize,
    cell: Arc<InstanceCell>,
    key: Arc<str>,
    phase: Phase<A::State>,
    history: RestartHistory,
    /// quanta's TSC clock: a tenth of the cost of `Instant::now` per message.
    last_active: quanta::Instant,
    /// Restart attempt whose reload is under way, if any.
    restart_attempt: Option<u32>,
    /// Loads in a row that found the store unreachable.
    store_retries: u32,
    /// Waiting on the store or a backoff: messages go to `stash`.
    busy: bool,
    /// Messages that arrived while busy, in arrival order; still counted in
    /// the mailbox depth, so the bound holds.
    stash: VecDeque<Envelope<A>>,
    /// Timer answering stashed asks at the earliest deadline among them.
    expiry: Option<(quanta::Instant, SpawnHandle)>,
    /// Whether a message was handled (not refused) since activation.
    accepted_any: bool,
}

/// Operator request to bring a failed instance back, with the correlation id
/// of the request that asked for it.
pub(crate) struct Operate {
    pub(crate) action: OperatorAction,
    pub(crate) correlation_id: Option<CorrelationId>,
}

impl actix::Message for Operate {
    type Result = Result<(), AgentError>;
}

/// Placement moved the key to another node: passivate once idle.
pub(crate) struct Handoff;

impl actix::Message for Handoff {
    type Result = ();
}

/// How soon a hand-off that found the instance busy looks again.
const HAND_OFF_RETRY: Duration = Duration::from_millis(20);

impl<A: Agent> Host<A> {
    pub(crate) fn new(
        kind: Arc<KindRuntime<A>>,
        worker: usize,
        cell: Arc<InstanceCell>,
        key: Arc<str>,
    ) -> Host<A> {
        Host {
            kind,
            worker,
            cell,
            key,
            phase: Phase::Loading,
            history: RestartHistory::default(),
            last_active: quanta::Instant::now(),
            restart_attempt: None,
            store_retries: 0,
            busy: false,
            stash: VecDeque::new(),
            expiry: None,
            accepted_any: false,
        }
    }

    fn target(&self) -> super::envelope::AgentId {
        KindRuntime::<A>::target(&self.key)
    }

    /// Loads the state after `delay`; messages are stashed until it is loaded.
    fn load_state(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        self.phase = Phase::Loading;
        self.busy = true;
        let store = self.kind.node.store.clone();
        let key = self.key.clone();
        let load = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            A::load(&*store, &key).await
        };
        ctx.spawn(load.into_actor(self).map(|loaded, host, ctx| {
            host.busy = false;
            match loaded {
                Ok(loaded) => {
                    host.store_retries = 0;
                    let (state, version) = match loaded {
                        Some(stored) => (stored.state, stored.version),
                        None => (A::init(&host.key), 0),
                    };
                    host.phase = Phase::Active { state, version };
                    host.last_active = host.kind.node.clock.now();
                    host.cell.set_status(InstanceStatus::Active);
                    let change = match host.restart_attempt.take() {
                        Some(attempt) => LifecycleChange::Restarted { attempt },
                        None => LifecycleChange::Activated,
                    };
                    host.kind.node.emit(A::KIND, &host.key, change);
                }
                // The store, not the instance, is at fault: load again
                // with a backoff, counting no restart (an outage must not
                // leave instances failed until an operator resets them).
                Err(error) if error.is_unavailable() => {
                    host.store_retries += 1;
                    let after = STORE_RETRY_FIRST
                        .saturating_mul(1 << (host.store_retries - 1).min(7))
                        .min(STORE_RETRY_MAX);
                    tracing::warn!(
                        kind = A::KIND,
                        key = %host.key,
                        %error,
                        retry_in = ?after,
                        "state load failed: the store is unreachable"
                    );
                    host.cell.record_failure(ExitStatus::LoadFailed {
                        message: error.to_string(),
                    });
                    host.cell.set_status(InstanceStatus::Restarting);
                    host.load_state(ctx, after);
                }
                Err(error) => host.fail(
                    ctx,
                    ExitStatus::LoadFailed {
                        message: error.to_string(),
                    },
                ),
            }
            host.drain_stash(ctx);
        }));
    }

    /// Keeps a message that arrived while busy, and makes sure an ask among
    /// them is answered at its deadline.
    fn stash(&mut self, envelope: Envelope<A>, ctx: &mut Context<Self>) {
        let deadline = envelope.header.deadline;
        self.stash.push_back(envelope);
        if let Some(deadline) = deadline {
            self.schedule_expiry(deadline, ctx);
        }
    }

    fn schedule_expiry(&mut self, deadline: quanta::Instant, ctx: &mut Context<Self>) {
        if let Some((scheduled, handle)) = self.expiry {
            if scheduled <= deadline {
                return;
            }
            ctx.cancel_future(handle);
        }
        let after = deadline.saturating_duration_since(self.kind.node.clock.now());
        let handle = ctx.run_later(after, |host, ctx| {
            host.expiry = None;
            host.expire_stash(ctx);
        });
        self.expiry = Some((deadline, handle));
    }

    /// Answers the stashed asks whose deadline has passed.
    fn expire_stash(&mut self, ctx: &mut Context<Self>) {
        let now = self.kind.node.clock.now();
        let mut next_deadline: Option<quanta::Instant> = None;
        let mut kept = VecDeque::with_capacity(self.stash.len());
        for envelope in self.stash.drain(..) {
            match envelope.header.deadline {
                Some(deadline) if deadline <= now => {
                    self.cell.release();
                    self.kind
                        .metrics
                        .shards
                        .worker(self.worker)
                        .count(Outcome::Expired);
                    let target = KindRuntime::<A>::target(&self.key);
                    respond::<A>(
                        envelope.reply,
                        Err(AgentError::Send(SendError::Expired { target })),
                    );
                }
                deadline => {
                    if let Some(deadline) = deadline {
                        next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                    }
                    kept.push_back(envelope);
                }
            }
        }
        self.stash = kept;
        if let Some(deadline) = next_deadline {
            self.schedule_expiry(deadline, ctx);
        }
    }

    /// Handles what was stashed, in order, until empty or busy again.
    fn drain_stash(&mut self, ctx: &mut Context<Self>) {
        while !self.busy {
            let Some(envelope) = self.stash.pop_front() else {
                break;
            };
            self.process(envelope, ctx);
        }
        if self.stash.is_empty()
            && let Some((_, handle)) = self.expiry.take()
        {
            ctx.cancel_future(handle);
        }
    }

    /// Drops the state and carries out the supervisor's decision.
    fn fail(&mut self, ctx: &mut Context<Self>, status: ExitStatus) {
        tracing::warn!(kind = A::KIND, key = %self.key, reason = %status, "agent instance failed");
        self.phase = Phase::Loading;
        self.cell.record_failure(status.clone());
        let node = &self.kind.node;
        node.emit(A::KIND, &self.key, LifecycleChange::Failed { status });
        match self.history.on_failure(&self.kind.strategy, Instant::now()) {
            Decision::Restart { attempt, after } => {
                self.cell.set_status(InstanceStatus::Restarting);
                self.cell.count_restart();
                self.kind.metrics.restarts.inc();
                self.restart_attempt = Some(attempt);
                node.emit(
                    A::KIND,
                    &self.key,
                    LifecycleChange::RestartScheduled { attempt, after },
                );
                self.load_state(ctx, after);
            }
            Decision::Escalate { restarts_in_window } => {
                tracing::error!(
                    kind = A::KIND,
                    key = %self.key,
                    restarts_in_window,
                    "agent instance escalated: failed until reset"
                );
                self.phase = Phase::Failed;
                self.cell.set_status(InstanceStatus::Failed);
                self.kind.metrics.escalations.inc();
                node.emit(
                    A::KIND,
                    &self.key,
                    LifecycleChange::Escalated { restarts_in_window },
                );
            }
        }
    }

    fn maybe_passivate(&mut self, ctx: &mut Context<Self>) {
        let idle = self
            .kind
            .node
            .clock
            .now()
            .saturating_duration_since(self.last_active)
            >= self.kind.node.runtime.passivate_after;
        if idle && self.passivate(ctx) {
            tracing::debug!(kind = A::KIND, key = %self.key, "passivated idle agent instance");
        }
    }

    /// Stops the instance if nothing is in its mailbox or in progress.
    fn passivate(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.busy || !matches!(self.phase, Phase::Active { .. }) || !self.cell.try_close() {
            return false;
        }
        self.kind.on_passivated(&self.key, &self.cell);
        ctx.stop();
        true
    }

    /// Passivates as soon as the mailbox is empty, while another node owns
    /// the key; its state is in the store for the new owner to load.
    fn hand_off(&mut self, ctx: &mut Context<Self>) {
        if self.kind.node.route(A::KIND, &self.key).is_none() {
            return;
        }
        if self.passivate(ctx) {
            tracing::debug!(kind = A::KIND, key = %self.key, "handed off to its new owner");
        } else if !matches!(self.phase, Phase::Failed) {
            ctx.run_later(HAND_OFF_RETRY, |host, ctx| host.hand_off(ctx));
        }
    }
}

fn respond<A: Agent>(reply: Option<ReplySender<A>>, result: Result<A::Reply, AgentError>) {
    if let Some(reply) = reply {
        reply.send(result);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

impl<A: Agent> Actor for Host<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_state(ctx, Duration::ZERO);
        let every = (self.kind.node.runtime.passivate_after / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(30));
        ctx.run_interval(every, |host, ctx| host.maybe_passivate(ctx));
    }
}

impl<A: Agent> Handler<Envelope<A>> for Host<A> {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<A>, ctx: &mut Context<Self>) {
        if self.busy {
            self.stash(envelope, ctx);
        } else {
            self.process(envelope, ctx);
        }
    }
}

/// Messages from one link for this instance, sent as one: each is handled
/// in order as if it had come alone. One mailbox push and one wake of the
/// event loop for the lot.
pub(crate) struct Batch<A: Agent>(pub(crate) Vec<Envelope<A>>);

impl<A: Agent> actix::Message for Batch<A> {
    type Result = ();
}

impl<A: Agent> Handler<Batch<A>> for Host<A> {
    type Result = ();

    fn handle(&mut self, batch: Batch<A>, ctx: &mut Context<Self>) {
        for envelope in batch.0 {
            // Stopping (a failure it does not survive): the rest are
            // dropped, as actix drops what is left in a mailbox.
            if ctx.state() != actix::ActorState::Running {
                break;
            }
            Handler::<Envelope<A>>::handle(self, envelope, ctx);
        }
    }
}

impl<A: Agent> Host<A> {
    /// Handles one message: the instance is not busy.
    fn process(&mut self, envelope: Envelope<A>, ctx: &mut Context<Self>) {
        self.cell.release();
        self.cell.count_handled();
        let Envelope {
            header,
            payload,
            reply,
        } = envelope;
        let clock = &self.kind.node.clock;
        let started_raw = clock.raw();
        let started = clock.scaled(started_raw);
        self.last_active = started;
        let shard = self.kind.metrics.shards.worker(self.worker);
        let (state, version) = match &mut self.phase {
            Phase::Active { state, version } => (state, *version),
            Phase::Failed => {
                shard.count(Outcome::RefusedFailed);
                let last_failure = Box::new(self.cell.last_failure());
                let target = KindRuntime::<A>::target(&self.key);
                respond::<A>(
                    reply,
                    Err(AgentError::Handling(HandlingError::Failed {
                        target,
                        last_failure,
                    })),
                );
                return;
            }
            // Loading means busy: such messages are stashed, not processed.
            Phase::Loading => {
                let target = KindRuntime::<A>::target(&self.key);
                respond::<A>(reply, Err(AgentError::Send(SendError::Stopped { target })));
                return;
            }
        };
        if header.deadline.is_some_and(|deadline| deadline <= started) {
            shard.count(Outcome::Expired);
            let target = KindRuntime::<A>::target(&self.key);
            respond::<A>(reply, Err(AgentError::Send(SendError::Expired { target })));
            return;
        }
        // With no subscriber at all, skip even the disabled span: tracing's
        // `log` fallback would still build and check a record per message.
        let span = if tracing::dispatcher::has_been_set() {
            let span = tracing::info_span!(
                "handle",
                kind = A::KIND,
                key = %self.key,
                msg = payload.name(),
                correlation_id = header.correlation_id.as_ref().map(|id| id.as_str()),
                tenant = tracing::field::Empty,
                node = tracing::field::Empty,
                outcome = tracing::field::Empty,
                otel.name = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_message = tracing::field::Empty,
            );
            // Only while exporting: the log line stays as it was.
            if crate::propagating() {
                if let Some(parent) = &header.trace {
                    parent.adopt(&span);
                }
                span.record("otel.name", format!("{} {}", A::KIND, payload.name()));
                span.record("tenant", crate::tenant::split_key(&self.key).0);
                span.record("node", self.kind.node.name.as_str());
            }
            span
        } else {
            tracing::Span::none()
        };
        let entered = span.enter();
        let action = payload.name();
        let mut handling = Handling::new(&header, &self.key);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            A::handle(state, payload, &mut handling)
        }));
        let persist = handling.wants_persist();
        let events = handling.take_events(A::KIND);
        shard.observe_nanos(clock.delta_as_nanos(started_raw, clock.raw()));
        // What of them the outbox keeps: written in the state's
        // transaction, or alone when the handler changed nothing durable.
        let wanted = &self.kind.node.wanted_events;
        let mut outbox: Vec<_> = events
            .iter()
            .filter(|event| wanted.wants(&event.event_type))
            .map(|event| DomainEvent::to_outbox(event, None))
            .collect();
        if !outbox.is_empty()
            && crate::propagating()
            && let Some(trace) = crate::TraceContext::of(&span)
        {
            let trace = trace.encode();
            for event in &mut outbox {
                event.trace_context = Some(trace.clone());
            }
        }
        let wrote = !outbox.is_empty();
        let outcome = match outcome {
            Ok(Ok(value)) if persist || wrote => {
                self.accepted_any = true;
                shard.count(Outcome::Ok);
                let store = &self.kind.node.store;
                let save: futures_util::future::BoxFuture<'static, Result<i64, StateError>> =
                    if persist {
                        // Who changed it, in the change's transaction.
                        let (tenant, id) = crate::tenant::split_key(&self.key);
                        let mut outbox = outbox;
                        outbox.push(
                            crate::AuditEntry::now(
                                tenant,
                                header.actor.as_deref().unwrap_or("system"),
                                action,
                                &format!("{}/{id}", A::KIND),
                                header.correlation_id.as_ref().map(|id| id.as_str()),
                                "ok",
                            )
                            .into_event(),
                        );
                        A::save(&**store, &self.key, state, version, outbox)
                    } else {
                        let store = store.clone();
                        Box::pin(async move { store.append_events(outbox).await.map(|()| version) })
                    };
                // Later messages wait in the stash for the write: order holds
                // and the reply is sent only once the change is durable.
                self.busy = true;
                drop(entered);
                // The span lasts until the change is durable: the write runs
                // in it (its end is its last exit).
                let save = tracing::Instrument::instrument(save, span.clone());
                let span = span.clone();
                ctx.spawn(save.into_actor(self).map(move |saved, host, ctx| {
                    host.busy = false;
                    match saved {
                        Ok(new_version) => {
                            finish_span(&span, "ok", None);
                            if let Phase::Active { version, .. } = &mut host.phase {
                                *version = new_version;
                            }
                            if wrote {
                                host.kind.node.outbox_written.notify_one();
                            }
                            host.kind.node.publish(events);
                            respond::<A>(reply, Ok(value));
                        }
                        Err(error) => {
                            finish_span(&span, "save_failed", Some(&error));
                            let status = ExitStatus::SaveFailed {
                                message: error.to_string(),
                            };
                            let target = KindRuntime::<A>::target(&host.key);
                            let error = AgentError::Store {
                                target,
                                cause: Box::new(error),
                            };
                            respond::<A>(reply, Err(error));
                            host.fail(ctx, status);
                        }
                    }
                    host.drain_stash(ctx);
                }));
                return;
            }
            Ok(Ok(value)) => {
                finish_span(&span, "ok", None);
                self.accepted_any = true;
                shard.count(Outcome::Ok);
                self.kind.node.publish(events);
                respond::<A>(reply, Ok(value));
                return;
            }
            Ok(Err(HandlerError::Rejected(rejection))) => {
                // The caller's mistake, not the handler's: no error status.
                finish_span(&span, "rejected", None);
                shard.count(Outcome::Rejected);
                let target = KindRuntime::<A>::target(&self.key);
                let rejection = Box::new(rejection);
                respond::<A>(
                    reply,
                    Err(AgentError::Handling(HandlingError::Rejected {
                        target,
                        rejection,
                    })),
                );
                // Woken only to refuse (a read of an id that does not
                // exist), with nothing stored: it goes at once rather than
                // live out its idle time, so that requests for made-up ids
                // leave no instances behind.
                if version == 0 && !self.accepted_any && self.passivate(ctx) {
                    tracing::debug!(kind = A::KIND, key = %self.key, "passivated an instance that holds nothing");
                }
                return;
            }
            Ok(Err(HandlerError::Fatal(message))) => {
                shard.count(Outcome::Fatal);
                ExitStatus::Fatal { message }
            }
            Err(payload) => {
                shard.count(Outcome::Panicked);
                ExitStatus::Panicked {
                    message: panic_message(payload.as_ref()),
                }
            }
        };
        // A panic or fatal error: answer, then let the supervisor decide.
        let target = KindRuntime::<A>::target(&self.key);
        let error = match &outcome {
            ExitStatus::Panicked { message } => HandlingError::Panicked {
                target,
                message: message.clone(),
            },
            other => HandlingError::Fatal {
                target,
                message: other.to_string(),
            },
        };
        finish_span(&span, "failed", Some(&error));
        respond::<A>(reply, Err(error.into()));
        drop(entered);
        self.fail(ctx, outcome);
    }
}

impl<A: Agent> Handler<Handoff> for Host<A> {
    type Result = ();

    fn handle(&mut self, _: Handoff, ctx: &mut Context<Self>) {
        self.hand_off(ctx);
    }
}

impl<A: Agent> Handler<Operate> for Host<A> {
    type Result = Result<(), AgentError>;

    fn handle(&mut self, operate: Operate, ctx: &mut Context<Self>) -> Result<(), AgentError> {
        let correlation_id = operate.correlation_id.as_ref().map(CorrelationId::as_str);
        match operate.action {
            OperatorAction::Reset => {
                if !matches!(self.phase, Phase::Failed) {
                    return Err(AgentError::Operator(OperatorError::NotFailed {
                        target: self.target(),
                        status: self.cell.status(),
                    }));
                }
                tracing::info!(
                    kind = A::KIND,
                    key = %self.key,
                    correlation_id,
                    "operator reset of failed agent instance"
                );
                self.history.clear();
                self.cell.set_status(InstanceStatus::Activating);
                self.kind
                    .node
                    .emit(A::KIND, &self.key, LifecycleChange::Reset);
                self.load_state(ctx, Duration::ZERO);
            }
            OperatorAction::Crash { reason } => {
                // Only a running instance: crashing one that is loading or
                // failed would count a failure the supervisor never saw.
                if !matches!(self.phase, Phase::Active { .. }) || self.busy {
                    return Err(AgentError::Operator(OperatorError::NotActive {
                        target: self.target(),
                        status: self.cell.status(),
                    }));
                }
                tracing::info!(
                    kind = A::KIND,
                    key = %self.key,
                    correlation_id,
                    "operator fault injection"
                );
                self.fail(ctx, ExitStatus::Injected { reason });
            }
        }
        Ok(())
    }
}

/// Records how a message ended on its span, while spans are exported; an
/// error also sets the span's status.
fn finish_span(span: &tracing::Span, outcome: &str, error: Option<&dyn std::fmt::Display>) {
    if !crate::propagating() {
        return;
    }
    span.record("outcome", outcome);
    if let Some(error) = error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", tracing::field::display(error));
    }
}
