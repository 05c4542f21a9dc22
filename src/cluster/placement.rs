//! Who owns an agent instance: `owner(kind, key)` is the candidate with the
//! highest hash of `(node, kind, key)` (rendezvous hashing). A node joining
//! or leaving moves only the keys it gains or held; every node computes the
//! same owner from the same member list, with no coordination. The hash is
//! XXH3, whose output is fixed by its specification, so nodes of different
//! builds agree.

use xxhash_rust::xxh3::Xxh3;

/// A node that may own instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    /// Agent kinds it hosts.
    pub kinds: Vec<String>,
    pub gpus: u32,
}

fn score(node: &str, kind: &str, key: &str) -> u64 {
    // Lengths first: ("ab", "c") and ("a", "bc") must not collide. The
    // parts go into one buffer and one hash (it is on every message's
    // path); the streaming hasher gives the same value for longer input.
    const INLINE: usize = 256;
    let size = 24 + node.len() + kind.len() + key.len();
    if size > INLINE {
        let mut hasher = Xxh3::new();
        for part in [node, kind, key] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        return hasher.digest();
    }
    let mut buffer = [0u8; INLINE];
    let mut at = 0;
    for part in [node, kind, key] {
        buffer[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
        buffer[at + 8..at + 8 + part.len()].copy_from_slice(part.as_bytes());
        at += 8 + part.len();
    }
    xxhash_rust::xxh3::xxh3_64(&buffer[..at])
}

/// The owner of `(kind, key)` among `candidates`: the highest score among
/// those hosting the kind; with `prefer_gpu`, among those with a GPU when
/// any has one. Ties (never in practice) go to the smaller node name.
pub fn owner<'a>(
    kind: &str,
    key: &str,
    candidates: &'a [Candidate],
    prefer_gpu: bool,
) -> Option<&'a Candidate> {
    let hosting = || {
        candidates
            .iter()
            .filter(move |candidate| candidate.kinds.iter().any(|hosted| hosted == kind))
    };
    let with_gpu = prefer_gpu && hosting().any(|candidate| candidate.gpus > 0);
    hosting()
        .filter(|candidate| !with_gpu || candidate.gpus > 0)
        .max_by(|a, b| {
            score(&a.node, kind, key)
                .cmp(&score(&b.node, kind, key))
                .then_with(|| b.node.cmp(&a.node))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|name| Candidate {
                node: (*name).to_owned(),
                kinds: vec!["architect".into(), "simulation".into()],
                gpus: 0,
            })
            .collect()
    }

    fn owners(candidates: &[Candidate]) -> Vec<String> {
        (0..3000)
            .map(|key| {
                owner("architect", &format!("m-{key}"), candidates, false)
                    .unwrap()
                    .node
                    .clone()
            })
            .collect()
    }

    #[test]
    fn keys_spread_evenly_and_a_leaving_node_moves_only_its_own() {
        let three = nodes(&["n1", "n2", "n3"]);
        let before = owners(&three);
        for node in ["n1", "n2", "n3"] {
            let share = before.iter().filter(|owner| *owner == node).count();
            assert!((800..1200).contains(&share), "{node}: {share} of 3000");
        }
        let after = owners(&nodes(&["n1", "n3"]));
        for (before, after) in before.iter().zip(&after) {
            if before != "n2" {
                assert_eq!(before, after, "a key of a staying node moved");
            } else {
                assert_ne!(after, "n2");
            }
        }
        // And a node coming back takes back exactly what it had.
        assert_eq!(owners(&three), before);
    }

    #[test]
    fn only_nodes_hosting_the_kind_own_it_and_gpus_are_preferred() {
        // Pinned: a change of hash would move every key of a running cluster.
        const GOLDEN: u64 = 8_438_380_971_054_567_257;
        let mut candidates = nodes(&["n1", "n2", "n3"]);
        candidates[0].kinds = vec!["simulation".into()];
        candidates[2].gpus = 1;
        for key in 0..200 {
            let key = format!("k{key}");
            assert_ne!(
                owner("architect", &key, &candidates, false).unwrap().node,
                "n1"
            );
            assert_eq!(
                owner("simulation", &key, &candidates, true).unwrap().node,
                "n3"
            );
        }
        assert!(owner("executor", "k", &candidates, false).is_none());
        // The hash is fixed by XXH3's specification: nodes of other builds agree.
        assert_eq!(score("n1", "architect", "m-1"), GOLDEN);
        // Long keys take the streaming path: the same function of the bytes.
        let long = "x".repeat(300);
        let mut hasher = Xxh3::new();
        for part in ["n1", "architect", long.as_str()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        assert_eq!(score("n1", "architect", &long), hasher.digest());
        let mut joined = Vec::new();
        for part in ["n1", "architect", "m-1"] {
            joined.extend_from_slice(&(part.len() as u64).to_le_bytes());
            joined.extend_from_slice(part.as_bytes());
        }
        assert_eq!(xxhash_rust::xxh3::xxh3_64(&joined), GOLDEN);
        assert_ne!(score("ab", "c", "k"), score("a", "bc", "k"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{Candidate, owner};

        fn cluster() -> impl Strategy<Value = Vec<Candidate>> {
            proptest::collection::btree_set("[a-z][a-z0-9]{0,6}", 1..8).prop_map(|names| {
                names
                    .into_iter()
                    .map(|node| Candidate {
                        node,
                        kinds: vec!["architect".into()],
                        gpus: 0,
                    })
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(crate::regressions_at(256, "proptest-regressions/placement.txt"))]

            /// Every key has one owner among the candidates, whatever their
            /// order; when a node leaves, only its keys move, and each to a
            /// node that stayed.
            #[test]
            fn one_owner_per_key_and_a_leaving_node_moves_only_its_keys(
                candidates in cluster(),
                keys in proptest::collection::vec(".{0,24}", 1..40),
                leaving in any::<prop::sample::Index>(),
            ) {
                let mut reversed = candidates.clone();
                reversed.reverse();
                let gone = leaving.index(candidates.len());
                let stayed: Vec<Candidate> = candidates
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| *index != gone)
                    .map(|(_, candidate)| candidate.clone())
                    .collect();
                for key in &keys {
                    let before = owner("architect", key, &candidates, false).unwrap();
                    prop_assert_eq!(
                        &before.node,
                        &owner("architect", key, &reversed, false).unwrap().node
                    );
                    let after = owner("architect", key, &stayed, false);
                    if before.node == candidates[gone].node {
                        if let Some(after) = after {
                            prop_assert_ne!(&after.node, &candidates[gone].node);
                        }
                    } else {
                        prop_assert_eq!(&after.unwrap().node, &before.node);
                    }
                }
            }
        }
    }
}
