// SPDX-License-Identifier: GPL-2.0
//! Races of a parked listener's deferred close against the listeners that
//! come and go meanwhile, and against its namespace going away. A park
//! ends in tcp_park_work(), which runs on system_unbound_wq and closes the
//! listener through its own sk_prot->close. Two gates hold that work:
//! the close gate in tcp_set_state(TCP_CLOSE) of its __tcp_close(), where
//! the work has decided how the park ended (already counted) but the
//! listener is still hashed in TCP_LISTEN with everything it keeps, so a
//! listen() or a close() of the group runs exactly inside that window;
//! and the park-work gate at the entry of tcp_park_work(), before it has
//! decided anything.
//!
//! The gates spin with interrupts off, so the work must run on CPU 0
//! while the test goes on from CPU 1: the unbound workqueues are confined
//! to CPU 0 for the test ([`UnboundWorkOn`]), whichever CPU queued the
//! work or armed its timer. Parking is the series' own: on the base
//! kernel these tests skip, stop_start_* assert upstream's loss there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::common::{children_on_l0, close_on_other_cpu, join, u};
use super::parked::Parked;
use super::stop_start::{
    ends, ends_text, grace_ms, new_listener, park_text, parks_off, set_grace, wait_ends,
    JIFFY_SLACK, QUEUED,
};
use crate::bpf::{Gate, GateAt};
use crate::harness::{
    enter_fresh_netns, event_timeout, exchange, fates, ip, link_exists, lock_in_memory, note,
    pin_to_cpu, scaled, start_trace, wait_until, Checks, Client, Deadline, Family, Group, Idle,
    Kernel, Netns, ParkEvent, Reason, Skip, Stop, TcpExt, Trace, UnboundWorkOn, MIGRATE_OK,
};

pub(super) fn patched_only(kernel: Kernel) -> Result<()> {
    match kernel {
        Kernel::Patched => Ok(()),
        Kernel::Base => Err(Skip(
            "parking is the series' own (stop_start_* assert upstream's loss)".into(),
        )
        .into()),
    }
}

/// What the races start from: L0 alone on its port with QUEUED children,
/// migrations on the port traced, a gate attached but not armed, the
/// unbound workqueues on CPU 0 and this thread on CPU 1, away from where
/// the gate will spin.
struct Race {
    kernel: Kernel,
    ck: Checks,
    start: TcpExt,
    idle: Idle,
    g: Group,
    trace: Option<Trace>,
    clients: Vec<Client>,
    gate: Gate,
    _work: UnboundWorkOn,
}

impl Race {
    fn new(fam: Family, kernel: Kernel, grace: u64, at: GateAt) -> Result<Race> {
        patched_only(kernel)?;
        lock_in_memory()?;
        // The park-work gate holds whatever park's work comes first: an
        // earlier test's must be over (Idle::settle() waits for it).
        let Parked {
            idle,
            ck,
            start,
            g,
            trace,
            clients,
            ..
        } = Parked::queue(fam, kernel, grace, || Group::bind(fam, 1))?;
        let work = UnboundWorkOn::new(0)?;
        let gate = Gate::attach(at)?;
        pin_to_cpu(1)?;
        Ok(Race {
            kernel,
            ck,
            start,
            idle,
            g,
            trace,
            clients,
            gate,
            _work: work,
        })
    }

    /// The parks since the start and how they ended, checked as `what`.
    fn check_parks(&mut self, what: &str, want: &[(&str, u64)]) -> Result<()> {
        let got = ends(&self.start)?;
        self.ck.eq(what, got, ends_text(want));
        Ok(())
    }

    /// Waits for the parks since the start to end as `want`.
    fn wait_parks(&mut self, what: &str, want: &[(&str, u64)]) -> Result<()> {
        wait_ends(&mut self.ck, what, &self.start, want, event_timeout())
    }

    /// No park from here on, and everything back to idle.
    fn finish(mut self) -> Result<()> {
        parks_off(self.kernel)?;
        drop(self.clients);
        self.idle
            .check(&mut self.ck, "at the end", event_timeout())?;
        self.ck.finish()
    }

