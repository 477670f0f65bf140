// SPDX-License-Identifier: GPL-2.0
//! How a park ends, each end one path counted and traced as itself
//! (issue 20): `destroyed` by SOCK_DESTROY (`ss -K`), `cancelled` or
//! shortened by a lower grace, `evicted` by a socket that takes the port
//! and cannot join the group, `expired` in a namespace nobody holds any
//! more; and the bounds: an ephemeral port is never a parked one, at most
//! 256 parks per namespace, and a thousand parks in a hundred namespaces
//! do not get in the way of another namespace's listen().
//!
//! Every test asserts the exact counts: the park counter and the five end
//! counters, the `tcp:tcp_reuseport_park` events, what each client saw,
//! and the namespace's TCP sockets, the machine's TCP orphans and (where
//! the kernel shows them) the socket slab objects back to idle at the end.
//! On the base kernel a test asserts upstream's behaviour where there is
//! one to see (the loss at close, a bind that succeeds), and skips where
//! the feature has no base counterpart (the grace sysctl).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use socket2::Socket;

use super::common::{all_reset, as_uid, children_on_l0, join, serves_new_client, u};
use super::park_races::{idle_netns_dismantled, patched_only, veth_addrs, veth_end_up, veth_to};
use super::parked::{park_with_children, park_with_children_of, settled, Parked};
use super::stop_start::{
    ends, ends_text, grace_ms, new_listener, park_text, parks_off, plain_bind, served_or_reset,
    set_grace, wait_ends, GRACE, JIFFY_SLACK, PARKED, QUEUED,
};
use crate::harness::{
    enter_fresh_netns, event_timeout, ip, link_exists, note, read_sysctl, scaled, set_sysctl,
    start_trace, tcp_inuse, tcp_orphans, time_scale, wait_until, write_sysctl, Checks, Client,
    Deadline, Family, Group, Idle, Kernel, Netns, ParkEvent, Reason, Skip, Stop, TcpExt, Trace,
    MIGRATE_FAIL, MIGRATE_OK,
};

/// The events of `port` only, for a trace that follows several ports.
fn events_of(ev: &[ParkEvent], port: u16) -> Vec<ParkEvent> {
    ev.iter().filter(|e| e.sport == port).cloned().collect()
}

/// "parked queued=N requests=0, END queued=N requests=0": a park of `n`
/// queued children (no handshake in flight) and its end, which reports
/// what the listener still held when the end was decided.
fn park_and_end(end: &str, n: usize) -> String {
    format!("parked queued={n} requests=0, {end} queued={n} requests=0")
}

/// The trace shows one park of QUEUED children and its `end`: its two
/// events, checked as "park events".
fn one_park_ended(ck: &mut Checks, trace: Option<&Trace>, end: &str) -> Result<()> {
    let ev = trace.context("no trace")?.park_events()?;
    ck.eq("park events", park_text(&ev), park_and_end(end, QUEUED));
    Ok(())
}

/// How long a park lasted by the trace's clock, from its `parked` event to
/// its end event: the kernel's own times, without the test's latency.
/// None if either event is missing.
fn parked_for(ev: &[ParkEvent]) -> Option<f64> {
    let p = ev.iter().find(|e| e.event == "parked")?;
    let e = ev.iter().find(|e| e.event != "parked")?;
    Some(e.at - p.at)
}

/// The children of a closed listener with no live listener left are
/// reset one by one, each a failed migration for want of a listener:
/// `n` of them since `start`, none succeeded.
fn all_failed_no_listener(
    ck: &mut Checks,
    kernel: Kernel,
    start: &TcpExt,
    trace: Option<&Trace>,
    n: usize,
) -> Result<()> {
    ck.all_failed(kernel, start, trace, "child", Reason::NoListener, u(n))?;
    Ok(())
}

