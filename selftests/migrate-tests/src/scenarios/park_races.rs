// SPDX-License-Identifier: GPL-2.0
//! Races of a parked listener's deferred close against the listeners that
//! come and go meanwhile, and against its namespace going away. The close
//! gate holds the parked listener's work in tcp_set_state(TCP_CLOSE) of
//! its __tcp_close(): the work has decided
//! how the park ended (adopted or expired, already counted) but the
//! listener is still hashed in TCP_LISTEN with everything it keeps, so a
//! listen() or a close() of the group runs exactly inside that window.
//!
//! The gate spins with interrupts off, so the work must run on CPU 0
//! while the test goes on from CPU 1. The work runs where it is queued:
//! by the expiry timer, armed by a close() on CPU 0 and kept there by a
//! spinner (an idle CPU hands its timers over), or by the listen() that
//! adopts, made on CPU 0 by a real-time thread that gets back to the test
//! before the kworker it woke runs. Parking is the series' own: on the
//! base kernel these tests skip, stop_start_* assert upstream's loss
//! there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::common::{children_on_l0, close_on_other_cpu, join, on_other_cpu, u};
use super::stop_start::{grace_ms, new_listener, set_grace, ADOPTED, EXPIRED, PARKED, QUEUED};
use crate::bpf::{Gate, GateAt};
use crate::harness::{
    enter_fresh_netns, event_timeout, exchange, fates, ip, link_exists, lock_in_memory, note,
    outrun_kworkers, pin_to_cpu, scaled, start_trace, wait_until, BusyCpu, Checks, Client,
    Deadline, Family, Group, Kernel, Netns, Skip, Stop, TcpExt, TimersStayLocal, Trace, MIGRATE_OK,
};

fn patched_only(kernel: Kernel) -> Result<()> {
    match kernel {
        Kernel::Patched => Ok(()),
        Kernel::Base => Err(Skip(
            "parking is the series' own (stop_start_* assert upstream's loss)".into(),
        )
        .into()),
    }
}

/// The parks since `start` and how they ended, as one comparable text.
fn parks(start: &TcpExt) -> Result<String> {
    let now = TcpExt::read()?;
    Ok(format!(
        "parked={} adopted={} expired={}",
        now.since(start, PARKED)?,
        now.since(start, ADOPTED)?,
        now.since(start, EXPIRED)?
    ))
}

/// What both races start from: L0 alone on its port with QUEUED children,
/// migrations on the port traced, the close gate attached but not armed,
/// and this thread on CPU 1, away from where the gate will spin.
struct Race {
    kernel: Kernel,
    ck: Checks,
    start: TcpExt,
    g: Group,
    trace: Option<Trace>,
    clients: Vec<Client>,
    gate: Gate,
    _timers: TimersStayLocal,
}

impl Race {
    fn new(fam: Family, kernel: Kernel, grace: u64) -> Result<Race> {
        patched_only(kernel)?;
        lock_in_memory()?;
        let timers = TimersStayLocal::new()?;
        set_grace(kernel, grace)?;
        let mut ck = Checks::new();
        let start = TcpExt::read()?;
        let g = Group::bind(fam, 1)?;
        let trace = start_trace(kernel, g.port)?;
        let clients = children_on_l0(fam, &g, &mut ck, QUEUED)?;
        let gate = Gate::attach(GateAt::Close)?;
        pin_to_cpu(1)?;
        Ok(Race {
            kernel,
            ck,
            start,
            g,
            trace,
            clients,
            gate,
            _timers: timers,
        })
    }

    /// The parks since the start and how they ended, checked as `what`.
    fn check_parks(&mut self, what: &str, want: &str) -> Result<()> {
        let got = parks(&self.start)?;
        self.ck.eq(what, got, want.into());
        Ok(())
    }

    /// `by` accepts and serves every child, each migrated `moves` times
    /// (the migrations of a park go through the migration tracepoint
    /// too), and the parks ended as `parks` says.
    fn served_by(mut self, by: &Group, moves: usize, parks: &str, how: &str) -> Result<()> {
        let acc = by.accept_all(QUEUED)?;
        self.ck.eq(&format!("accepted {how}"), acc.len(), QUEUED);
        exchange(&self.clients, &acc)?.check_all_served(&mut self.ck, QUEUED);
        let now = self
            .ck
            .reasons(self.kernel, &self.start, self.trace.as_ref(), "child", &[])?;
        self.check_parks("parks at the end", parks)?;
        self.ck
            .migrations("", &self.start, &now, u(moves * QUEUED), 0)?;
        note(&format!("{QUEUED} of {QUEUED} served {how}"));
        self.ck.finish()
    }
}

