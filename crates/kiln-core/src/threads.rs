//! Work spread over a few threads of its own, taken lowest first.
//!
//! For work that mostly waits (a blob arriving, a layer read as it
//! arrives): rayon's workers, one a core, would sit blocked in it while
//! the next item waited for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Scope;

/// Run `f(0)`, `f(1)`, … `f(n - 1)` on at most `threads` threads spawned in
/// `s`, each thread taking the lowest index not yet taken. Returns at once;
/// the scope waits for them.
pub fn spawn_in_order<'scope, F>(s: &'scope Scope<'scope, '_>, n: usize, threads: usize, f: F)
where
    F: Fn(usize) + Sync + Send + 'scope,
{
    let shared = std::sync::Arc::new((AtomicUsize::new(0), f));
    for _ in 0..n.min(threads) {
        let shared = shared.clone();
        s.spawn(move || {
            let (next, f) = &*shared;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                f(i);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every index once, on no more threads than asked.
    #[test]
    fn every_index_once() {
        let seen = Mutex::new(Vec::new());
        let threads = Mutex::new(std::collections::HashSet::new());
        std::thread::scope(|s| {
            spawn_in_order(s, 10, 3, |i| {
                seen.lock().unwrap().push(i);
                threads.lock().unwrap().insert(std::thread::current().id());
            })
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(threads.into_inner().unwrap().len() <= 3);
        std::thread::scope(|s| spawn_in_order(s, 0, 3, |_| panic!("no work")));
    }
}