/// A margin for a park's end past its grace: the timer wheel may fire a
/// timer of seconds an eighth late, and the work runs after it.
fn end_margin(grace: Duration) -> Duration {
    grace / 4 + scaled(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------
// SOCK_DESTROY

/// Runs iproute2's `ss -K -t state listening sport = :PORT` in the calling
/// thread's namespace (a child process inherits the namespace of the
/// thread that forks it) and returns the sockets it says it destroyed.
/// ss prints only the sockets whose SOCK_DESTROY succeeded.
fn ss_kill_listeners(port: u16) -> Result<Vec<String>> {
    let out = match Command::new("ss")
        .args(["-K", "-H", "-t", "state", "listening", "sport", "="])
        .arg(format!(":{port}"))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "ss (iproute2) is not installed: the guest runs the host's root, \
             install iproute2 on the host (scripts/setup-host does)"
        ),
        Err(e) => return Err(e).context("run ss -K"),
    };
    if !out.status.success() {
        bail!(
            "ss -K -t state listening sport = :{port}: {} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// The sysctl's largest grace: a test's long grace, scaled for the debug
/// flavour, is clamped to it (the kernel answers EINVAL above).
const GRACE_MAX_MS: u64 = 60_000;

/// `ms` scaled for the kernel under test, at most [`GRACE_MAX_MS`].
fn long_grace_ms(ms: u64) -> u64 {
    (ms * u64::from(time_scale())).min(GRACE_MAX_MS)
}

/// A parked listener with QUEUED children is destroyed by `ss -K`
/// (inet_diag's SOCK_DESTROY, tcp_abort()): its park ends `destroyed`,
/// once; the children are reset as a close resets them (no live listener
/// to migrate to); a listen() on another port and then on the same one
/// work, and the new listener serves a new client after the grace has
/// passed, with nothing ended twice. The orphan count and the TCP sockets
/// balance. On the old series this path freed the listener under the park
/// (refcount warnings, KASAN): the VM runner fails on the splat. Base:
/// the children were reset at close, ss finds no listener to destroy.
pub fn park_destroyed_by_ss_k(fam: Family, kernel: Kernel) -> Result<()> {
    let grace = Duration::from_millis(grace_ms() * 5);
    let mut p = Parked::queue(fam, kernel, grace_ms() * 5, || Group::bind(fam, 1))?;
    let closed_at = p.close()?;
    let (idle, mut ck, start, port, trace, clients) = p.parts();
    if kernel == Kernel::Patched {
        // Only the counter the old series has too, until ss -K has run:
        // there, the destroy freed the listener under its park.
        let parked = wait_until(event_timeout(), || {
            Ok(TcpExt::read()?.since(&start, PARKED)? == 1)
        })?;
        ck.eq("parked after the close", parked, true);
        ck.gate("parked")?;
        // Parked: hashed (1), its children and their clients in use, and
        // one orphan more on the machine.
        ck.eq(
            "TCP inuse while parked",
            tcp_inuse()?,
            idle.inuse() + 1 + 2 * u(QUEUED),
        );
        ck.eq(
            "TCP orphans while parked",
            tcp_orphans()?,
            idle.orphans() + 1,
        );
        // Recorded, not gated: the old series goes on to the destroy.
    }

    let killed = ss_kill_listeners(port)?;
    let want_killed = match kernel {
        Kernel::Patched => 1,
        Kernel::Base => 0,
    };
    ck.eq("listeners ss -K destroyed", killed.len(), want_killed);
    all_reset(&mut ck, "parked client fates", &clients)?;

    // The destroyed listener gave its port up: a socket without
    // SO_REUSEPORT, which a leftover listener would refuse, binds it.
    ck.eq(
        "bind without SO_REUSEPORT after the destroy",
        plain_bind(fam, port)?,
        "Ok(())".to_string(),
    );
    // The destroyed listener is out of the hash: listens elsewhere and on
    // its own port go through the code that walks it.
    let other = Group::bind(fam, 1).context("bind another port")?;
    other.listen(0).context("listen on another port")?;
    let n = new_listener(fam, port)?;
    // The new counters only after the grace: on the old series, which
    // has none, the park's work has used the destroyed listener by then
    // (a refcount splat, which fails the VM run).
    // What the expiry would have done, had the destroy left the park
    // armed, happens within this: wait it out, then look.
    thread::sleep(
        (closed_at + grace + end_margin(grace)).saturating_duration_since(Instant::now()),
    );
    serves_new_client(fam, &n, &mut ck, 100)?;
    if kernel == Kernel::Patched {
        ck.eq(
            "parks and ends after the grace",
            ends(&start)?,
            ends_text(&[("parked", 1), ("destroyed", 1)]),
        );
        one_park_ended(&mut ck, trace.as_ref(), "destroyed")?;
        all_failed_no_listener(&mut ck, kernel, &start, trace.as_ref(), QUEUED)?;
    }
    match killed.is_empty() {
        true => note("ss -K destroyed no listener"),
        false => note(&format!(
            "ss -K destroyed {}: {}",
            killed.len(),
            killed
                .join(" | ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        )),
    }
    parks_off(kernel)?;
    drop((n, other, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// bpf_sock_destroy() from an `iter/tcp` program ends a park the same
/// way as `ss -K`. The kfunc needs the kernel's BTF, which the test
/// kernels do not have (CONFIG_DEBUG_INFO_NONE): the test skips there.
pub fn park_destroyed_by_bpf_iter(_fam: Family, kernel: Kernel) -> Result<()> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Skip(
            "bpf_sock_destroy() is a kfunc and needs the kernel's BTF; \
             /sys/kernel/btf/vmlinux is missing (CONFIG_DEBUG_INFO_NONE)"
                .into(),
        )
        .into());
    }
    patched_only(kernel)?;
    // A kernel with BTF must not pass this test without running it.
    bail!(
        "this kernel has BTF, and the iter/tcp program calling bpf_sock_destroy() on the \
         parked port is not written yet (park_destroyed_by_ss_k covers the same end)"
    )
}

// ---------------------------------------------------------------------------
// The namespace goes

/// A server's namespace loses its only process while its last listener is
/// parked with QUEUED children, its clients in the test's own namespace
/// across a veth pair. The park holds the namespace, as any orphaned TCP
/// socket does: it is still there well after an idle namespace would
/// have been dismantled, the park ends `expired` when the grace ends (by
/// the trace's clock), the clients are all reset, and the namespace is
/// dismantled right after (both veth ends go), within the grace and a
/// margin of the close. Its counters cannot be read any more: the trace
/// tells. Base: the children are reset at close and the namespace goes
/// as soon as its process leaves. (park_netns_exit in park_races holds
/// the park's close in that state with a gate; this one lets it run.)
pub fn park_netns_teardown(fam: Family, kernel: Kernel) -> Result<()> {
    let grace_ms = grace_ms() * 3;
    let grace = Duration::from_millis(grace_ms);
    let idle = Idle::settle()?;
    let home = Netns::current()?;
    let dismantle = idle_netns_dismantled(&home)?;
    let peer = format!("rmtear{}", std::process::id() % 100_000);
    let (server_addr, client_addr, server_ip) = veth_addrs(fam);
    let mut ck = Checks::new();

    enter_fresh_netns()?;
    let server = Netns::current()?;
    veth_to("rmtear", &peer, &home)?;
    veth_end_up("rmtear", server_addr)?;
    set_grace(kernel, grace_ms)?;
    let start = TcpExt::read()?;
    let mut g = Group::bind_at(fam, server_ip, None, &[None])?;
    let trace = start_trace(kernel, g.port)?;
    home.enter()?;
    veth_end_up(&peer, client_addr)?;
    let clients = children_on_l0(fam, &g, &mut ck, QUEUED)?;
    server.enter()?;
    g.stop(0, Stop::Close)?;
    let closed_at = Instant::now();
    if kernel == Kernel::Patched {
        wait_ends(
            &mut ck,
            "after the close",
            &start,
            &[("parked", 1)],
            event_timeout(),
        )?;
        ck.gate("parked")?;
    }
    // The namespace's only process (this thread) leaves it, and its last
    // file goes.
    drop(g);
    home.enter()?;
    drop(server);
    let left_at = Instant::now();

    match kernel {
        Kernel::Patched => {
            // Well after an idle namespace would be gone, and well before
            // the grace ends.
            let look = scaled(Duration::from_millis(300)) + dismantle * 3;
            if closed_at.elapsed() + look >= grace / 2 {
                bail!(
                    "the look at the namespace ({look:?}) would not come before half the grace \
                     ({grace:?}) after the close: too slow to test"
                );
            }
            thread::sleep(look);
            ck.eq(
                "veth peer while the listener is parked",
                link_exists(&peer)?,
                true,
            );
            ck.gate("namespace held while parked")?;
            let until = closed_at + grace + end_margin(grace);
            let f = crate::harness::fates(
                &clients,
                Deadline::after(until.saturating_duration_since(Instant::now())),
            )?;
            ck.eq(
                "client fates",
                f.to_string(),
                format!("data=0 reset={QUEUED} eof=0 silent=0 error=0"),
            );
            let gone = wait_until(until.saturating_duration_since(Instant::now()), || {
                Ok(!link_exists(&peer)?)
            })?;
            ck.eq("namespace dismantled within grace and margin", gone, true);
            let trace = trace.context("no trace")?;
            let ev = trace.park_events()?;
            ck.eq(
                "park events",
                park_text(&ev),
                park_and_end("expired", QUEUED),
            );
            if let Some(held) = parked_for(&ev) {
                let g = grace.as_secs_f64();
                ck.ge("parked for (s, trace clock)", held, g - JIFFY_SLACK);
                ck.le(
                    "parked for (s, trace clock)",
                    held,
                    (grace + end_margin(grace)).as_secs_f64(),
                );
            }
            ck.eq(
                "migrations by the expiry's close",
                super::park_races::events(&trace)?,
                format!("child/no_listener={QUEUED}"),
            );
            note(&format!(
                "the namespace went {} ms after its process left, {} ms after the close \
                 (grace {grace_ms} ms; an idle one goes in {} ms)",
                left_at.elapsed().as_millis(),
                closed_at.elapsed().as_millis(),
                dismantle.as_millis()
            ));
        }
        Kernel::Base => {
            all_reset(&mut ck, "client fates", &clients)?;
            let gone = wait_until(event_timeout(), || Ok(!link_exists(&peer)?))?;
            ck.eq("namespace dismantled once its process left", gone, true);
        }
    }
    drop(clients);
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

// ---------------------------------------------------------------------------
// The grace lowered

/// One listener parked with `n` children on a port of its own.
struct OnePark {
    g: Group,
    clients: Vec<Client>,
    closed_at: Option<Instant>,
}

impl OnePark {
    fn listen(fam: Family, ck: &mut Checks, n: usize) -> Result<OnePark> {
        let g = Group::bind(fam, 1)?;
        let clients = children_on_l0(fam, &g, ck, n)?;
        Ok(OnePark {
            g,
            clients,
            closed_at: None,
        })
    }

    fn close(&mut self) -> Result<()> {
        self.g.stop(0, Stop::Close)?;
        self.closed_at = Some(Instant::now());
        Ok(())
    }
}

/// Children per park in the sysctl tests.
const SYSCTL_CHILDREN: usize = 2;

/// A grace of 10 s (scaled) and two parks: A, then B a while later. The
/// grace is lowered to a value A has outlived and B has not: A ends at
/// once, `cancelled`; B ends `expired` when it has been parked for the
/// new value, long before the old grace. Their children are reset (no
/// live listener). The times come from the trace's clock.
pub fn park_sysctl_lowered(fam: Family, kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    let scale = u64::from(time_scale());
    let (old_ms, new_ms, apart_ms) = (long_grace_ms(10_000), 1000 * scale, 2000 * scale);
    let old = Duration::from_millis(old_ms);
    let new = Duration::from_millis(new_ms);
    let (idle, mut ck, start) = settled(kernel, old_ms)?;
    let mut a = OnePark::listen(fam, &mut ck, SYSCTL_CHILDREN)?;
    let mut b = OnePark::listen(fam, &mut ck, SYSCTL_CHILDREN)?;
    let trace = Trace::start_ports(&[a.g.port, b.g.port])?;
    a.close()?;
    wait_ends(
        &mut ck,
        "after A's close",
        &start,
        &[("parked", 1)],
        event_timeout(),
    )?;
    ck.gate("A parked")?;
    // A point on the test's timeline, not a wait for an event.
    let a_at = a.closed_at.context("closed")?;
    thread::sleep(
        (a_at + Duration::from_millis(apart_ms)).saturating_duration_since(Instant::now()),
    );
    b.close()?;
    set_sysctl(GRACE, &new_ms.to_string())?;
    let b_age = b.closed_at.context("closed")?.elapsed();
    if b_age >= new / 2 {
        bail!("the grace was lowered {b_age:?} after B's park, not well within the new {new:?}");
    }
    // A has outlived the new grace: cancelled at once.
    all_reset(&mut ck, "A's client fates", &a.clients)?;
    // B: reset when it has been parked for the new grace, long before
    // the old one.
    let b_until = b.closed_at.context("closed")? + old / 2;
    let f = crate::harness::fates(
        &b.clients,
        Deadline::after(b_until.saturating_duration_since(Instant::now())),
    )?;
    ck.eq(
        "B's client fates before half the old grace",
        f.to_string(),
        format!("data=0 reset={SYSCTL_CHILDREN} eof=0 silent=0 error=0"),
    );
    wait_ends(
        &mut ck,
        "at the end",
        &start,
        &[("parked", 2), ("cancelled", 1), ("expired", 1)],
        event_timeout(),
    )?;
    let ev = trace.park_events()?;
    let (ea, eb) = (events_of(&ev, a.g.port), events_of(&ev, b.g.port));
    ck.eq(
        "A's park events",
        park_text(&ea),
        park_and_end("cancelled", SYSCTL_CHILDREN),
    );
    ck.eq(
        "B's park events",
        park_text(&eb),
        park_and_end("expired", SYSCTL_CHILDREN),
    );
    if let (Some(ha), Some(hb)) = (parked_for(&ea), parked_for(&eb)) {
        // A ended at the write: after it had been parked `apart`, long
        // before the old grace.
        ck.ge(
            "A parked for (s)",
            ha,
            Duration::from_millis(apart_ms).as_secs_f64() - JIFFY_SLACK,
        );
        ck.le("A parked for (s)", ha, old.as_secs_f64() / 2.0);
        // B ended at its park plus the new grace.
        ck.ge("B parked for (s)", hb, new.as_secs_f64() - JIFFY_SLACK);
        ck.le(
            "B parked for (s)",
            hb,
            (new + end_margin(new)).as_secs_f64(),
        );
        note(&format!("A cancelled after {ha:.3} s, B expired after {hb:.3} s (old grace {old:?}, new {new:?})"));
    }
    all_failed_no_listener(&mut ck, kernel, &start, Some(&trace), 2 * SYSCTL_CHILDREN)?;
    parks_off(kernel)?;
    drop((a, b));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Three ports parked with a grace of 10 s (scaled); writing 0 ends every
/// park of the namespace at once, `cancelled`, and resets their children.
/// A listener closed after that does not park: its children are reset at
/// its close, as on base.
pub fn park_sysctl_zero(fam: Family, kernel: Kernel) -> Result<()> {
    const PARKS: usize = 3;
    patched_only(kernel)?;
    let old_ms = long_grace_ms(10_000);
    let old = Duration::from_millis(old_ms);
    let (idle, mut ck, start) = settled(kernel, old_ms)?;
    let mut parks = (0..PARKS)
        .map(|_| OnePark::listen(fam, &mut ck, SYSCTL_CHILDREN))
        .collect::<Result<Vec<_>>>()?;
    let mut last = OnePark::listen(fam, &mut ck, SYSCTL_CHILDREN)?;
    let mut ports: Vec<u16> = parks.iter().map(|p| p.g.port).collect();
    ports.push(last.g.port);
    let trace = Trace::start_ports(&ports)?;
    for p in &mut parks {
        p.close()?;
    }
    wait_ends(
        &mut ck,
        "after the closes",
        &start,
        &[("parked", 3)],
        event_timeout(),
    )?;
    ck.eq(
        "TCP orphans while parked",
        tcp_orphans()?,
        idle.orphans() + u(PARKS),
    );
    ck.gate("parked")?;
    set_sysctl(GRACE, "0")?;
    for (i, p) in parks.iter().enumerate() {
        all_reset(&mut ck, &format!("client fates of park {i}"), &p.clients)?;
    }
    wait_ends(
        &mut ck,
        "after writing 0",
        &start,
        &[("parked", 3), ("cancelled", 3)],
        event_timeout(),
    )?;
    // Off now: the last listener closes as on base.
    last.close()?;
    all_reset(
        &mut ck,
        "client fates of the listener closed after",
        &last.clients,
    )?;
    ck.eq(
        "parks and ends at the end",
        ends(&start)?,
        ends_text(&[("parked", 3), ("cancelled", 3)]),
    );
    let ev = trace.park_events()?;
    for (i, p) in parks.iter().enumerate() {
        let e = events_of(&ev, p.g.port);
        ck.eq(
            &format!("park events of port {i}"),
            park_text(&e),
            park_and_end("cancelled", SYSCTL_CHILDREN),
        );
        if let Some(h) = parked_for(&e) {
            ck.le(
                &format!("park {i} parked for (s)"),
                h,
                old.as_secs_f64() / 2.0,
            );
        }
    }
    ck.eq(
        "park events of the listener closed after",
        park_text(&events_of(&ev, last.g.port)),
        String::new(),
    );
    all_failed_no_listener(
        &mut ck,
        kernel,
        &start,
        Some(&trace),
        (PARKS + 1) * SYSCTL_CHILDREN,
    )?;
    drop((parks, last));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

// ---------------------------------------------------------------------------
// Eviction

/// A socket that takes a parked port and cannot join the parked group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stranger {
    /// no SO_REUSEPORT
    NoReuseport,
    /// SO_REUSEPORT, made by uid 65534 (the parked listener is root's)
    OtherUid,
    /// SO_REUSEPORT, another address that covers the parked one: the
    /// wildcard (0.0.0.0, or a dual-stack [::]), where the parked listener
    /// is on the loopback address. A disjoint address does not evict: see
    /// park_kept_by_disjoint_addr().
    OtherAddr,
    /// SO_REUSEPORT, SO_BINDTODEVICE lo (the parked listener has none)
    OtherDev,
    /// IPv6 only: SO_REUSEPORT, IPV6_V6ONLY on [::], where the parked
    /// listener is a dual-stack [::]
    V6only,
}

/// The second IPv6 address of lo for park_kept_by_disjoint_addr().
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0, 0, 0, 0, 0, 0, 2);

impl Stranger {
    /// Where the parked listener listens.
    fn parked_ip(self, fam: Family) -> IpAddr {
        match self {
            Stranger::V6only => Ipv6Addr::UNSPECIFIED.into(),
            _ => fam.loopback(0).ip(),
        }
    }

    /// Where the stranger binds.
    fn ip(self, fam: Family) -> IpAddr {
        match (self, fam) {
            (Stranger::OtherAddr, Family::V4) => Ipv4Addr::UNSPECIFIED.into(),
            (Stranger::OtherAddr, Family::V6) | (Stranger::V6only, _) => {
                Ipv6Addr::UNSPECIFIED.into()
            }
            _ => fam.loopback(0).ip(),
        }
    }

    /// The stranger's socket, with its options, not bound yet.
    fn socket(self, fam: Family) -> Result<Socket> {
        let make = move || -> Result<Socket> {
            let s = fam.tcp_socket()?;
            s.set_reuse_port(self != Stranger::NoReuseport)?;
            match self {
                Stranger::OtherDev => s.bind_device(Some(b"lo")).context("SO_BINDTODEVICE lo")?,
                Stranger::V6only => s.set_only_v6(true).context("IPV6_V6ONLY")?,
                _ => {}
            }
            Ok(s)
        };
        match self {
            // The owner is who makes the socket.
            Stranger::OtherUid => as_uid(65534, make),
            _ => make(),
        }
    }
}

/// While a listener with QUEUED children is parked, a `who` socket binds
/// its port: the bind succeeds (before the redesign: EADDRINUSE; base:
/// succeeds, the port is free), the parked listener is evicted at once
/// (its close runs on a workqueue: waited for through the counter), its
/// children reset; the stranger then listens and serves new clients.
/// Base: the children were reset at close, the rest is the same.
pub fn park_evicted(fam: Family, kernel: Kernel, who: Stranger) -> Result<()> {
    if who == Stranger::V6only && fam == Family::V4 {
        return Err(Skip("IPV6_V6ONLY is an IPv6 socket option".into()).into());
    }
    let (idle, mut ck, start, port, trace, clients) =
        park_with_children_of(fam, kernel, grace_ms() * 5, || {
            Group::bind_at(fam, who.parked_ip(fam), None, &[None])
        })?
        .parts();

    let s = who.socket(fam)?;
    let at = SocketAddr::new(who.ip(fam), port);
    ck.eq(
        &format!("bind of the stranger ({who:?}) to {at}"),
        format!(
            "{:?}",
            s.bind(&at.into())
                .map_err(|e| e.raw_os_error().unwrap_or(-1))
        ),
        "Ok(())".to_string(),
    );
    ck.gate("the stranger's bind")?;
    if kernel == Kernel::Patched {
        wait_ends(
            &mut ck,
            "after the stranger's bind",
            &start,
            &[("parked", 1), ("evicted", 1)],
            event_timeout(),
        )?;
    }
    all_reset(&mut ck, "parked client fates", &clients)?;
    // The stranger's listener must not park at the end of the test.
    parks_off(kernel)?;
    let n = Group::of(fam, who.ip(fam), port, s);
    n.listen(0).context("the stranger's listen")?;
    serves_new_client(fam, &n, &mut ck, 100)?;
    if kernel == Kernel::Patched {
        one_park_ended(&mut ck, trace.as_ref(), "evicted")?;
        all_failed_no_listener(&mut ck, kernel, &start, trace.as_ref(), QUEUED)?;
        ck.eq(
            "parks and ends at the end",
            ends(&start)?,
            ends_text(&[("parked", 1), ("evicted", 1)]),
        );
    }
    drop((n, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Two sockets that can join the parked group bind its port: neither
/// evicts anything; the first one's listen() adopts every child, all
/// served (an eviction would have reset them). The other, bound and never
/// listening, changes nothing. Base: the binds succeed, the children were
/// reset at the close.
pub fn park_joiner_bind_evicts_nothing(fam: Family, kernel: Kernel) -> Result<()> {
    let (idle, mut ck, start, port, trace, clients) =
        park_with_children(fam, kernel, grace_ms() * 5)?.parts();
    let joiners = Group::bind_on(fam, Some(port), &[None, None]).context("the joiners' binds")?;
    if kernel == Kernel::Patched {
        ck.eq(
            "parks after the binds",
            ends(&start)?,
            ends_text(&[("parked", 1)]),
        );
    }
    joiners.listen(0)?;
    match kernel {
        Kernel::Patched => {
            let acc = joiners.accept_from(&[0], QUEUED)?;
            ck.eq("accepted by the joiner", acc.len(), QUEUED);
            crate::harness::exchange(&clients, &acc)?.check_all_served(&mut ck, QUEUED);
            wait_ends(
                &mut ck,
                "after the listen",
                &start,
                &[("parked", 1), ("adopted", 1)],
                event_timeout(),
            )?;
            one_park_ended(&mut ck, trace.as_ref(), "adopted")?;
            let now = ck.reasons(kernel, &start, trace.as_ref(), "child", &[])?;
            ck.migrations("", &start, &now, u(QUEUED), 0)?;
        }
        Kernel::Base => all_reset(&mut ck, "client fates", &clients)?,
    }
    parks_off(kernel)?;
    drop((joiners, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Patched: `n` (named `who`) accepts and serves the QUEUED `clients`,
/// and the one park since `start` ended adopted, with its two events.
/// Base: the clients were reset at the close.
fn adopted_by(
    kernel: Kernel,
    n: &Group,
    who: &str,
    clients: &[Client],
    start: &TcpExt,
    trace: Option<&Trace>,
    ck: &mut Checks,
) -> Result<()> {
    served_or_reset(kernel, n, who, clients, ck)?;
    if kernel == Kernel::Patched {
        wait_ends(
            ck,
            &format!("after the listen of {who}"),
            start,
            &[("parked", 1), ("adopted", 1)],
            event_timeout(),
        )?;
        one_park_ended(ck, trace, "adopted")?;
    }
    Ok(())
}

/// A listener of the parked port on an address that does not overlap the
/// parked one (127.0.0.2, or fd78::2 added to lo, where the parked
/// listener is on the loopback address) takes none of its connections, so
/// it evicts nothing: a service restarting on one address is not
/// disturbed by another one on the next address. The parked owner's new
/// listener then adopts and serves every child. Base: the children were
/// reset at the close.
pub fn park_kept_by_disjoint_addr(fam: Family, kernel: Kernel) -> Result<()> {
    let other: IpAddr = match fam {
        Family::V4 => Ipv4Addr::new(127, 0, 0, 2).into(),
        Family::V6 => {
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("{OTHER_V6}/128"),
                "dev",
                "lo",
                "nodad",
            ])?;
            OTHER_V6.into()
        }
    };
    let (idle, mut ck, start, port, trace, clients) =
        park_with_children(fam, kernel, grace_ms() * 5)?.parts();
    let s = Stranger::NoReuseport.socket(fam)?;
    let at = SocketAddr::new(other, port);
    s.bind(&at.into())
        .with_context(|| format!("bind of the neighbour to {at}"))?;
    let neighbour = Group::of(fam, other, port, s);
    neighbour.listen(0).context("the neighbour's listen")?;
    // An eviction is claimed within bind() and listen(): nothing to wait for.
    if kernel == Kernel::Patched {
        ck.eq(
            "parks after the neighbour's bind and listen",
            ends(&start)?,
            ends_text(&[("parked", 1)]),
        );
    }
    let n = new_listener(fam, port)?;
    adopted_by(
        kernel,
        &n,
        "the owner's new listener",
        &clients,
        &start,
        trace.as_ref(),
        &mut ck,
    )?;
    parks_off(kernel)?;
    drop((n, neighbour, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";

/// The local port of a bound socket, or the errno of its bind/listen.
fn port_or_errno(r: io::Result<()>, s: &Socket) -> String {
    match r {
        Ok(()) => match s.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => format!("port {}", a.port()),
            None => "port ?".into(),
        },
        Err(e) => match e.raw_os_error() {
            Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
            _ => format!("{e}"),
        },
    }
}

/// The namespace's ephemeral ports are narrowed to the parked port P and
/// P+1. Two bind()s to port 0: the first gets P+1, the second finds no
/// port (EADDRINUSE), never P, and evicts nothing; a listen() without a
/// bind (autobind) finds no port either. The parked children are then
/// adopted and served. Base: P is free after the close, so the two binds
/// get P and P+1.
pub fn park_ephemeral_bind_skips(fam: Family, kernel: Kernel) -> Result<()> {
    // Below the default ephemeral range: no client's source port is P or
    // P+1, and the clients connect before the range is narrowed.
    const P: u16 = 30_000;
    let (idle, mut ck, start, _, trace, clients) =
        park_with_children_of(fam, kernel, grace_ms() * 5, || {
            Group::bind_on(fam, Some(P), &[None])
        })?
        .parts();
    let default_range = read_sysctl(PORT_RANGE)?;
    write_sysctl(PORT_RANGE, &format!("{P} {}", P + 1)).context("narrow ip_local_port_range")?;
    let range = read_sysctl(PORT_RANGE)?;
    if range.split_whitespace().collect::<Vec<_>>() != [P.to_string(), (P + 1).to_string()] {
        bail!("{PORT_RANGE} reads {range:?} after writing {P} {}", P + 1);
    }
    let any = fam.loopback(0);
    let s1 = fam.tcp_socket()?;
    let r1 = port_or_errno(s1.bind(&any.into()), &s1);
    let s2 = fam.tcp_socket()?;
    let r2 = port_or_errno(s2.bind(&any.into()), &s2);
    let s3 = fam.tcp_socket()?;
    let r3 = port_or_errno(s3.listen(8), &s3);
    match kernel {
        Kernel::Patched => {
            ck.eq("first bind to port 0", r1, format!("port {}", P + 1));
            ck.eq("second bind to port 0", r2, "EADDRINUSE".to_string());
            ck.eq("listen without bind", r3, "EADDRINUSE".to_string());
            ck.eq(
                "parks after the ephemeral binds",
                ends(&start)?,
                ends_text(&[("parked", 1)]),
            );
        }
        Kernel::Base => {
            let mut got = [r1, r2];
            got.sort();
            ck.eq(
                "ports of the two binds to port 0",
                got.join(", "),
                format!("port {P}, port {}", P + 1),
            );
            ck.eq("listen without bind", r3, "EADDRINUSE".to_string());
        }
    }
    drop((s1, s2, s3));
    write_sysctl(PORT_RANGE, &default_range).context("restore ip_local_port_range")?;
    ck.gate("ephemeral ports")?;
    let n = new_listener(fam, P)?;
    adopted_by(
        kernel,
        &n,
        "the new listener",
        &clients,
        &start,
        trace.as_ref(),
        &mut ck,
    )?;
    parks_off(kernel)?;
    drop((n, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

// ---------------------------------------------------------------------------
// Bounds

const MAX_ORPHANS: &str = "/proc/sys/net/ipv4/tcp_max_orphans";

/// net.ipv4.tcp_max_orphans (a global sysctl, visible only from the
/// initial namespace) at least `n` while this lives, restored on drop: a
/// park counts as an orphan and none is made over the bound.
struct MaxOrphans(Option<String>);

/// Runs `f` on a thread in the initial network namespace (pid 1's).
fn in_init_netns<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    thread::spawn(move || {
        let init = std::fs::File::open("/proc/1/ns/net").context("open /proc/1/ns/net")?;
        use std::os::fd::AsRawFd;
        // SAFETY: a namespace file we own, for this thread only.
        if unsafe { libc::setns(init.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns to the initial namespace");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in the initial namespace panicked"))?
}

impl MaxOrphans {
    /// Exactly `n` while this lives.
    fn exactly(n: u64) -> Result<MaxOrphans> {
        in_init_netns(move || {
            let old = std::fs::read_to_string(MAX_ORPHANS).context("read tcp_max_orphans")?;
            std::fs::write(MAX_ORPHANS, n.to_string()).context("write tcp_max_orphans")?;
            Ok(MaxOrphans(Some(old.trim().to_string())))
        })
    }

    fn at_least(n: u64) -> Result<MaxOrphans> {
        in_init_netns(move || {
            let old = std::fs::read_to_string(MAX_ORPHANS).context("read tcp_max_orphans")?;
            let now: u64 = old.trim().parse().context("parse tcp_max_orphans")?;
            if now >= n {
                return Ok(MaxOrphans(None));
            }
            std::fs::write(MAX_ORPHANS, n.to_string()).context("write tcp_max_orphans")?;
            Ok(MaxOrphans(Some(old.trim().to_string())))
        })
    }
}

impl Drop for MaxOrphans {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            let _ = in_init_netns(move || {
                std::fs::write(MAX_ORPHANS, v)?;
                Ok(())
            });
        }
    }
}

/// The most listeners a namespace may have parked at once.
const PARK_BOUND: usize = 256;

/// 257 listeners of a namespace close with a grace: the first 256 park,
/// the 257th, with QUEUED children, closes as on base: its children are
/// reset at once (long before the grace), it counts no park and traces
/// none, and its port is free at once. Writing 0 then cancels the 256.
pub fn park_bound_per_netns(kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    let fam = Family::V4;
    let grace_ms = long_grace_ms(10_000);
    let grace = Duration::from_millis(grace_ms);
    let _orphans = MaxOrphans::at_least(4 * PARK_BOUND as u64)?;
    let (idle, mut ck, start) = settled(kernel, grace_ms)?;
    // The first park and the 257th listener are traced from the start.
    let mut last = Group::bind(fam, 1)?;
    let port = last.port;
    let g = Group::bind(fam, 1)?;
    let first = g.port;
    let trace = Trace::start_ports(&[port, first])?;
    g.listen(0).context("listener 0")?;
    drop(g);
    for i in 1..PARK_BOUND {
        let g = Group::bind(fam, 1)?;
        g.listen(0).with_context(|| format!("listener {i}"))?;
        drop(g);
    }
    wait_ends(
        &mut ck,
        "after 256 closes",
        &start,
        &[("parked", u(PARK_BOUND))],
        event_timeout(),
    )?;
    ck.eq(
        "TCP orphans with 256 parked",
        tcp_orphans()?,
        idle.orphans() + u(PARK_BOUND),
    );
    ck.gate("256 parked")?;

    let clients = children_on_l0(fam, &last, &mut ck, QUEUED)?;
    last.stop(0, Stop::Close)?;
    let closed_at = Instant::now();
    all_reset(&mut ck, "client fates of the 257th", &clients)?;
    ck.le(
        "257th children reset after its close (ms)",
        closed_at.elapsed().as_millis(),
        (grace / 2).as_millis(),
    );
    ck.eq(
        "parks after the 257th close",
        ends(&start)?,
        ends_text(&[("parked", u(PARK_BOUND))]),
    );
    ck.eq(
        "bind without SO_REUSEPORT to the 257th's port",
        plain_bind(fam, port)?,
        "Ok(())".to_string(),
    );
    all_failed_no_listener(&mut ck, kernel, &start, None, QUEUED)?;
    let ev = trace.park_events()?;
    ck.eq(
        "park events of the 257th",
        park_text(&events_of(&ev, port)),
        String::new(),
    );

    set_sysctl(GRACE, "0")?;
    wait_ends(
        &mut ck,
        "after writing 0",
        &start,
        &[("parked", u(PARK_BOUND)), ("cancelled", u(PARK_BOUND))],
        event_timeout(),
    )?;
    let ev = trace.park_events()?;
    ck.eq(
        "park events of the first",
        park_text(&events_of(&ev, first)),
        park_and_end("cancelled", 0),
    );
    drop(clients);
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Parks made before tcp_max_orphans is lowered below them.
const OVER_MAX_PARKS: u64 = 2;

/// A park counts as an orphan and none is made over tcp_max_orphans:
/// with two listeners parked, the bound is lowered to 1; once the kernel's
/// cached orphan count has caught up (it is refreshed every 100 ms, and
/// is seen to have when a childless probe listener's close stops
/// parking), a listener with QUEUED children closes as on base: its
/// children are reset at once, no park is counted or traced, its port is
/// free. The parks made meanwhile are then all cancelled.
pub fn park_bound_max_orphans(kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    let fam = Family::V4;
    let grace_ms = long_grace_ms(20_000);
    let (idle, mut ck, start) = settled(kernel, grace_ms)?;
    let parked = || -> Result<u64> { TcpExt::read()?.since(&start, PARKED) };
    for i in 0..OVER_MAX_PARKS {
        let g = Group::bind(fam, 1)?;
        g.listen(0).with_context(|| format!("listener {i}"))?;
    }
    ck.eq(
        "parks before the bound is lowered",
        parked()?,
        OVER_MAX_PARKS,
    );
    ck.gate("parked")?;
    let bound = MaxOrphans::exactly(OVER_MAX_PARKS - 1)?;
    // Each probe that still parks adds an orphan: the cache can only go
    // further over the bound.
    let mut probes = 0;
    let caught_up = wait_until(event_timeout(), || {
        let before = parked()?;
        let g = Group::bind(fam, 1)?;
        g.listen(0)?;
        drop(g);
        probes += 1;
        Ok(parked()? == before)
    })?;
    ck.eq("a close over the bound did not park", caught_up, true);
    ck.gate("over the bound")?;
    let over = parked()?;

    let mut last = Group::bind(fam, 1)?;
    let trace = Trace::start(last.port)?;
    let clients = children_on_l0(fam, &last, &mut ck, QUEUED)?;
    last.stop(0, Stop::Close)?;
    all_reset(
        &mut ck,
        "client fates of the listener over the bound",
        &clients,
    )?;
    ck.eq("parks after its close", parked()?, over);
    ck.eq(
        "its park events",
        park_text(&trace.park_events()?),
        String::new(),
    );
    ck.eq(
        "bind without SO_REUSEPORT to its port",
        plain_bind(fam, last.port)?,
        "Ok(())".to_string(),
    );
    drop(bound);
    set_sysctl(GRACE, "0")?;
    wait_ends(
        &mut ck,
        "after writing 0",
        &start,
        &[("parked", over), ("cancelled", over)],
        event_timeout(),
    )?;
    note(&format!(
        "{over} parks; probe listeners closed until one did not park over tcp_max_orphans=1: {probes}"
    ));
    drop(clients);
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// Namespaces, parks in each, and listen/close rounds of the loop.
const MANY_NETNS: usize = 100;
const PARKS_PER_NETNS: usize = 10;
const LOOP_ROUNDS: usize = 200;
/// The ports of the parks, the same in every namespace: below the
/// ephemeral range, so that no port the loop namespace picks is traced.
const MANY_BASE_PORT: u16 = 21_000;

/// What the loop namespace reports: listen() failures, and its counters.
struct LoopReport {
    listen_failures: Vec<String>,
    ends: String,
    inuse: u64,
}

/// The loop namespace: a SO_REUSEPORT listener on one port listens, the
/// park of the previous round ends adopted by it, it closes and parks, 200
/// times; then writing 0 cancels the last park. Every listen() must work
/// whatever the thousand parks of the other namespaces do.
fn listen_close_loop(grace_ms: u64) -> Result<LoopReport> {
    enter_fresh_netns()?;
    set_grace(Kernel::Patched, grace_ms)?;
    let start = TcpExt::read()?;
    let port = {
        let probe = Group::bind(Family::V4, 1)?;
        probe.port
    };
    let mut listen_failures = Vec::new();
    let adopted = |n: u64| -> Result<bool> {
        wait_until(event_timeout(), || {
            Ok(TcpExt::read()?.since(&start, super::stop_start::ADOPTED)? >= n)
        })
    };
    for i in 0..LOOP_ROUNDS {
        let l = match Group::bind_on(Family::V4, Some(port), &[None]).and_then(|l| {
            l.listen(0)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                listen_failures.push(format!("round {i}: {e:#}"));
                continue;
            }
        };
        // The previous round's park ends adopted before this one closes:
        // a joiner that closes first leaves both parks waiting instead.
        if i > 0 && !adopted(i as u64)? {
            listen_failures.push(format!("round {i}: the previous park was not adopted"));
        }
        drop(l);
    }
    set_sysctl(GRACE, "0")?;
    let mut got = String::new();
    wait_until(event_timeout(), || {
        got = ends(&start)?;
        Ok(got.contains("cancelled=1"))
    })?;
    let mut inuse = u64::MAX;
    wait_until(event_timeout(), || {
        inuse = tcp_inuse()?;
        Ok(inuse == 0)
    })?;
    Ok(LoopReport {
        listen_failures,
        ends: got,
        inuse,
    })
}

/// 1,000 parks in 100 namespaces (10 ports each, the same ports in each
/// namespace) while another namespace listens and closes a SO_REUSEPORT
/// listener 200 times: every park ends `expired` (10 per namespace, the
/// trace shows 1,000 parks and 1,000 expiries on those ports), no listen()
/// of the loop fails, its 200 parks end as 199 adoptions and one cancel,
/// every namespace's TCP sockets and the machine's orphans are back to
/// idle.
pub fn park_many_namespaces(kernel: Kernel) -> Result<()> {
    patched_only(kernel)?;
    let grace_ms = 3000 * u64::from(time_scale());
    let grace = Duration::from_millis(grace_ms);
    let _orphans = MaxOrphans::at_least(4 * (MANY_NETNS * PARKS_PER_NETNS) as u64)?;
    let idle = Idle::settle()?;
    let home = Netns::current()?;
    let ports: Vec<u16> = (0..PARKS_PER_NETNS as u16)
        .map(|i| MANY_BASE_PORT + i)
        .collect();
    let trace = Trace::start_ports(&ports)?;
    let t0 = Instant::now();
    let looping = thread::spawn(move || listen_close_loop(grace_ms));

    let mut spaces = Vec::with_capacity(MANY_NETNS);
    for k in 0..MANY_NETNS {
        enter_fresh_netns().with_context(|| format!("namespace {k}"))?;
        set_grace(Kernel::Patched, grace_ms)?;
        spaces.push(Netns::current()?);
        for &p in &ports {
            let g = Group::bind_on(Family::V4, Some(p), &[None])
                .with_context(|| format!("namespace {k}, port {p}"))?;
            g.listen(0)?;
            drop(g);
        }
    }
    home.enter()?;
    let set_up = t0.elapsed();
    let report = join(looping)?;
    let mut ck = Checks::new();
    ck.eq(
        "loop listen() failures",
        report.listen_failures.join("; "),
        String::new(),
    );
    ck.eq(
        "loop namespace parks and ends",
        report.ends,
        ends_text(&[
            ("parked", u(LOOP_ROUNDS)),
            ("adopted", u(LOOP_ROUNDS) - 1),
            ("cancelled", 1),
        ]),
    );
    ck.eq("loop namespace TCP inuse at the end", report.inuse, 0);

    // Every park ends within its grace of its close; the last close was
    // before `set_up`.
    let all = MANY_NETNS * PARKS_PER_NETNS;
    let within =
        (t0 + set_up + grace + end_margin(grace)).saturating_duration_since(Instant::now());
    // The orphan count is cheap to read, the trace is not: wait on the
    // former (the parks are orphans), then read the latter once.
    let _ = wait_until(within, || Ok(tcp_orphans()? <= idle.orphans()))?;
    let seen = trace.park_events()?;
    let count = |what: &str| seen.iter().filter(|e| e.event == what).count();
    ck.eq("parked events", count("parked"), all);
    ck.eq("expired events", count("expired"), all);
    ck.eq("events", seen.len(), 2 * all);
    let expected = ends_text(&[
        ("parked", u(PARKS_PER_NETNS)),
        ("expired", u(PARKS_PER_NETNS)),
    ]);
    let mut bad = Vec::new();
    for (k, ns) in spaces.iter().enumerate() {
        ns.enter()?;
        // A fresh namespace's counters start at 0.
        let got = ends(&TcpExt::read()?.zeroed())?;
        if got != expected {
            bad.push(format!("namespace {k}: {got}"));
        }
        let inuse = tcp_inuse()?;
        if inuse != 0 {
            bad.push(format!("namespace {k}: TCP inuse {inuse}"));
        }
        let (ok, fail) = (
            TcpExt::read()?.get(MIGRATE_OK)?,
            TcpExt::read()?.get(MIGRATE_FAIL)?,
        );
        if ok + fail != 0 {
            bad.push(format!("namespace {k}: migrations ok={ok} failed={fail}"));
        }
    }
    home.enter()?;
    ck.eq("namespaces not as expected", bad.join("; "), String::new());
    drop(spaces);
    idle.check(&mut ck, "at the end", event_timeout())?;
    note(&format!(
        "{all} parks in {MANY_NETNS} namespaces set up in {} ms next to {LOOP_ROUNDS} listen/close rounds, all over in {} ms",
        set_up.as_millis(),
        t0.elapsed().as_millis()
    ));
    ck.finish()
}