/// The grace ends and the work decides on expiry; a listener of the group
/// listens before the work unhashes the parked one. It joins the parked
/// listener's group, and the close the work finishes migrates every
/// queued child to it: an expiry that loses the race to a listen() loses
/// no connection. Counted as an expiry: that is what the work decided.
pub fn park_expiry_vs_join(fam: Family, kernel: Kernel) -> Result<()> {
    // Long enough that the gate is armed before the grace ends, however
    // late the close thread runs.
    let mut r = Race::new(fam, kernel, grace_ms() * 3)?;
    // CPU 0 arms the expiry timer and must keep it.
    let busy = BusyCpu::new(0)?;
    // Parks: the user's close() never reaches tcp_set_state(TCP_CLOSE).
    // The gate is armed once the park is counted: under TCG the close
    // thread has been seen to start seconds late, and the grace runs from
    // the park, not from the join.
    join(close_on_other_cpu(&mut r.g, 0)?)?;
    let mut seen = String::new();
    wait_until(event_timeout(), || {
        seen = parks(&r.start)?;
        Ok(seen != "parked=0 adopted=0 expired=0")
    })?;
    r.gate.arm(r.g.port)?;
    r.ck.eq(
        "parks after the close",
        seen,
        "parked=1 adopted=0 expired=0".into(),
    );
    r.ck.gate("parked")?;
    r.gate.wait_holding()?;
    r.check_parks("parks when the grace ended", "parked=1 adopted=0 expired=1")?;

    let n = new_listener(fam, r.g.port)?;
    r.gate.release()?;
    // Only now can the spinner run again and see its stop.
    drop(busy);
    r.served_by(
        &n,
        1,
        "parked=1 adopted=0 expired=1",
        "by a listener that came after the expiry",
    )
}

/// L1 joins, the work decides on adoption, and L1 closes before the work
/// has moved anything to it. L1 is then the last listener serving
/// userspace (the parked L0 serves nobody): it parks in turn, L0's close
/// migrates its children onto the parked L1, and L2, listening later,
/// adopts them from L1. Each child migrates twice and none is lost.
pub fn park_joiner_closes_in_adoption(fam: Family, kernel: Kernel) -> Result<()> {
    let mut r = Race::new(fam, kernel, grace_ms() * 5)?;
    r.g.stop(0, Stop::Close)?;
    r.gate.arm(r.g.port)?;
    let port = r.g.port;
    // The listen() queues the adoption on its own CPU, where the gate
    // then holds it; the thread returns L1 to us before the work runs.
    let l1 = join(on_other_cpu(move || {
        outrun_kworkers()?;
        new_listener(fam, port)
    })?)?;
    r.gate.wait_holding()?;
    r.check_parks("parks once L1 listens", "parked=1 adopted=1 expired=0")?;
    drop(l1);
    r.check_parks("parks once L1 closed", "parked=2 adopted=1 expired=0")?;
    r.gate.release()?;
    // L0's close goes on after the gate: L2 must not listen before it has
    // moved every child to L1, or the policy could give some to L2 first.
    let start = &r.start;
    let moved = wait_until(event_timeout(), || {
        Ok(TcpExt::read()?.since(start, MIGRATE_OK)? == u(QUEUED))
    })?;
    r.ck.eq("children moved from L0 to the parked L1", moved, true);
    r.ck.gate("L0 closed")?;

    let l2 = new_listener(fam, port)?;
    r.served_by(
        &l2,
        2,
        "parked=2 adopted=2 expired=0",
        "by L2, through the parked L1",
    )
}

/// The tcp:tcp_reuseport_migrate events of `trace`, as one comparable text.
fn events(trace: &Trace) -> Result<String> {
    let mut got: Vec<String> = trace
        .counts()?
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    got.sort();
    Ok(got.join(" "))
}

/// The addresses of the two ends of the veth pair: the parked
/// listener's and its clients'.
fn veth_addrs(fam: Family) -> (&'static str, &'static str, IpAddr) {
    match fam {
        Family::V4 => (
            "10.77.0.1/24",
            "10.77.0.2/24",
            Ipv4Addr::new(10, 77, 0, 1).into(),
        ),
        Family::V6 => (
            "fd77::1/64",
            "fd77::2/64",
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1).into(),
        ),
    }
}

/// Gives `dev` of the calling thread's namespace `addr` (for IPv6 without
/// duplicate address detection, so usable at once) and brings it up.
fn veth_end_up(dev: &str, addr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", addr, "dev", dev];
    if addr.contains(':') {
        args.push("nodad");
    }
    ip(&args)?;
    ip(&["link", "set", dev, "up"])
}

/// A veth pair: `name` in the calling thread's namespace, `peer` in `home`.
fn veth_to(name: &str, peer: &str, home: &Netns) -> Result<()> {
    ip(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &home.path(),
    ])
}

