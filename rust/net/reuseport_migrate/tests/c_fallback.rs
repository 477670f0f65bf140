// SPDX-License-Identifier: GPL-2.0

//! Differential test: the Rust policy against the C choice that the kernel
//! builds with `CONFIG_REUSEPORT_MIGRATE_RUST=n`, compiled by `build.rs` from
//! the kernel tree named by `REUSEPORT_MIGRATE_KERNEL_TREE`. Both must pick
//! the same listener, or fail for the same reason, for every group, load,
//! hash, CPU preference, sysctl value and BPF verdict.
#![cfg(c_fallback)]

use core::ffi::c_int;

use proptest::prelude::*;
use reuseport_migrate_policy::policy::{choose, Bpf, Choice, Failure, Group, Mode};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn c_choose(
        n: u16,
        state: *const u8,
        cpu: *const c_int,
        backlog: *const u32,
        max_backlog: *const u32,
        incoming_cpu: u32,
        this_cpu: c_int,
        hash: u32,
        migrate_req: u8,
        bpf: u32,
        result: *mut c_int,
    ) -> c_int;
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;
/// A selected listener outside the group's slots, as the C wrapper marks it.
const SELECTED: u16 = u16::MAX;

/// One listener as the kernel stores it.
#[derive(Clone, Copy, Debug)]
struct Sock {
    state: u8,
    cpu: c_int,
    backlog: u32,
    max_backlog: u32,
}

/// A group as the C choice and the kernel glue see it. Never empty:
/// `reuseport_migrate_sock()` fails before choosing when no listener is left.
#[derive(Clone, Debug)]
struct Kernel {
    socks: Vec<Sock>,
    this_cpu: c_int,
}

/// What `reuseport_migrate.rs` reads of each listener, on the host's model.
impl Group for Kernel {
    type Sk = u16;
    fn num_socks(&self) -> u16 {
        self.socks.len() as u16
    }
    fn get(&self, i: u16) -> Option<u16> {
        (i < self.num_socks()).then_some(i)
    }
    fn usable(&self, i: u16) -> bool {
        self.socks[usize::from(i)].state != TCP_ESTABLISHED
    }
    fn on_this_cpu(&self, i: u16) -> bool {
        u32::try_from(self.socks[usize::from(i)].cpu) == u32::try_from(self.this_cpu)
    }
    fn has_room(&self, i: u16) -> bool {
        let s = self.socks[usize::from(i)];
        s.backlog <= s.max_backlog
    }
}

/// The C choice: the index, `SELECTED`, or the failure.
fn c(g: &Kernel, incoming_cpu: u32, hash: u32, migrate_req: u8, bpf: u32) -> Result<u16, u32> {
    let col = |f: fn(&Sock) -> u32| g.socks.iter().map(f).collect::<Vec<_>>();
    let state: Vec<u8> = g.socks.iter().map(|s| s.state).collect();
    let cpu: Vec<c_int> = g.socks.iter().map(|s| s.cpu).collect();
    let (backlog, max) = (col(|s| s.backlog), col(|s| s.max_backlog));
    let mut result = -1;
    // SAFETY: every array has `num_socks()` elements, `result` is valid.
    let i = unsafe {
        c_choose(
            g.num_socks(),
            state.as_ptr(),
            cpu.as_ptr(),
            backlog.as_ptr(),
            max.as_ptr(),
            incoming_cpu,
            g.this_cpu,
            hash,
            migrate_req,
            bpf,
            &mut result,
        )
    };
    match (result, i) {
        (0, -1) => Ok(SELECTED),
        (0, i) => Ok(u16::try_from(i).expect("an index of the group")),
        (why, -2) => Err(u32::try_from(why).expect("a failure")),
        other => panic!("C choice returned {other:?}"),
    }
}

/// The Rust choice, given the inputs as the glue decodes them.
fn rust(g: &Kernel, incoming_cpu: u32, hash: u32, migrate_req: u8, bpf: u32) -> Result<u16, u32> {
    let choice = Choice {
        hash,
        mode: Mode::from_sysctl(migrate_req),
        prefer_cpu: incoming_cpu != 0,
        bpf: match bpf {
            0 => Bpf::None,
            2 => Bpf::Selected(SELECTED),
            3 => Bpf::Drop,
            _ => Bpf::Pass,
        },
    };
    choose(g, choice).map_err(|f: Failure| f as u32)
}

fn sock() -> impl Strategy<Value = Sock> {
    (
        prop_oneof![Just(TCP_LISTEN), Just(TCP_ESTABLISHED)],
        -1..3,
        0u32..5,
        0u32..4,
    )
        .prop_map(|(state, cpu, backlog, max_backlog)| Sock {
            state,
            cpu,
            backlog,
            max_backlog,
        })
}

fn group() -> impl Strategy<Value = Kernel> {
    (prop::collection::vec(sock(), 1..40), 0..3)
        .prop_map(|(socks, this_cpu)| Kernel { socks, this_cpu })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn rust_and_c_choose_alike(g in group(), incoming_cpu in prop_oneof![Just(0u32), 1u32..4],
                               hash in any::<u32>(), migrate_req in 0u8..4, bpf in 0u32..4) {
        prop_assert_eq!(
            rust(&g, incoming_cpu, hash, migrate_req, bpf),
            c(&g, incoming_cpu, hash, migrate_req, bpf)
        );
    }
}

/// The generator reaches the cases that tell the modes apart: a full hashed
/// listener moved off by load awareness, and a CPU preference that matters.
#[test]
fn the_inputs_tell_the_modes_apart() {
    let listening = |backlog| Sock {
        state: TCP_LISTEN,
        cpu: -1,
        backlog,
        max_backlog: 1,
    };
    let g = Kernel {
        socks: vec![listening(2), listening(0)],
        this_cpu: 0,
    };
    // Hash 0 maps onto listener 0, whose queue is full.
    assert_eq!(c(&g, 0, 0, 1, 0), Ok(0));
    assert_eq!(c(&g, 0, 0, 2, 0), Ok(1));
    assert_eq!(rust(&g, 0, 0, 2, 0), Ok(1));
    let mut cpu = g.clone();
    cpu.socks[1].cpu = 0;
    assert_eq!(c(&cpu, 1, 0, 1, 0), Ok(1));
    assert_eq!(rust(&cpu, 1, 0, 1, 0), Ok(1));
    assert_eq!(c(&g, 0, 0, 0, 0), Err(Failure::Disabled as u32));
    assert_eq!(c(&g, 0, 0, 0, 3), Err(Failure::BpfCancelled as u32));
    assert_eq!(c(&g, 0, 0, 0, 2), Ok(SELECTED));
}
