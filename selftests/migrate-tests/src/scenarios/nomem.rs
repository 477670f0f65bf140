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
//! Requests still in the handshake move later, in softirq context: at
//! their final ACK (inet_csk_complete_hashdance()) or when their SYN+ACK
//! timer fires (reqsk_timer_handler()). A task filter cannot reach those,
//! so the failure is confined by the stack (some frame in that function)
//! and by the cache (request sockets only) instead.
//!
//! Only the debug flavour has the fault-injection controls; elsewhere the
//! tests skip.

use anyhow::Result;

use super::common::{connect_greet, steered_group, u, SYNACK_RTX_TIMEOUT};
use super::in_flight::Trigger;
use crate::bpf::{HoldAck, Migrate, Stat};
use crate::faults::{available, FailThisThread, Injection, Injector, Kallsyms, Plan};
use crate::harness::{
    count_on, event_timeout, exchange, note, pin_to_cpu, scaled, set_migrate_req, set_sysctl,
    start_trace, wait_until, Checks, Client, Family, Group, Kernel, Reason, Skip, Stop, TcpExt,
    Trace, MIGRATE_FAIL, MIGRATE_OK, SYNACK_RETRANS,
};

/// What one failed allocation leaves of two connections: since `start`,
/// one migration of `kind` failed as NoMem (counted and traced) and one
/// succeeded; L1 serves one client, and the other was reset.
fn one_lost_one_moved(
    ck: &mut Checks,
    kernel: Kernel,
    g: &Group,
    clients: &[Client],
    start: &TcpExt,
    trace: Option<&Trace>,
    kind: &str,
) -> Result<()> {
    let now = ck.reasons(kernel, start, trace, kind, &[(Reason::NoMem, 1)])?;
    ck.migrations("", start, &now, 1, 1)?;
    ck.gate("migration")?;
    let acc = g.accept_all(1)?;
    ck.eq("accepted from L1", count_on(&acc, 1), 1);
    let ex = exchange(clients, &acc)?;
    ex.check_served(ck, 1);
    ck.eq(
        "the client of the failed migration",
        ex.orphans.to_string(),
        "data=0 reset=1 eof=0 silent=0 error=0".to_string(),
    );
    Ok(())
}

/// The request socket caches of both families.
const REQUEST_CACHES: &[&str] = &["request_sock_TCP", "request_sock_TCPv6"];

fn no_failslab() -> anyhow::Error {
    Skip("kernel without failslab (the debug flavour has it)".into()).into()
}

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
        return Err(no_failslab());
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
            _ => REQUEST_CACHES,
        },
    };
    let Some(inj) = Injection::start(Injector::Slab, &plan)? else {
        return Err(no_failslab());
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
    one_lost_one_moved(
        &mut ck,
        kernel,
        &g,
        &clients,
        &start,
        trace.as_ref(),
        "child",
    )?;
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

/// Two requests of L0 wait for their final ACK (held back) when L0 closes;
/// L1 listens. The first clone of a request on the path `trigger` names
/// fails, once, whatever task the softirq runs in: that request is lost
/// as NoMem (its client reset), the other one moves to L1 and is served.
pub fn nomem_in_flight(fam: Family, kernel: Kernel, trigger: Trigger) -> Result<()> {
    const N: usize = 2;
    if !available(Injector::Slab) {
        return Err(no_failslab());
    }
    let syms = Kallsyms::read()?;
    // The series' TCP calls inet_csk_complete_hashdance_migrate(); the base
    // kernel's, inet_csk_complete_hashdance().
    let func = match trigger {
        Trigger::Ack => syms.first_of(&[
            "inet_csk_complete_hashdance_migrate",
            "inet_csk_complete_hashdance",
        ]),
        Trigger::Timer => "reqsk_timer_handler",
    };
    let within = syms.span(&[func])?;
    set_migrate_req(true)?;
    let mut ck = Checks::new();
    // Armed first: only a migration clones a request in those functions,
    // and the fewer steps between the connects and the close, the surer
    // the ACK case is that no SYN+ACK timer fires first.
    let plan = Plan {
        probability: 100,
        times: 1,
        task_only: false,
        within,
        except: (0, 0),
        caches: REQUEST_CACHES,
    };
    let Some(inj) = Injection::start(Injector::Slab, &plan)? else {
        return Err(no_failslab());
    };
    let mut g = Group::bind(fam, 2)?;
    g.listen(0)?;
    let hold = HoldAck::attach(g.port)?;
    // tracefs waits for RCU when it sets the filters: before the connects,
    // not inside the 1 s that the ACK case has before the SYN+ACK timer.
    let trace = start_trace(kernel, g.port)?;
    let start = TcpExt::read()?;
    // One CPU for every handshake, so the two timers fire one after the
    // other: failslab's "times" is checked and then decremented, and two
    // CPUs at once could both fail.
    pin_to_cpu(0)?;
    let mut clients = (0..N)
        .map(|id| Client::connect(fam, g.addr(), id))
        .collect::<Result<Vec<_>>>()?;
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(N)))?;
    ck.eq("final ACKs held back", hold.dropped()?, u(N));
    g.listen(1)?;
    ck.gate("handshakes held")?;

    g.stop(0, Stop::Close)?;
    ck.eq(
        "allocations failed before the migrations",
        inj.injected()?,
        0,
    );
    let attempts = || -> Result<u64> {
        let t = TcpExt::read()?;
        Ok(t.since(&start, MIGRATE_OK)? + t.since(&start, MIGRATE_FAIL)?)
    };
    if trigger == Trigger::Timer {
        // Both timers move (or fail to move) their request while the
        // ACKs, and the ACKs of the SYN+ACKs they retransmit, are held.
        wait_until(scaled(SYNACK_RTX_TIMEOUT), || Ok(attempts()? >= u(N)))?;
        ck.eq("migrations tried by the timers", attempts()?, u(N));
    }
    hold.release()?;
    for c in &mut clients {
        c.send_hello()?;
    }
    wait_until(event_timeout(), || Ok(attempts()? >= u(N)))?;
    let injected = inj.injected()?;
    drop(inj);
    ck.eq("allocations failed", injected, 1);
    if trigger == Trigger::Ack {
        // Else a timer, not the ACK, moved the requests.
        ck.eq(
            "TCPSynRetrans (ACK path only)",
            TcpExt::read()?.since(&start, SYNACK_RETRANS)?,
            0,
        );
    }
    one_lost_one_moved(
        &mut ck,
        kernel,
        &g,
        &clients,
        &start,
        trace.as_ref(),
        "request",
    )?;
    note(&format!(
        "one request clone failed in {func}: one client reset as NoMem, the other moved"
    ));
    ck.finish()
}
