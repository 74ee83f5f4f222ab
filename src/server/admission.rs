//! What a client gets before it has sent a single request: a bounded number of connections per
//! address, and a share of one memory budget for request heads not yet read whole. Without
//! them, 2,000 connections each trickling 60 KB of a head held 133 MB before any
//! authentication; with them, one address holds at most its connections' worth of heads and
//! all clients together at most the budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::config::{CONNECTIONS_PER_ADDRESS, HEAD_MEMORY};

/// The gate every accepted connection passes.
#[derive(Debug)]
pub struct Admission {
    per_address: usize,
    head_memory: usize,
    /// Open connections per address; accept path only, short sections.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Bytes read by connections whose first request has not begun.
    held: AtomicUsize,
}

impl Admission {
    /// At most `per_address` connections per client address, and `head_memory` bytes read by
    /// connections before their first request begins.
    pub fn new(per_address: usize, head_memory: usize) -> Arc<Admission> {
        Arc::new(Admission { per_address, head_memory, open: Mutex::default(), held: AtomicUsize::new(0) })
    }

    /// Admits a connection from `address`, unless that address holds as many as it may.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(Admitted { admission: self.clone(), address, held: 0, begun: false })
    }

    /// Bytes held now by connections before their first request.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// An admitted connection: counted against its address until dropped, and its bytes read
/// before its first request counted against the head budget.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    /// Bytes this connection read before its first request began.
    held: usize,
    /// Its first request has begun: nothing is counted any more.
    begun: bool,
}

impl Admitted {
    /// Counts `n` bytes just read, unless the connection's first request has `begun` (asked
    /// only until it has). `false` when they do not fit the head budget: the connection must
    /// end.
    pub fn read(&mut self, n: usize, begun: impl FnOnce() -> bool) -> bool {
        if self.begun {
            return true;
        }
        if begun() {
            self.release();
            self.begun = true;
            return true;
        }
        self.held += n;
        self.admission.held.fetch_add(n, Ordering::Relaxed) + n <= self.admission.head_memory
    }

    fn release(&mut self) {
        self.admission.held.fetch_sub(std::mem::take(&mut self.held), Ordering::Relaxed);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.release();
        let mut open = self.admission.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_address_and_heads_in_all() {
        let admission = Admission::new(2, 100);
        let (a, b) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3]));
        let mut first = admission.admit(a).expect("admitted");
        let second = admission.admit(a).expect("admitted");
        assert!(admission.admit(a).is_none(), "a third from one address");
        let mut other = admission.admit(b).expect("another address");
        drop(second);
        assert!(admission.admit(a).is_some(), "room again once one ends");
        assert!(first.read(60, || false));
        assert!(!other.read(60, || false), "120 bytes of heads exceed 100");
        assert!(other.read(0, || true), "its first request began: released");
        assert_eq!(admission.held(), 60);
        assert!(
            first.read(1 << 20, || true) && first.read(1 << 20, || false),
            "after the first request nothing counts"
        );
        assert_eq!(admission.held(), 0);
        drop((first, other));
        assert!(admission.open.lock().unwrap().is_empty());
    }
}
