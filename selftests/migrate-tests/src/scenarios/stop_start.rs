// SPDX-License-Identifier: GPL-2.0
//! Stop-then-start: the last listener of a group closes and its
//! replacement listens only later. With `tcp_migrate_req_grace_ms` the
//! closed listener is parked: it keeps answering SYNs and keeps its queues
//! until a listener of the same group adopts them, or the grace runs out.
//! On the base kernel everything queued is reset at close and every SYN
//! of the gap is refused: these tests assert that loss there.

use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use super::common::{
    all_reset, as_uid, caused_by, children_on_l0, connect_greet, serves_new_client, u,
};
use super::parked::{park_with_children, Parked};
use super::sysctl_abi::write_outcome;
use crate::bpf::HoldAck;
use crate::harness::{
    event_timeout, exchange, fates, note, read_sysctl, scaled, set_migrate_req, set_sysctl,
    start_trace, tcp_inuse, time_scale, wait_until, Checks, Client, Deadline, Family, Group,
    Kernel, ParkEvent, Reason, Stop, TcpExt, Trace, MIGRATE_FAIL, MIGRATE_OK,
};

pub const GRACE: &str = "net.ipv4.tcp_migrate_req_grace_ms";
pub(super) const PARKED: &str = "TCPMigrateReqParked";
pub(super) const ADOPTED: &str = "TCPMigrateReqAdopted";
pub(super) const EXPIRED: &str = "TCPMigrateReqParkExpired";
pub(super) const EVICTED: &str = "TCPMigrateReqParkEvicted";
pub(super) const DESTROYED: &str = "TCPMigrateReqParkDestroyed";
pub(super) const CANCELLED: &str = "TCPMigrateReqParkCancelled";

/// The park counter and the five ends, by the name the tests give them.
/// At idle the parks equal the sum of the ends: one end per park.
const PARK_COUNTERS: [(&str, &str); 6] = [
    ("parked", PARKED),
    ("adopted", ADOPTED),
    ("expired", EXPIRED),
    ("evicted", EVICTED),
    ("destroyed", DESTROYED),
    ("cancelled", CANCELLED),
];

/// The parks since `start` and how they ended, as one comparable text
/// ("parked=1 adopted=0 expired=0 evicted=1 destroyed=0 cancelled=0").
pub(super) fn ends(start: &TcpExt) -> Result<String> {
    let now = TcpExt::read()?;
    let mut out = Vec::new();
    for (name, counter) in PARK_COUNTERS {
        out.push(format!("{name}={}", now.since(start, counter)?));
    }
    Ok(out.join(" "))
}

