// SPDX-License-Identifier: GPL-2.0

//! Cost of the target choice alone, on the host (not emulated): the
//! policy's hash mode and load-aware mode against a plain loop written like
//! upstream's C `reuseport_select_sock_by_hash()`, over the same group.
//!
//! The in-kernel cost of a whole migration (locks, clone, queueing) is
//! measured by `scripts/bench` in a VM; this isolates the part the series
//! changes. Prints one JSON object: ns per call for each variant and group
//! size.

use std::hint::black_box;
use std::time::Instant;

use reuseport_migrate_policy::policy::{choose, Bpf, Choice, Group, Mode};

/// A group laid out like the kernel's: per listener, "listening" and the
/// accept queue's length and limit.
struct Listeners {
    listening: Vec<bool>,
    backlog: Vec<u32>,
    max_backlog: Vec<u32>,
}

impl Group for Listeners {
    type Sk = u16;
    fn num_socks(&self) -> u16 {
        self.listening.len() as u16
    }
    fn get(&self, i: u16) -> Option<u16> {
        (i < self.num_socks()).then_some(i)
    }
    fn usable(&self, i: u16) -> bool {
        self.listening[usize::from(i)]
    }
    fn on_this_cpu(&self, _i: u16) -> bool {
        true
    }
    fn has_room(&self, i: u16) -> bool {
        let i = usize::from(i);
        self.backlog[i] <= self.max_backlog[i]
    }
}

/// Upstream's C choice, transcribed: start at the scaled hash, take the
/// first listening socket.
fn upstream_like(g: &Listeners, hash: u32) -> Option<u16> {
    let n = g.listening.len();
    let start = ((u64::from(hash) * n as u64) >> 32) as usize;
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| g.listening[i])
        .map(|i| i as u16)
}

fn policy(g: &Listeners, hash: u32, mode: Mode) -> Option<u16> {
    let choice = Choice {
        hash,
        mode,
        prefer_cpu: false,
        bpf: Bpf::None,
    };
    choose(g, choice).ok()
}

const CALLS: u32 = 5_000_000;

fn ns_per_call(f: impl Fn(u32) -> Option<u16>) -> f64 {
    let mut hash = 0x1234_5678u32;
    let t = Instant::now();
    for _ in 0..CALLS {
        hash = hash.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        black_box(f(black_box(hash)));
    }
    t.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn main() {
    let mut rows = Vec::new();
    for n in [2usize, 8, 32, 128] {
        let mut g = Listeners {
            listening: vec![true; n],
            backlog: vec![0; n],
            max_backlog: vec![128; n],
        };
        let upstream = ns_per_call(|h| upstream_like(&g, h));
        let hash = ns_per_call(|h| policy(&g, h, Mode::Hash));
        let aware = ns_per_call(|h| policy(&g, h, Mode::LoadAware));
        // Half of the listeners full: the load-aware mode looks further.
        for i in (0..n).step_by(2) {
            g.backlog[i] = 129;
        }
        let aware_half_full = ns_per_call(|h| policy(&g, h, Mode::LoadAware));
        rows.push(format!(
            "{{\"listeners\": {n}, \"upstream_like_ns\": {upstream:.2}, \"hash_ns\": {hash:.2}, \
             \"load_aware_ns\": {aware:.2}, \"load_aware_half_full_ns\": {aware_half_full:.2}}}"
        ));
    }
    println!("[{}]", rows.join(", "));
}
