// SPDX-License-Identifier: GPL-2.0
//! The start the park tests share: the grace set, the namespace settled
//! idle, the counters read; then L0 alone on its port with QUEUED
//! children, its port traced, and (most tests) L0 closed and parked.

use std::time::Instant;

use anyhow::Result;

use super::common::children_on_l0;
use super::stop_start::{set_grace, wait_ends, QUEUED};
use crate::harness::{
    event_timeout, start_trace, Checks, Client, Family, Group, Idle, Kernel, Stop, TcpExt, Trace,
};

/// Sets the grace (see [`set_grace`]), then takes the idle values a test
/// must come back to, a fresh set of checks and the counters the test
/// counts from.
pub(super) fn settled(kernel: Kernel, grace_ms: u64) -> Result<(Idle, Checks, TcpExt)> {
    set_grace(kernel, grace_ms)?;
    let idle = Idle::settle()?;
    Ok((idle, Checks::new(), TcpExt::read()?))
}

/// What a park test goes on with: its idle values, its checks, the
/// counters it counts from, L0's port, the port's trace (None on base)
/// and L0's clients.
pub(super) type Parts = (Idle, Checks, TcpExt, u16, Option<Trace>, Vec<Client>);

/// L0 on a port of its own with QUEUED children, on the way to its park.
pub(super) struct Parked {
    pub(super) kernel: Kernel,
    pub(super) idle: Idle,
    pub(super) ck: Checks,
    /// The counters before L0 was bound.
    pub(super) start: TcpExt,
    pub(super) g: Group,
    pub(super) port: u16,
    /// The park and migration events of the port (None on base).
    pub(super) trace: Option<Trace>,
    pub(super) clients: Vec<Client>,
}

impl Parked {
    /// [`settled`] with `grace_ms`; `bind` makes L0's group, its port is
    /// traced, and QUEUED clients connect and greet until their children
    /// wait in L0's accept queue. L0 still listens.
    pub(super) fn queue(
        fam: Family,
        kernel: Kernel,
        grace_ms: u64,
        bind: impl FnOnce() -> Result<Group>,
    ) -> Result<Parked> {
        let (idle, mut ck, start) = settled(kernel, grace_ms)?;
        let g = bind()?;
        let port = g.port;
        let trace = start_trace(kernel, port)?;
        let clients = children_on_l0(fam, &g, &mut ck, QUEUED)?;
        Ok(Parked {
            kernel,
            idle,
            ck,
            start,
            g,
            port,
            trace,
            clients,
        })
    }

    /// L0 closes; returns when.
    pub(super) fn close(&mut self) -> Result<Instant> {
        self.g.stop(0, Stop::Close)?;
        Ok(Instant::now())
    }

    /// Patched: waits until the close has parked L0, once, and goes no
    /// further if it has not. Base: nothing parks.
    pub(super) fn wait_parked(&mut self) -> Result<()> {
        if self.kernel == Kernel::Patched {
            wait_ends(
                &mut self.ck,
                "after the close",
                &self.start,
                &[("parked", 1)],
                event_timeout(),
            )?;
            self.ck.gate("parked")?;
        }
        Ok(())
    }

    /// What the test goes on with; L0's group, closed, goes.
    pub(super) fn parts(self) -> Parts {
        (
            self.idle,
            self.ck,
            self.start,
            self.port,
            self.trace,
            self.clients,
        )
    }
}

/// L0 alone on a fresh port with QUEUED children (see [`Parked::queue`])
/// closes and (patched) parks.
pub(super) fn park_with_children(fam: Family, kernel: Kernel, grace_ms: u64) -> Result<Parked> {
    park_with_children_of(fam, kernel, grace_ms, || Group::bind(fam, 1))
}

/// As [`park_with_children`], L0's group made by `bind`.
pub(super) fn park_with_children_of(
    fam: Family,
    kernel: Kernel,
    grace_ms: u64,
    bind: impl FnOnce() -> Result<Group>,
) -> Result<Parked> {
    let mut p = Parked::queue(fam, kernel, grace_ms, bind)?;
    p.close()?;
    p.wait_parked()?;
    Ok(p)
}