/// What [`ends`] reads when the counters named in `want` grew by their
/// value and the others not at all.
pub(super) fn ends_text(want: &[(&str, u64)]) -> String {
    PARK_COUNTERS
        .iter()
        .map(|(name, _)| {
            let n: u64 = want.iter().filter(|(w, _)| w == name).map(|(_, n)| n).sum();
            format!("{name}={n}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits (bounded by `within`) until the parks since `start` and their
/// ends read `want` (see [`ends_text`]), then checks they do, as `what`.
pub(super) fn wait_ends(
    ck: &mut Checks,
    what: &str,
    start: &TcpExt,
    want: &[(&str, u64)],
    within: Duration,
) -> Result<()> {
    let want = ends_text(want);
    let mut got = String::new();
    wait_until(within, || {
        got = ends(start)?;
        Ok(got == want)
    })?;
    ck.eq(what, got, want);
    Ok(())
}

/// No park from here on: the test's last listeners close as on base, and
/// nothing of the test outlives it. Nothing may be parked at this point
/// (0 would cancel it).
pub(super) fn parks_off(kernel: Kernel) -> Result<()> {
    match kernel {
        Kernel::Patched => set_sysctl(GRACE, "0"),
        Kernel::Base => Ok(()),
    }
}

/// How much earlier than its grace a park may end by the trace's clock
/// (seconds): the grace is counted in jiffies, and a guest under TCG may
/// see its ticks late and then several at once.
pub(super) const JIFFY_SLACK: f64 = 0.02;

/// The grace the tests set: 1 s, as the scenarios, widened with
/// the suite's time scale on a debug kernel, where the test's own steps
/// between the close and the new listen() are slower.
pub(super) fn grace_ms() -> u64 {
    1000 * u64::from(time_scale())
}

/// Children queued before the close, handshakes in flight over it, and
/// clients that connect in the gap.
pub(super) const QUEUED: usize = 4;
const IN_FLIGHT: usize = 2;
const IN_GAP: usize = 3;

/// Sets the grace on the patched kernel; the base kernel has no such
/// sysctl, and the test then asserts upstream's loss.
pub(super) fn set_grace(kernel: Kernel, ms: u64) -> Result<()> {
    set_migrate_req(true)?;
    match kernel {
        Kernel::Patched => set_sysctl(GRACE, &ms.to_string()),
        Kernel::Base => Ok(()),
    }
}

/// Connects `ids` and greets; a client the kernel refuses (no listener
/// on the port) counts as refused instead.
fn connect_or_refused(
    fam: Family,
    g: &Group,
    ids: std::ops::Range<usize>,
) -> Result<(Vec<Client>, usize)> {
    let (mut ok, mut refused) = (Vec::new(), 0);
    for id in ids {
        match Client::connect(fam, g.addr(), id) {
            Ok(mut c) => {
                c.send_hello()?;
                ok.push(c);
            }
            Err(e) if caused_by(&e, libc::ECONNREFUSED) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((ok, refused))
}

/// A new listener on the parked group's port, as a restarted server makes.
pub(super) fn new_listener(fam: Family, port: u16) -> Result<Group> {
    let n = Group::bind_on(fam, Some(port), &[None]).context("the new server's bind")?;
    n.listen(0)?;
    Ok(n)
}

/// What `park_one` leaves: the closed group, its queued and its
/// in-flight clients, and the trace of its port (None on base).
type ParkedOne = (Group, Vec<Client>, Vec<Client>, Option<Trace>);

/// QUEUED children wait in L0's accept queue and IN_FLIGHT handshakes
/// miss their final ACK (it comes with the hello, later); then L0 closes.
fn park_one(fam: Family, kernel: Kernel, ck: &mut Checks) -> Result<ParkedOne> {
    let mut g = Group::bind(fam, 1)?;
    let trace = start_trace(kernel, g.port)?;
    let queued = children_on_l0(fam, &g, ck, QUEUED)?;
    let hold = HoldAck::attach(g.port)?;
    let in_flight = (QUEUED..QUEUED + IN_FLIGHT)
        .map(|id| Client::connect(fam, g.addr(), id))
        .collect::<Result<Vec<_>>>()?;
    wait_until(event_timeout(), || Ok(hold.dropped()? >= u(IN_FLIGHT)))?;
    ck.eq("final ACKs held back", hold.dropped()?, u(IN_FLIGHT));
    hold.release()?;
    drop(hold);
    ck.gate("handshakes held")?;
    g.stop(0, Stop::Close)?;
    Ok((g, queued, in_flight, trace))
}

/// Park events as one text, for one exact comparison.
pub(super) fn park_text(ev: &[ParkEvent]) -> String {
    ev.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the tracepoint says at the park: the QUEUED children and the
/// IN_FLIGHT handshakes of `park_one`.
fn parked_event() -> String {
    format!("parked queued={QUEUED} requests={IN_FLIGHT}")
}

/// The last listener closes with children queued and handshakes in
/// flight; clients connect in the gap; a new listener binds the port and
/// listens `gap_ms` after the close. Patched, with a grace of 1 s: every
/// connection is served by the new listener, each migrated once.
/// Base: the queued and in-flight ones are reset, the gap's are refused.
pub fn stop_start(fam: Family, kernel: Kernel, gap_ms: u64) -> Result<()> {
    set_grace(kernel, grace_ms())?;
    let mut ck = Checks::new();
    let start = TcpExt::read()?;
    let (g, queued, mut in_flight, trace) = park_one(fam, kernel, &mut ck)?;
    let closed_at = std::time::Instant::now();
    let (gap, refused) =
        connect_or_refused(fam, &g, QUEUED + IN_FLIGHT..QUEUED + IN_FLIGHT + IN_GAP)?;
    if let Some(rest) = Duration::from_millis(gap_ms).checked_sub(closed_at.elapsed()) {
        thread::sleep(rest);
    }
    let n = new_listener(fam, g.port)?;
    let started_after = closed_at.elapsed();
    for c in &mut in_flight {
        c.send_hello()?;
    }
    let mut clients = queued;
    clients.extend(in_flight);
    clients.extend(gap);
    let all = QUEUED + IN_FLIGHT + IN_GAP;

    match kernel {
        Kernel::Patched => {
            ck.eq("gap clients refused", refused, 0);
            let acc = n.accept_all(all)?;
            ck.eq("accepted by the new listener", acc.len(), all);
            exchange(&clients, &acc)?.check_all_served(&mut ck, all);
            let now = TcpExt::read()?;
            ck.eq(PARKED, now.since(&start, PARKED)?, 1);
            ck.eq(ADOPTED, now.since(&start, ADOPTED)?, 1);
            ck.eq(EXPIRED, now.since(&start, EXPIRED)?, 0);
            ck.migrations("", &start, &now, u(all), 0)?;
            // The adoption runs while the in-flight hellos arrive, so
            // those may still be requests or already children: only the
            // sum is fixed. The event reads the two counts without the
            // listener's locks, and a final ACK being processed at that
            // instant has left the request count but not yet joined the
            // queue: one connection may be missing from the sum. That
            // every connection was adopted is what the migration
            // counters above assert exactly.
            let ev = trace.as_ref().context("no trace")?.park_events()?;
            let names: Vec<&str> = ev.iter().map(|e| e.event.as_str()).collect();
            ck.eq(
                "park events",
                names.join(", "),
                "parked, adopted".to_string(),
            );
            ck.eq(
                "the park",
                ev.first().map(ToString::to_string).unwrap_or_default(),
                parked_event(),
            );
            let adopted = ev.get(1).map(ToString::to_string).unwrap_or_default();
            let held = ev.get(1).map_or(0, |e| u64::from(e.queued + e.requests));
            ck.ge("held at the adoption, queued+requests", held, u(all) - 1);
            ck.le("held at the adoption, queued+requests", held, u(all));
            note(&format!(
                "{all} of {all} served across a {}ms gap ({adopted})",
                started_after.as_millis()
            ));
        }
        Kernel::Base => {
            ck.eq("gap clients refused", refused, IN_GAP);
            let f = fates(&clients, Deadline::after(event_timeout()))?;
            ck.eq(
                "queued and in-flight client fates",
                f.to_string(),
                format!("data=0 reset={} eof=0 silent=0 error=0", QUEUED + IN_FLIGHT),
            );
            let mut acc = Vec::new();
            n.accept_now(0, &mut acc)?;
            ck.eq("accepted by the new listener", acc.len(), 0);
            note(&format!("base: {all} of {all} lost"));
        }
    }
    ck.finish()
}

/// No listener comes within the grace: every parked connection is reset
/// at expiry, the counters say so, and the port and the namespace's TCP
/// sockets are back to idle.
pub fn stop_start_expired(fam: Family, kernel: Kernel) -> Result<()> {
    set_grace(kernel, grace_ms())?;
    let mut ck = Checks::new();
    let idle = tcp_inuse()?;
    let start = TcpExt::read()?;
    let (g, queued, mut in_flight, trace) = park_one(fam, kernel, &mut ck)?;
    // The hellos complete the handshakes now, on the parked listener
    // (base: they meet a closed listener and are reset).
    for c in &mut in_flight {
        c.send_hello()?;
    }
    let (gap, refused) =
        connect_or_refused(fam, &g, QUEUED + IN_FLIGHT..QUEUED + IN_FLIGHT + IN_GAP)?;
    let mut clients = queued;
    clients.extend(in_flight);
    clients.extend(gap);
    let held = clients.len();
    if kernel == Kernel::Patched {
        ck.eq("gap clients refused while parked", refused, 0);
        let expired = wait_until(
            Duration::from_millis(grace_ms()) + scaled(Duration::from_secs(5)),
            || Ok(TcpExt::read()?.since(&start, EXPIRED)? >= 1),
        )?;
        ck.eq("grace expired", expired, true);
    }
    let f = fates(&clients, Deadline::after(event_timeout()))?;
    ck.eq(
        "client fates",
        f.to_string(),
        format!("data=0 reset={held} eof=0 silent=0 error=0"),
    );
    drop(clients);
    let back = wait_until(event_timeout(), || Ok(tcp_inuse()? == idle))?;
    ck.eq("TCP sockets in use back to idle", back, true);
    // The port is free again: a socket without SO_REUSEPORT may take it.
    ck.eq(
        "bind without SO_REUSEPORT after expiry",
        plain_bind(fam, g.port)?,
        "Ok(())".to_string(),
    );
    if kernel == Kernel::Patched {
        let now = TcpExt::read()?;
        ck.eq(PARKED, now.since(&start, PARKED)?, 1);
        ck.eq(ADOPTED, now.since(&start, ADOPTED)?, 0);
        ck.eq(EXPIRED, now.since(&start, EXPIRED)?, 1);
        ck.eq(MIGRATE_OK, now.since(&start, MIGRATE_OK)?, 0);
        ck.eq(MIGRATE_FAIL, now.since(&start, MIGRATE_FAIL)?, u(held));
        // A second after the hellos every handshake has completed on the
        // parked listener: the expiry resets children only.
        let ev = trace.as_ref().context("no trace")?.park_events()?;
        ck.eq(
            "park events",
            park_text(&ev),
            format!("{}, expired queued={held} requests=0", parked_event()),
        );
    }
    ck.finish()
}

/// What bind(2) of a socket without SO_REUSEPORT to `port` answered, as
/// the Debug text of `Result<(), Option<errno>>`: `Ok(())` once nothing
/// holds the port.
pub(super) fn plain_bind(fam: Family, port: u16) -> Result<String> {
    let s = fam.tcp_socket()?;
    Ok(format!(
        "{:?}",
        s.bind(&fam.loopback(port).into())
            .map_err(|e| e.raw_os_error())
    ))
}

/// What bind(2) answered to a socket of `uid` (None: this thread's, root)
/// with or without SO_REUSEPORT, as the Debug text of `Result<(), errno>`.
fn bind_outcome(fam: Family, port: u16, uid: Option<u32>, reuseport: bool) -> Result<String> {
    let bind = move || -> Result<String> {
        let s = fam.tcp_socket()?;
        s.set_reuse_port(reuseport)?;
        let r = s.bind(&fam.loopback(port).into());
        Ok(format!(
            "{:?}",
            r.map_err(|e| e.raw_os_error().unwrap_or(-1))
        ))
    };
    match uid {
        Some(uid) => as_uid(uid, bind),
        None => bind(),
    }
}

/// What bind(2) of a stranger to a parked port answers, on either kernel:
/// base has freed the port at the close, and the patched kernel evicts
/// the parked listener rather than refuse what base allows.
const BIND_OK: &str = "Ok(())";

/// Patched: the new listener `n` (named `who`) accepts and serves every
/// one of the QUEUED `clients`. Base: they were all reset at the close.
pub(super) fn served_or_reset(
    kernel: Kernel,
    n: &Group,
    who: &str,
    clients: &[Client],
    ck: &mut Checks,
) -> Result<()> {
    match kernel {
        Kernel::Patched => {
            let acc = n.accept_all(QUEUED)?;
            ck.eq(&format!("accepted by {who}"), acc.len(), QUEUED);
            exchange(clients, &acc)?.check_all_served(ck, QUEUED);
        }
        Kernel::Base => all_reset(ck, "client fates", clients)?,
    }
    Ok(())
}

/// While the port is parked, a socket of another uid binds it: the bind
/// succeeds, as on base, and evicts the parked listener, whose children
/// are reset by its close (base: at the close). The port is then free for
/// a socket without SO_REUSEPORT too, and a listener bound to another
/// device serves new clients there.
pub fn stop_start_strangers(fam: Family, kernel: Kernel) -> Result<()> {
    let (idle, mut ck, start, port, trace, clients) =
        park_with_children(fam, kernel, grace_ms() * 5)?.parts();

    ck.eq(
        "bind of uid 65534 with SO_REUSEPORT",
        bind_outcome(fam, port, Some(65534), true)?,
        BIND_OK.to_string(),
    );
    if kernel == Kernel::Patched {
        let ev = [("parked", 1), ("evicted", 1)];
        wait_ends(
            &mut ck,
            "after the stranger's bind",
            &start,
            &ev,
            event_timeout(),
        )?;
    }
    all_reset(&mut ck, "parked client fates", &clients)?;
    ck.gate("the stranger's bind")?;
    ck.eq(
        "bind without SO_REUSEPORT",
        bind_outcome(fam, port, None, false)?,
        BIND_OK.to_string(),
    );
    // From here no listener parks: the test leaves nothing behind.
    parks_off(kernel)?;
    let dev = Group::bind_on(fam, Some(port), &[Some("lo")])?;
    dev.listen(0)?;
    serves_new_client(fam, &dev, &mut ck, 100)?;
    if kernel == Kernel::Patched {
        let ev = trace.as_ref().context("no trace")?.park_events()?;
        ck.eq(
            "park events",
            park_text(&ev),
            format!("parked queued={QUEUED} requests=0, evicted queued={QUEUED} requests=0"),
        );
        let now = ck.reasons(
            kernel,
            &start,
            trace.as_ref(),
            "child",
            &[(Reason::NoListener, u(QUEUED))],
        )?;
        ck.migrations("", &start, &now, 0, u(QUEUED))?;
        let ev = [("parked", 1), ("evicted", 1)];
        wait_ends(&mut ck, "at the end", &start, &ev, Duration::ZERO)?;
    }
    drop((dev, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}

/// The grace takes 0 to 60000 ms; anything else is EINVAL and leaves the
/// value as it was. Base: the sysctl does not exist.
pub fn grace_rejects_unknown(kernel: Kernel) -> Result<()> {
    let mut ck = Checks::new();
    let path = "/proc/sys/net/ipv4/tcp_migrate_req_grace_ms";
    if kernel == Kernel::Base {
        ck.eq(
            "the sysctl exists",
            std::path::Path::new(path).exists(),
            false,
        );
        return ck.finish();
    }
    ck.eq("default", read_sysctl(GRACE)?, "0".to_string());
    for (value, want) in [
        ("60000", "ok"),
        ("0", "ok"),
        ("250", "ok"),
        ("60001", "EINVAL"),
        ("-1", "EINVAL"),
        ("abc", "EINVAL"),
    ] {
        let old = read_sysctl(GRACE)?;
        ck.eq(
            &format!("writing {value:?}"),
            write_outcome(GRACE, value).as_str(),
            want,
        );
        let expect = if want == "ok" { value.to_string() } else { old };
        ck.eq(
            &format!("value after {value:?}"),
            read_sysctl(GRACE)?,
            expect,
        );
    }
    ck.finish()
}

/// The parked listener belongs to uid 65534, not to root although it has
/// no file any more: a new listener of uid 65534 adopts every queued
/// connection, while root's bind(2) with SO_REUSEPORT, which could not
/// have joined the group while the old listener was open, succeeds and
/// evicts the parked listener (base: the children are reset at each
/// close, root's bind succeeds).
pub fn stop_start_owner(fam: Family, kernel: Kernel) -> Result<()> {
    const OWNER: u32 = 65534;
    // The socket's owner is who made it; root's listen() does not change it.
    let mut p = Parked::queue(fam, kernel, grace_ms() * 5, || {
        as_uid(OWNER, move || Group::bind(fam, 1))
    })?;
    p.close()?;
    let (idle, mut ck, start, port, trace, first) = p.parts();
    let mut n = as_uid(OWNER, move || new_listener(fam, port))?;
    served_or_reset(kernel, &n, "the owner's new listener", &first, &mut ck)?;
    if kernel == Kernel::Patched {
        let now = TcpExt::read()?;
        ck.eq(ADOPTED, now.since(&start, ADOPTED)?, 1);
    }
    ck.gate("the owner's adoption")?;

    // The owner's new listener closes with children of its own, and
    // root binds the port.
    let clients = connect_greet(fam, &n, 10..10 + QUEUED)?;
    ck.eq(
        "queue of the owner's new listener",
        n.wait_queued(0, QUEUED as u32)?,
        QUEUED as u32,
    );
    ck.gate("children of the owner's new listener")?;
    n.stop(0, Stop::Close)?;
    if kernel == Kernel::Patched {
        let ev = [("parked", 2), ("adopted", 1)];
        wait_ends(
            &mut ck,
            "after the second close",
            &start,
            &ev,
            event_timeout(),
        )?;
        ck.gate("parked again")?;
    }
    ck.eq(
        "bind of root with SO_REUSEPORT",
        bind_outcome(fam, port, None, true)?,
        BIND_OK.to_string(),
    );
    if kernel == Kernel::Patched {
        let ev = [("parked", 2), ("adopted", 1), ("evicted", 1)];
        wait_ends(&mut ck, "after root's bind", &start, &ev, event_timeout())?;
    }
    all_reset(&mut ck, "client fates after root's bind", &clients)?;
    if kernel == Kernel::Patched {
        let ev = trace.as_ref().context("no trace")?.park_events()?;
        let q = format!("queued={QUEUED} requests=0");
        ck.eq(
            "park events",
            park_text(&ev),
            format!("parked {q}, adopted {q}, parked {q}, evicted {q}"),
        );
        let now = TcpExt::read()?;
        ck.migrations("", &start, &now, u(QUEUED), u(QUEUED))?;
    }
    parks_off(kernel)?;
    drop((first, clients));
    idle.check(&mut ck, "at the end", event_timeout())?;
    ck.finish()
}