    /// `by` accepts and serves every child, each migrated `moves` times
    /// (the migrations of a park go through the migration tracepoint
    /// too), and the parks ended as `parks` says.
    fn served_by(
        mut self,
        by: Group,
        moves: usize,
        parks: &[(&str, u64)],
        how: &str,
    ) -> Result<()> {
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
        parks_off(self.kernel)?;
        drop(acc);
        drop(by);
        self.finish()
    }
}

/// The grace ends and the work decides on expiry; a listener of the group
/// listens before the work unhashes the parked one. It joins the parked
/// listener's group, and the close the work finishes migrates every
/// queued child to it: an expiry that loses the race to a listen() loses
/// no connection. Counted as an expiry: that is what the work decided.
pub fn park_expiry_vs_join(fam: Family, kernel: Kernel) -> Result<()> {
    // Long enough that the gate is armed before the grace ends, however
    // late this thread runs.
    let mut r = Race::new(fam, kernel, grace_ms() * 3, GateAt::Close)?;
    // Parks: the user's close() never reaches tcp_set_state(TCP_CLOSE).
    // The gate is armed once the park is counted.
    r.g.stop(0, Stop::Close)?;
    r.wait_parks("parks after the close", &[("parked", 1)])?;
    r.gate.arm(r.g.port)?;
    r.ck.gate("parked")?;
    r.gate.wait_holding()?;
    r.check_parks(
        "parks when the grace ended",
        &[("parked", 1), ("expired", 1)],
    )?;

    let n = new_listener(fam, r.g.port)?;
    r.gate.release()?;
    r.served_by(
        n,
        1,
        &[("parked", 1), ("expired", 1)],
        "by a listener that came after the expiry",
    )
}

