//! The cluster layer: who is in the cluster ([`membership`]), the wire
//! format between nodes ([`codec`]), the TCP links that carry it
//! ([`transport`]) inside an authenticated, encrypted channel ([`channel`]), and who owns which agent instance ([`placement`]).
//! [`router`] sends an `AgentRef`'s messages to the owner's node.

pub mod channel;
pub mod codec;
pub mod config;
pub mod launch;
pub mod membership;
pub mod node;
pub mod peer_requests;
pub mod placement;
#[cfg(test)]
mod remote_tests;
pub mod router;
#[cfg(test)]
mod test_nodes;
pub mod transport;
#[cfg(test)]
mod upgrade_tests;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 keyed by the cluster secret over `parts` in order, each
/// prefixed by its length (so no two lists of parts sign the same bytes):
/// what a node signs to prove it holds the secret (leases, peer requests).
pub(crate) fn signed(secret: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// Property tests' settings: `cases` cases, failures kept at `path`, in
/// this crate's `proptest-regressions/` (proptest's default would look for
/// the `src` of the file's crate, which a crate inside `src/` is not).
#[cfg(test)]
pub(crate) fn regressions_at(cases: u32, path: &'static str) -> proptest::test_runner::Config {
    use proptest::test_runner::FileFailurePersistence;
    proptest::test_runner::Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        ..proptest::test_runner::Config::with_cases(cases)
    }
}

/// The largest single allocation a piece of code makes (tests only): the
/// property tests check that nothing a peer sends makes a node allocate
/// past the declared caps.
#[cfg(test)]
pub(crate) mod largest_allocation {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Tracking;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = ARMED.try_with(|armed| {
            if armed.get() {
                let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
            }
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Tracking = Tracking;

    /// Runs `f` on this thread; answers its result and the largest single
    /// allocation it made.
    pub(crate) fn during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|largest| largest.set(0));
        ARMED.with(|armed| armed.set(true));
        let out = f();
        ARMED.with(|armed| armed.set(false));
        (out, LARGEST.with(Cell::get))
    }
}
