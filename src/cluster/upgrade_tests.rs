//! A rolling upgrade in one process: two nodes over real TCP links, one of
//! the release before (protocol 3, or its agent's messages at version 1)
//! and one of this release (protocol 3, the agent's messages at version 2,
//! with a field added). Messages and replies flow both ways.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use valueverse_runtime::{Agent, AgentMessage, HandlerError, Handling, RuntimeConfig, System};

use super::codec::PROTOCOL_VERSION;
use super::test_nodes::{self, TestNode, key_here, share_view};

const KIND: &str = "upgrade_greeter";
const MESSAGE_ID: u32 = 0x7e57;

/// Version 1 of the greeter's messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum GreetV1 {
    Greet { name: String },
}

/// Version 2: a greeting may carry a title (absent from version 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum GreetV2 {
    Greet {
        name: String,
        #[serde(default)]
        title: Option<String>,
    },
}

impl AgentMessage for GreetV1 {
    fn name(&self) -> &'static str {
        "greet"
    }
}

impl AgentMessage for GreetV2 {
    fn name(&self) -> &'static str {
        "greet"
    }
}

/// The release before's greeter.
struct GreeterV1;

impl Agent for GreeterV1 {
    const KIND: &'static str = KIND;
    const MESSAGE_ID: u32 = MESSAGE_ID;
    const MESSAGE_VERSION: u16 = 1;
    type State = ();
    type Msg = GreetV1;
    type Reply = String;

    fn init(_key: &str) {}

    fn handle(_: &mut (), msg: GreetV1, ctx: &mut Handling<'_>) -> Result<String, HandlerError> {
        let GreetV1::Greet { name } = msg;
        Ok(format!("v1 {} greets {name}", ctx.key()))
    }
}

/// This release's greeter.
struct GreeterV2;

impl Agent for GreeterV2 {
    const KIND: &'static str = KIND;
    const MESSAGE_ID: u32 = MESSAGE_ID;
    const MESSAGE_VERSION: u16 = 2;
    type State = ();
    type Msg = GreetV2;
    type Reply = String;

    fn init(_key: &str) {}

    fn handle(_: &mut (), msg: GreetV2, ctx: &mut Handling<'_>) -> Result<String, HandlerError> {
        let GreetV2::Greet { name, title } = msg;
        let title = title.map_or(String::new(), |title| format!("{title} "));
        Ok(format!("v2 {} greets {title}{name}", ctx.key()))
    }
}

/// A node hosting `A`, its transport offering at most `max_version`.
async fn node<A: Agent>(name: &str, max_version: u16) -> TestNode {
    test_nodes::node(
        name,
        RuntimeConfig::default(),
        max_version,
        b"upgrade secret",
        |system| {
            system.register::<A>();
        },
    )
    .await
}

/// The release before (`old_protocol`) and this one, each in the other's
/// view; answers them and a key each owns.
async fn pair(old_protocol: u16) -> [(System, String); 2] {
    let old = node::<GreeterV1>("old", old_protocol).await;
    let new = node::<GreeterV2>("new", PROTOCOL_VERSION).await;
    share_view(&[&old, &new], &[KIND]);
    let (old_key, new_key) = (key_here(&old.system, KIND), key_here(&new.system, KIND));
    [(old.system, old_key), (new.system, new_key)]
}

async fn both_ways(old_protocol: u16) {
    let [(old, old_key), (new, new_key)] = pair(old_protocol).await;
    let within = Duration::from_secs(10);
    // The old node asks the new one: version 1 in, the reply back at 1.
    let answer = old
        .agent_by_key::<GreeterV1>(new_key.clone())
        .ask(GreetV1::Greet { name: "ada".into() }, within)
        .await
        .unwrap();
    assert_eq!(answer, format!("v2 {new_key} greets ada"));
    // The new node asks the old one: sent at version 1, the title dropped.
    let msg = GreetV2::Greet {
        name: "grace".into(),
        title: Some("admiral".into()),
    };
    let answer = new
        .agent_by_key::<GreeterV2>(old_key.clone())
        .ask(msg, within)
        .await;
    assert_eq!(answer.unwrap(), format!("v1 {old_key} greets grace"));
    // Each node still reaches its own instances at its own version.
    let msg = GreetV2::Greet {
        name: "grace".into(),
        title: Some("admiral".into()),
    };
    let answer = new
        .agent_by_key::<GreeterV2>(new_key.clone())
        .ask(msg, within)
        .await;
    assert_eq!(
        answer.unwrap(),
        format!("v2 {new_key} greets admiral grace")
    );
    // Tells go both ways too (answered by a later ask on the same link).
    old.agent_by_key::<GreeterV1>(new_key.clone())
        .tell(GreetV1::Greet {
            name: "tell".into(),
        })
        .unwrap();
    new.agent_by_key::<GreeterV2>(old_key.clone())
        .tell(GreetV2::Greet {
            name: "tell".into(),
            title: None,
        })
        .unwrap();
}

/// The release before speaks protocol 3: the link settles on 3 (envelopes
/// without an actor), and messages flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_release_before_and_one_of_this_release_talk_at_protocol_3() {
    both_ways(PROTOCOL_VERSION - 1).await;
}

/// Both speak protocol 4, with the greeter's messages at versions 1 and 2:
/// each sends what the other reads (told in the hello).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_messages_are_a_version_apart_talk_at_protocol_4() {
    both_ways(PROTOCOL_VERSION).await;
}

/// A node two protocol versions behind is refused with a reason, not fed
/// what it cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_two_protocol_versions_behind_is_refused() {
    let old = node::<GreeterV1>("ancient", PROTOCOL_VERSION - 2).await;
    let new = node::<GreeterV2>("new", PROTOCOL_VERSION).await;
    match old.transport.link(new.transport.local_addr()).await {
        Err(error) => assert!(
            error.to_string().contains("no protocol version in common"),
            "{error}"
        ),
        Ok(_) => panic!("a node speaking only protocol 1 got a link"),
    }
    drop((old, new));
}
