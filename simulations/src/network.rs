//! Network: flow-level bandwidth sharing on links.
//!
//! Each link is a processor-sharing server: its `n` active transfers each get
//! `capacity / n` bytes per second, recomputed whenever one starts or ends.
//! That is simulated exactly in O(log n) per event with a virtual clock: `V`
//! grows at `capacity / n` per second, a transfer of `s` bytes that starts at
//! virtual time `V0` ends when `V` reaches `V0 + s`, so transfers end in order
//! of their virtual finish and only the earliest needs an event. When a link's
//! next finish changes, its generation number moves on and older events for it
//! are ignored.
//!
//! A transfer crosses one link, its bottleneck: the region's LAN, the link
//! between two regions, or the origin's link into a region.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// An f64 ordered by `total_cmp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ordered(pub f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone)]
struct Link {
    capacity: f64,
    virtual_time: f64,
    updated: f64,
    flows: BinaryHeap<Reverse<(Ordered, u32)>>,
    generation: u64,
    bytes: f64,
}

/// All links.
#[derive(Debug, Clone)]
pub struct Network {
    links: Vec<Link>,
}

/// The next finish on a link, to be scheduled by the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextFinish {
    /// Absolute time of the finish, seconds.
    pub time: f64,
    /// Generation the event must carry to be valid.
    pub generation: u64,
}

impl Network {
    /// Links with these capacities in bytes per second.
    pub fn new(capacities: &[f64]) -> Network {
        Network {
            links: capacities
                .iter()
                .map(|&capacity| Link {
                    capacity,
                    virtual_time: 0.0,
                    updated: 0.0,
                    flows: BinaryHeap::new(),
                    generation: 0,
                    bytes: 0.0,
                })
                .collect(),
        }
    }

    fn advance(link: &mut Link, now: f64) {
        let n = link.flows.len();
        if n > 0 && now > link.updated {
            link.virtual_time += (now - link.updated) * link.capacity / n as f64;
        }
        link.updated = link.updated.max(now);
    }

    fn next(link: &mut Link, now: f64) -> Option<NextFinish> {
        link.generation += 1;
        let Reverse((Ordered(finish), _)) = *link.flows.peek()?;
        let n = link.flows.len() as f64;
        let wait = ((finish - link.virtual_time) * n / link.capacity).max(0.0);
        Some(NextFinish {
            time: now + wait,
            generation: link.generation,
        })
    }

    /// Starts transfer `flow` of `bytes` on `link` at `now`; returns the
    /// link's new next finish.
    pub fn start(&mut self, link: usize, now: f64, flow: u32, bytes: u64) -> Option<NextFinish> {
        let l = &mut self.links[link];
        Self::advance(l, now);
        let size = (bytes as f64).max(1.0);
        l.bytes += size;
        l.flows
            .push(Reverse((Ordered(l.virtual_time + size), flow)));
        Self::next(l, now)
    }

    /// Handles a finish event; returns the transfers that ended (empty for a
    /// stale event) and the link's new next finish.
    pub fn finish(
        &mut self,
        link: usize,
        now: f64,
        generation: u64,
    ) -> (Vec<u32>, Option<NextFinish>) {
        let l = &mut self.links[link];
        if generation != l.generation {
            return (Vec::new(), None);
        }
        Self::advance(l, now);
        let mut done = Vec::new();
        // The event is for the earliest transfer; others ending within rounding go too.
        if let Some(Reverse((_, flow))) = l.flows.pop() {
            done.push(flow);
        }
        while let Some(&Reverse((Ordered(f), flow))) = l.flows.peek() {
            if f > l.virtual_time + 1e-6 * f.abs().max(1.0) {
                break;
            }
            l.flows.pop();
            done.push(flow);
        }
        if l.flows.is_empty() {
            l.virtual_time = 0.0;
        }
        let next = Self::next(l, now);
        (done, next)
    }

    /// Transfers active on a link.
    pub fn active(&self, link: usize) -> usize {
        self.links[link].flows.len()
    }

    /// Bytes ever started on each link.
    pub fn bytes_per_link(&self) -> Vec<f64> {
        self.links.iter().map(|l| l.bytes).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_flows_share_then_one_speeds_up() {
        // 100 B/s; A = 100 B at t=0, B = 50 B at t=0.
        let mut net = Network::new(&[100.0]);
        net.start(0, 0.0, 1, 100);
        let next = net.start(0, 0.0, 2, 50).unwrap();
        // Both at 50 B/s: B ends at t=1.
        assert!((next.time - 1.0).abs() < 1e-9);
        let (done, next) = net.finish(0, next.time, next.generation);
        assert_eq!(done, vec![2]);
        // A has 50 B left, alone at 100 B/s: ends at t=1.5.
        let next = next.unwrap();
        assert!((next.time - 1.5).abs() < 1e-9);
        let (done, next) = net.finish(0, next.time, next.generation);
        assert_eq!(done, vec![1]);
        assert!(next.is_none());
    }

    #[test]
    fn stale_events_are_ignored() {
        let mut net = Network::new(&[10.0]);
        let first = net.start(0, 0.0, 1, 100).unwrap();
        let _second = net.start(0, 1.0, 2, 100).unwrap();
        assert!(net.finish(0, first.time, first.generation).0.is_empty());
        assert_eq!(net.active(0), 2);
    }
}