/// How long the kernel takes to dismantle a namespace nothing holds, seen
/// as its veth peer in the calling thread's namespace going away: the
/// proof that the test can see a dismantling at all, and how long it
/// must wait to say that one did not happen.
fn idle_netns_dismantled(home: &Netns) -> Result<Duration> {
    let peer = format!("rmidle{}", std::process::id() % 100_000);
    enter_fresh_netns()?;
    let made = veth_to("rmidle", &peer, home);
    home.enter()?;
    made?;
    let t0 = Instant::now();
    if !wait_until(event_timeout(), || Ok(!link_exists(&peer)?))? {
        bail!(
            "the veth peer {peer} of an idle namespace was still there after {:?}",
            event_timeout()
        );
    }
    Ok(t0.elapsed())
}

/// A server's namespace goes away while its last listener is parked (a
/// container stopped during a restart, its clients outside): the
/// namespace loses its last process and every socket but the parked
/// listener and its children. The parked listener holds the namespace, as
/// any orphaned TCP socket does: it must still be there well after an
/// idle one would have been dismantled. Then the work that ends the park
/// is held in the listener's close, in a namespace nothing else holds,
/// and once released it must reset every client and let the namespace
/// go. The clients are in the test's own namespace, across a veth pair,
/// which also shows the namespace's end: the kernel deletes both ends of
/// the pair when it dismantles one side. The namespace is looked at
/// before the hold, not during it: the gate spins in a BPF program under
/// RCU, and no namespace can be dismantled until an RCU grace period ends.
pub fn park_netns_exit(fam: Family, kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    lock_in_memory()?;
    let _timers = TimersStayLocal::new()?;
    // Started here, so that the spinner's thread holds the test's own
    // namespace and not the server's.
    let busy = BusyCpu::new(0)?;
    pin_to_cpu(1)?;
    let home = Netns::current()?;
    let dismantle = idle_netns_dismantled(&home)?;
    let peer = format!("rmpark{}", std::process::id() % 100_000);
    let (server_addr, client_addr, server_ip) = veth_addrs(fam);
    enter_fresh_netns()?;
    let server = Netns::current()?;
    veth_to("rmpark", &peer, &home)?;
    veth_end_up("rmpark", server_addr)?;
    // Long enough for the look at the namespace between park and expiry.
    set_grace(kernel, grace_ms() * 5)?;
    let mut ck = Checks::new();
    let start = TcpExt::read()?;
    let mut g = Group::bind_at(fam, server_ip, None, &[None])?;
    let trace = start_trace(kernel, g.port)?
        .ok_or_else(|| anyhow!("the patched kernel has the migration tracepoint"))?;
    home.enter()?;
    veth_end_up(&peer, client_addr)?;
    let clients = children_on_l0(fam, &g, &mut ck, QUEUED)?;
    server.enter()?;
    let gate = Gate::attach(GateAt::Close)?;
    join(close_on_other_cpu(&mut g, 0)?)?;
    let mut seen = String::new();
    wait_until(event_timeout(), || {
        seen = parks(&start)?;
        Ok(seen != "parked=0 adopted=0 expired=0")
    })?;
    gate.arm(g.port)?;
    ck.eq(
        "parks after the close",
        seen,
        "parked=1 adopted=0 expired=0".into(),
    );
    ck.gate("parked")?;

    // Nothing of userspace is left in the server's namespace: were the
    // parked listener not holding it, it would be dismantled now.
    drop(g);
    home.enter()?;
    drop(server);
    thread::sleep(scaled(Duration::from_millis(500)) + dismantle * 3);
    ck.eq(
        "veth peer while the listener is parked",
        link_exists(&peer)?,
        true,
    );
    ck.gate("namespace held while parked")?;
    // The expiry's close, in a namespace held by nothing else.
    gate.wait_holding()?;
    ck.eq("migrations while held", events(&trace)?, String::new());
    gate.release()?;
    drop(busy);
    // The close resets every child, as at any expiry, while the
    // namespace is whole: the resets reach the clients.
    let f = fates(&clients, Deadline::after(event_timeout()))?;
    ck.eq(
        "client fates",
        f.to_string(),
        format!("data=0 reset={QUEUED} eof=0 silent=0 error=0"),
    );
    let gone = wait_until(event_timeout(), || Ok(!link_exists(&peer)?))?;
    ck.eq(
        "veth peer deleted once the parked listener closed",
        gone,
        true,
    );
    ck.eq(
        "migrations by the close",
        events(&trace)?,
        format!("child/no_listener={QUEUED}"),
    );
    note(&format!(
        "the namespace outlived its last process until the parked listener's close; \
         {QUEUED} clients reset (an idle one went in {} ms)",
        dismantle.as_millis()
    ));
    ck.finish()
}