/// L0 is parked with QUEUED children; L1 joins its group, which queues
/// L0's adoption, and closes again before that work has run (the
/// park-work gate holds it at its entry). L1 was then the last listener
/// serving userspace: it parks too. A parked listener is never a
/// migration target (no chains): L0 keeps its children and waits for the
/// rest of its own grace. With `l2`, L2 joins within L0's grace and adopts
/// both parks (2 adoptions, each child migrated once, L0 to L2, all
/// served). Without, L0's children are reset when L0's grace ends, not
/// when L1's does: L1 joins halfway through L0's grace, so the two ends
/// are half a grace apart, and the trace's clock shows which one came.
pub fn park_joiner_closes_before_adoption(fam: Family, kernel: Kernel, l2: bool) -> Result<()> {
    let grace_ms = grace_ms() * 4;
    let grace = Duration::from_millis(grace_ms);
    let mut r = Race::new(fam, kernel, grace_ms, GateAt::ParkWork)?;
    let port = r.g.port;
    r.g.stop(0, Stop::Close)?;
    let closed_at = Instant::now();
    r.wait_parks("parks after L0's close", &[("parked", 1)])?;
    r.ck.gate("L0 parked")?;
    if !l2 {
        // A point on the test's timeline, not a wait for an event.
        thread::sleep((closed_at + grace / 2).saturating_duration_since(Instant::now()));
    }
    r.gate.arm(port)?;
    let l1 = new_listener(fam, port)?;
    r.gate.wait_holding()?;
    r.check_parks("parks once L1 listens", &[("parked", 1)])?;
    drop(l1);
    let l1_closed_at = Instant::now();
    r.check_parks("parks once L1 closed", &[("parked", 2)])?;
    r.gate.release()?;
    r.ck.gate("L1 joined and closed before L0's adoption")?;
    let trace = r
        .trace
        .take()
        .context("the patched kernel has the tracepoint")?;

    if l2 {
        let l2 = new_listener(fam, port)?;
        if closed_at.elapsed() >= grace {
            bail!(
                "L2 listened {:?} after L0's close, past its grace of {grace:?}: too slow to test",
                closed_at.elapsed()
            );
        }
        r.wait_parks("parks once L2 listens", &[("parked", 2), ("adopted", 2)])?;
        let ev = by_listener(&trace.park_events()?);
        r.ck.eq(
            "park events by listener",
            ev,
            format!(
                "L0: parked queued={QUEUED} requests=0, adopted queued={QUEUED} requests=0; \
                 L1: parked queued=0 requests=0, adopted queued=0 requests=0"
            ),
        );
        r.trace = Some(trace);
        return r.served_by(
            l2,
            1,
            &[("parked", 2), ("adopted", 2)],
            "by L2, from both parks",
        );
    }

    // L0's clients must be reset before L1's grace could end.
    let f = fates(
        &r.clients,
        Deadline::after((l1_closed_at + grace).saturating_duration_since(Instant::now())),
    )?;
    r.ck.eq(
        "L0's client fates before L1's grace ended",
        f.to_string(),
        format!("data=0 reset={QUEUED} eof=0 silent=0 error=0"),
    );
    let within = (l1_closed_at + grace).saturating_duration_since(Instant::now())
        + grace / 4
        + scaled(Duration::from_secs(2));
    wait_ends(
        &mut r.ck,
        "parks at the end",
        &r.start,
        &[("parked", 2), ("expired", 2)],
        within,
    )?;
    let ev = trace.park_events()?;
    r.ck.eq(
        "park events in order",
        park_order(&ev),
        format!(
            "L0 parked queued={QUEUED} requests=0, L1 parked queued=0 requests=0, \
             L0 expired queued={QUEUED} requests=0, L1 expired queued=0 requests=0"
        ),
    );
    // The trace's clock: L0's end comes its grace after its park (the
    // timer wheel may fire an eighth late, the work runs a little later),
    // and well before L1's grace would end.
    if let (Some(p0), Some(e0), Some(p1)) = (
        ev.iter().find(|e| e.event == "parked"),
        ev.iter().find(|e| e.event == "expired"),
        ev.iter().filter(|e| e.event == "parked").nth(1),
    ) {
        let held = e0.at - p0.at;
        let g = grace.as_secs_f64();
        r.ck.ge("L0 parked for (s)", held, g - JIFFY_SLACK);
        r.ck.le("L0 parked for (s)", held, g * 1.25);
        r.ck.le("L0's end after L1's park (s)", e0.at - p1.at, g * 0.75);
    }
    r.trace = Some(trace);
    let now = r.ck.reasons(
        kernel,
        &r.start,
        r.trace.as_ref(),
        "child",
        &[(Reason::NoListener, u(QUEUED))],
    )?;
    r.ck.migrations("", &r.start, &now, 0, u(QUEUED))?;
    note(&format!(
        "L0's {QUEUED} children reset at L0's grace end, L1 joined {} ms after L0's close",
        (l1_closed_at - closed_at).as_millis()
    ));
    r.finish()
}

