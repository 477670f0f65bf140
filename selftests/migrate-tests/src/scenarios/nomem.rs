// SPDX-License-Identifier: GPL-2.0
//! A migration that runs out of memory: close() of a listener whose accept
//! queue holds two children fails the first allocation that
//! inet_csk_listen_stop() makes for a migration, once, in the closing
//! thread only (failslab with a task filter and a stacktrace filter on
//! inet_csk_listen_stop()). That is the request clone, or with a migrate
//! program attached the zero-length skb the program runs on. The first
//! child is reset and counted as NoMem; the second one still moves.
//!
//! The syncookie case makes the children from cookies: their requests have
//! no rsk_listener, which the failure count must not read.
//!
//! Only the debug flavour has the fault-injection controls; elsewhere the
//! tests skip.

use anyhow::Result;

use super::common::{connect_greet, steered_group, u};
use crate::bpf::{Migrate, Stat};
use crate::faults::{available, FailThisThread, Injection, Injector, Kallsyms, Plan};
use crate::harness::{
    count_on, exchange, note, set_migrate_req, set_sysctl, start_trace, Checks, Family, Group,
    Kernel, Reason, Skip, Stop, TcpExt,
};

/// What runs out of memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    /// inet_reqsk_clone(): the request that moves the child.
    Clone,
    /// reuseport_migrate_sock(): the skb a migrate program runs on.
    BpfSkb,
    /// The request clone of a child made from a syncookie.
    CookieClone,
}

pub fn nomem_at_close(fam: Family, kernel: Kernel, what: Alloc) -> Result<()> {
    const N: usize = 2;
    if !available(Injector::Slab) {
        return Err(Skip("kernel without failslab (the debug flavour has it)".into()).into());
    }
    let within = Kallsyms::read()?.span(&["inet_csk_listen_stop"])?;
    set_migrate_req(true)?;
    if what == Alloc::CookieClone {
        set_sysctl("net.ipv4.tcp_syncookies", "2")?;
    }
    let mut ck = Checks::new();
    let (mut g, steer) = match what {
        Alloc::BpfSkb => {
            let (g, steer) = steered_group(fam, 2)?;
            steer.place_syns(Some(0))?;
            steer.on_migrate(Migrate::To(1))?;
            (g, Some(steer))
        }
        _ => (Group::bind(fam, 2)?, None),
    };
    if steer.is_none() {
        g.listen(0)?;
    }
    let clients = connect_greet(fam, &g, 0..N)?;
    ck.eq("L0 queue", g.wait_queued(0, N as u32)?, N as u32);
    if steer.is_none() {
        g.listen(1)?;
    }
    ck.gate("setup")?;

    let plan = Plan {
        probability: 100,
        times: 1,
        task_only: true,
        within,
        except: (0, 0),
        caches: match what {
            Alloc::BpfSkb => &["skbuff_head_cache"],
            _ => &["request_sock_TCP", "request_sock_TCPv6"],
        },
    };
    let Some(inj) = Injection::start(Injector::Slab, &plan)? else {
        return Err(Skip("kernel without failslab (the debug flavour has it)".into()).into());
    };
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;
    {
        let _me = FailThisThread::new()?;
        g.stop(0, Stop::Close)?;
    }
    let injected = inj.injected()?;
    drop(inj);
    ck.eq("allocations failed", injected, 1);
    ck.eq("L1 queue after close", g.queued(1)?, 1);
    let now = ck.reasons(
        kernel,
        &start,
        trace.as_ref(),
        "child",
        &[(Reason::NoMem, 1)],
    )?;
    ck.migrations("", &start, &now, 1, 1)?;
    ck.gate("migration")?;

    let acc = g.accept_all(1)?;
    ck.eq("accepted from L1", count_on(&acc, 1), 1);
    let ex = exchange(&clients, &acc)?;
    ex.check_served(&mut ck, 1);
    ck.eq(
        "the client of the failed migration",
        ex.orphans.to_string(),
        "data=0 reset=1 eof=0 silent=0 error=0".to_string(),
    );
    if let Some(s) = &steer {
        ck.eq(
            "migrations the program ran for",
            s.stat(Stat::MigrateEstablished)?,
            u(1),
        );
    }
    note("one allocation failed: one child reset as NoMem, the other moved");
    ck.finish()
}
