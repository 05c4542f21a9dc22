//! Messages between two nodes over real TCP links, in one process: remote
//! tells into a small mailbox all arrive, in order; remote asks are
//! answered by the far handler, or refused with the far mailbox's own
//! error.

use std::time::{Duration, Instant};

use valueverse_runtime::{
    Agent, AgentError, AgentMessage, HandlerError, Handling, RuntimeConfig, System,
};
use valueverse_runtime::{RemoteError, SendError};

use super::codec::PROTOCOL_VERSION;
use super::test_nodes::{self, key_elsewhere, share_view};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum EchoMsg {
    Ping(u64),
    Count,
}

impl AgentMessage for EchoMsg {
    fn name(&self) -> &'static str {
        match self {
            EchoMsg::Ping(_) => "ping",
            EchoMsg::Count => "count",
        }
    }
}

/// Answers a ping with its number, and the count of pings when asked.
struct Echo;

impl Agent for Echo {
    const KIND: &'static str = "test_echo";
    const MESSAGE_ID: u32 = 0x7e01;
    type State = u64;
    type Msg = EchoMsg;
    type Reply = u64;

    fn init(_key: &str) -> u64 {
        0
    }

    fn handle(state: &mut u64, msg: EchoMsg, _: &mut Handling<'_>) -> Result<u64, HandlerError> {
        Ok(match msg {
            EchoMsg::Ping(n) => {
                *state += 1;
                n
            }
            EchoMsg::Count => *state,
        })
    }
}

/// Takes its time over each message, so that its mailbox fills.
struct Slow;

impl Agent for Slow {
    const MESSAGE_ID: u32 = 0xbe02;
    const KIND: &'static str = "test_slow";
    type State = u64;
    type Msg = EchoMsg;
    type Reply = u64;

    fn init(_key: &str) -> u64 {
        0
    }

    fn handle(state: &mut u64, _: EchoMsg, _: &mut Handling<'_>) -> Result<u64, HandlerError> {
        std::thread::sleep(Duration::from_millis(20));
        *state += 1;
        Ok(*state)
    }
}

/// Two nodes in one process, with mailboxes of `capacity`, each hosting
/// `Echo` and what `register` adds, in each other's view for `kinds`.
async fn node_pair(
    secret: [u8; 32],
    capacity: usize,
    kinds: &[&str],
    register: impl Fn(&System),
) -> (System, System) {
    let config = RuntimeConfig {
        mailbox_capacity: capacity,
        ..Default::default()
    };
    let start = |name| {
        test_nodes::node(name, config.clone(), PROTOCOL_VERSION, &secret, |system| {
            system.register::<Echo>();
            register(system);
        })
    };
    let (near, far) = (start("near").await, start("far").await);
    share_view(&[&near, &far], kinds);
    (near.system, far.system)
}

/// Counts pings and those that came out of order.
struct Ordered;

impl Agent for Ordered {
    const MESSAGE_ID: u32 = 0xbe03;
    const KIND: &'static str = "test_ordered";
    type State = (u64, u64);
    type Msg = EchoMsg;
    type Reply = u64;

    fn init(_key: &str) -> (u64, u64) {
        (0, 0)
    }

    fn handle(
        (count, misordered): &mut (u64, u64),
        msg: EchoMsg,
        _: &mut Handling<'_>,
    ) -> Result<u64, HandlerError> {
        Ok(match msg {
            EchoMsg::Ping(n) => {
                if n != *count {
                    *misordered += 1;
                }
                *count += 1;
                *count
            }
            EchoMsg::Count => *count * 1_000_000 + *misordered,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_tells_into_a_small_mailbox_all_arrive_in_order() {
    // Far smaller than one read of frames: every burst finds the
    // mailbox full and waits for room.
    let (near, far) = node_pair([7u8; 32], 8, &[Ordered::KIND], |system| {
        system.register::<Ordered>();
    })
    .await;
    let key = key_elsewhere(&near, Ordered::KIND);
    let agent = near.agent_by_key::<Ordered>(key);
    let timeout = Duration::from_secs(10);
    agent.ask(EchoMsg::Count, timeout).await.unwrap();
    const TELLS: u64 = 20_000;
    let mut sent = 0;
    while sent < TELLS {
        match agent.tell(EchoMsg::Ping(sent)) {
            Ok(()) => sent += 1,
            Err(AgentError::Remote(RemoteError::Backpressure { .. })) => {
                tokio::task::yield_now().await
            }
            Err(other) => panic!("tell {sent}: {other:?}"),
        }
    }
    let started = Instant::now();
    let counted = loop {
        let counted = match agent.ask(EchoMsg::Count, timeout).await {
            Ok(counted) => counted,
            // The tells ahead of it still fill the mailbox: an ask is
            // refused at once, as a local one would be.
            Err(AgentError::Send(SendError::MailboxFull { .. })) => 0,
            Err(other) => panic!("count: {other:?}"),
        };
        if counted / 1_000_000 >= TELLS || started.elapsed() > timeout {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(counted, TELLS * 1_000_000, "count * 10^6 + out of order");
    near.shutdown();
    far.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_asks_are_answered_by_the_far_handler_or_refused_typed() {
    let (near, far) = node_pair([9u8; 32], 2, &[Slow::KIND, Echo::KIND], |system| {
        system.register::<Slow>();
    })
    .await;
    let far_key = |kind| key_elsewhere(&near, kind);

    // Answered by the handler on the far node, over the link.
    let echo = near.agent_by_key::<Echo>(far_key(Echo::KIND));
    for n in 0..100 {
        assert_eq!(
            echo.ask(EchoMsg::Ping(n), Duration::from_secs(5))
                .await
                .unwrap(),
            n
        );
    }

    // A full mailbox there is refused as such here, at once: not a
    // timeout, not `Stopped`.
    let slow = near.agent_by_key::<Slow>(far_key(Slow::KIND));
    let asks = (0..12).map(|_| {
        let slow = slow.clone();
        tokio::spawn(async move { slow.ask(EchoMsg::Count, Duration::from_secs(5)).await })
    });
    let (mut answered, mut full) = (0, 0);
    for ask in futures_util::future::join_all(asks).await {
        match ask.unwrap() {
            Ok(_) => answered += 1,
            Err(AgentError::Send(SendError::MailboxFull { capacity: 2, .. })) => full += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        answered >= 1 && full >= 1,
        "{answered} answered, {full} full"
    );
    assert_eq!(answered + full, 12);
    near.shutdown();
    far.shutdown();
}