/// Two last listeners close at once: L0, with QUEUED children, closes
/// while L1 still listens, so it does not park; the close gate holds it in
/// tcp_set_state(TCP_CLOSE), still hashed with its children, and L1
/// closes meanwhile and parks (L0 no longer counts as live). L0's close
/// then goes on and hands its children to the park: they were never
/// parked, so this is no chain. L2 listens and adopts the park: every
/// child is served, each migrated twice (L0 to the park, the park to L2),
/// one park, one adoption.
pub fn park_takes_a_closing_listeners_children(fam: Family, kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    lock_in_memory()?;
    let Parked {
        idle,
        mut ck,
        start,
        mut g,
        port,
        trace,
        clients,
        ..
    } = Parked::queue(fam, kernel, grace_ms() * 5, || Group::bind(fam, 2))?;
    let trace = trace.context("the patched kernel has the tracepoint")?;
    g.listen(1)?;
    let gate = Gate::attach(GateAt::Close)?;
    gate.arm(port)?;
    // The gate spins with interrupts off on the closing thread's CPU (0);
    // this thread goes on from CPU 1.
    let closing = close_on_other_cpu(&mut g, 0)?;
    gate.wait_holding()?;
    g.stop(1, Stop::Close)?;
    wait_ends(
        &mut ck,
        "after L1's close, L0's held",
        &start,
        &[("parked", 1)],
        event_timeout(),
    )?;
    gate.release()?;
    join(closing)?;
    ck.gate("L1 parked while L0 closed")?;
    let moved = wait_until(event_timeout(), || {
        Ok(TcpExt::read()?.since(&start, MIGRATE_OK)? == u(QUEUED))
    })?;
    ck.eq("L0's children moved to the park", moved, true);
    ck.gate("L0 closed")?;

    let l2 = new_listener(fam, port)?;
    let acc = l2.accept_all(QUEUED)?;
    ck.eq("accepted by L2", acc.len(), QUEUED);
    exchange(&clients, &acc)?.check_all_served(&mut ck, QUEUED);
    wait_ends(
        &mut ck,
        "at the end",
        &start,
        &[("parked", 1), ("adopted", 1)],
        event_timeout(),
    )?;
    let now = ck.reasons(kernel, &start, Some(&trace), "child", &[])?;
    ck.migrations("", &start, &now, u(2 * QUEUED), 0)?;
    ck.eq(
        "park events",
        park_text(&trace.park_events()?),
        format!("parked queued=0 requests=0, adopted queued={QUEUED} requests=0"),
    );
    note(&format!(
        "{QUEUED} children of the closing L0 went through L1's park to L2"
    ));
    parks_off(kernel)?;
    drop((acc, l2, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Which listener of a port an event is about: L0 is the first to park,
/// L1 the second (told apart by their socket cookies).
fn listener_names(ev: &[ParkEvent]) -> Vec<String> {
    let mut cookies: Vec<&str> = Vec::new();
    for e in ev {
        if e.event == "parked" && !cookies.contains(&e.cookie.as_str()) {
            cookies.push(&e.cookie);
        }
    }
    ev.iter()
        .map(|e| match cookies.iter().position(|c| *c == e.cookie) {
            Some(i) => format!("L{i}"),
            None => format!("cookie {}", e.cookie),
        })
        .collect()
}

/// The events in their order, each named by its listener.
fn park_order(ev: &[ParkEvent]) -> String {
    listener_names(ev)
        .iter()
        .zip(ev)
        .map(|(n, e)| format!("{n} {e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The events of each listener, L0 first: the order between two
/// listeners' ends is the kernel's to choose.
fn by_listener(ev: &[ParkEvent]) -> String {
    let names = listener_names(ev);
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (n, e) in names.iter().zip(ev) {
        match out.iter_mut().find(|(k, _)| k == n) {
            Some((_, v)) => v.push(e.to_string()),
            None => out.push((n.clone(), vec![e.to_string()])),
        }
    }
    out.sort();
    out.iter()
        .map(|(n, v)| format!("{n}: {}", v.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The tcp:tcp_reuseport_migrate events of `trace`, as one comparable text.
pub(super) fn events(trace: &Trace) -> Result<String> {
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
pub(super) fn veth_addrs(fam: Family) -> (&'static str, &'static str, IpAddr) {
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
pub(super) fn veth_end_up(dev: &str, addr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", addr, "dev", dev];
    if addr.contains(':') {
        args.push("nodad");
    }
    ip(&args)?;
    ip(&["link", "set", dev, "up"])
}

/// A veth pair: `name` in the calling thread's namespace, `peer` in `home`.
pub(super) fn veth_to(name: &str, peer: &str, home: &Netns) -> Result<()> {
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
pub(super) fn idle_netns_dismantled(home: &Netns) -> Result<Duration> {
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
    let _work = UnboundWorkOn::new(0)?;
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
    g.stop(0, Stop::Close)?;
    wait_ends(
        &mut ck,
        "parks after the close",
        &start,
        &[("parked", 1)],
        event_timeout(),
    )?;
    gate.arm(g.port)?;
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
