// SPDX-License-Identifier: GPL-2.0
//! Everything around the traffic that changes while it runs: the migration
//! sysctl and syncookies flip, a migrate program is attached, replaced and
//! detached, final ACKs are held so that SYN+ACK timers fire, the parking
//! grace flips, whole network namespaces holding live, migrating and
//! parked connections are torn down, listeners (parked or live) are
//! destroyed by a sock_diag SOCK_DESTROY (what `ss -K` sends), and live
//! listeners are put into a sockmap, where they stay when they close and
//! park.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use migrate_tests::bpf::{HoldAck, Migrate, Steer};
use migrate_tests::harness::{
    enter_fresh_netns, poll_fd, read_sysctl, scaled, set_sysctl, write_sysctl, Deadline, Family,
    MIGRATE_REQ,
};

use crate::listeners::{tcp_socket, Pool};
use crate::stats::{Stats, Stop};

/// Fast Open for clients and servers without cookies (0x1 | 0x2 | 0x4 |
/// 0x200), so every Fast Open SYN makes a child at once.
pub const TFO_NO_COOKIES: &str = "519";

/// How long final ACKs are held: past the first SYN+ACK timer, which fires
/// after 1 s of real time on any kernel, so this is not scaled. Every ACK
/// to the port is dropped meanwhile, the clients' data segments too: a
/// 30-minute campaign with a hold scaled to 15 s and one operation in ten
/// a hold kept ACKs dropped for over half of the run, and clients whose
/// request went unacknowledged through seven retransmissions were counted
/// as hung.
const HOLD: Duration = Duration::from_millis(1500);

/// At least this long between two holds, whatever the chaos thread's pace:
/// a client must be able to get its data through between them. Without a
/// gap, holds chosen one time in twenty still covered two thirds of a
/// 20 s run on the plain kernel, and a Fast Open client whose data went
/// unacknowledged through five retransmissions timed out.
const HOLD_GAP: Duration = Duration::from_millis(7500);

/// The parking grace (stop-then-start) of the patched kernel; the base
/// kernel has none, and then the stress never parks.
pub const PARK_GRACE: &str = "net.ipv4.tcp_migrate_req_grace_ms";

/// Whether this kernel can park a closed last listener.
pub fn can_park() -> bool {
    read_sysctl(PARK_GRACE).is_ok()
}

/// The graces the chaos thread flips among, in ms: off, shorter than a
/// churn step (parks that expire), and long enough to be adopted.
const PARK_GRACES: &[u32] = &[0, 300, 1500];

/// The chaos thread: one random operation after another until the run
/// stops. `modes` are the tcp_migrate_req values the kernel accepts.
/// A part of the chaos that `--without` leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Mptcp,
    Destroy,
    Sockmap,
}

pub fn chaos(
    pools: &[Arc<Pool>],
    modes: &[u8],
    without: &[Part],
    seed: u64,
    stop: &Stop,
    stats: &Stats,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last_hold: Option<std::time::Instant> = None;
    // The program each group has now (one per address family).
    let mut steer: Vec<Option<Steer>> = pools.iter().map(|_| None).collect();
    let mut sockmap = SockMap::default();
    while !stop.is_set() {
        let roll = rng.u32(..100);
        let r = match roll {
            0..=24 => {
                let v = modes[rng.usize(..modes.len())];
                write_sysctl(MIGRATE_REQ, &v.to_string())
                    .map(|()| stats.bump(&format!("op/tcp_migrate_req={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_migrate_req"))
            }
            25..=34 => {
                let v = if rng.bool() { "1" } else { "2" };
                write_sysctl("net.ipv4.tcp_syncookies", v)
                    .map(|()| stats.bump(&format!("op/tcp_syncookies={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_syncookies"))
            }
            35..=64 => {
                let k = rng.usize(..pools.len());
                program(&pools[k], &mut steer[k], &mut rng, stats)
            }
            65..=69 if last_hold.is_none_or(|t| t.elapsed() >= HOLD_GAP) => {
                let r = hold_acks(pools, stats);
                last_hold = Some(std::time::Instant::now());
                r
            }
            70..=79 => netns_teardown(stats),
            80..=84 if can_park() => {
                let r = fastrand::Rng::with_seed(rng.u64(..));
                park_end(r, stats)
            }
            // The last listener of a group that closes parks, and the
            // next one to listen adopts what it kept, or the grace ends.
            85..=92 if can_park() => {
                let v = PARK_GRACES[rng.usize(..PARK_GRACES.len())];
                write_sysctl(PARK_GRACE, &v.to_string())
                    .map(|()| stats.bump(&format!("op/park_grace_ms={v}")))
                    .map_err(|e| anyhow!(e).context("write tcp_migrate_req_grace_ms"))
            }
            93..=96 if !without.contains(&Part::Destroy) => {
                let pool = &pools[rng.usize(..pools.len())];
                sock_destroy(pool, stats)
            }
            97..=99 if !without.contains(&Part::Sockmap) => sockmap.step(pools, &mut rng, stats),
            _ => Ok(()),
        };
        if let Err(e) = r {
            stats.error("chaos/failed", &e);
        }
        thread::sleep(scaled(Duration::from_millis(rng.u64(10..60))));
    }
    // The programs are detached at the end, so that the last migrations
    // see the sysctl alone.
    for (pool, s) in pools.iter().zip(&steer) {
        if let (Some(s), Some(l)) = (s, pool.listening().first()) {
            let _ = s.detach(l);
        }
    }
}

/// How a park of [`park_end`] is made to end.
#[derive(Clone, Copy, Debug)]
enum End {
    Adopted,
    Expired,
    Evicted,
    Destroyed,
    Cancelled,
}

impl End {
    const ALL: [End; 5] = [
        End::Adopted,
        End::Expired,
        End::Evicted,
        End::Destroyed,
        End::Cancelled,
    ];

    fn name(self) -> &'static str {
        match self {
            End::Adopted => "adopted",
            End::Expired => "expired",
            End::Evicted => "evicted",
            End::Destroyed => "destroyed",
            End::Cancelled => "cancelled",
        }
    }

    fn counter(self) -> &'static str {
        match self {
            End::Adopted => "TCPMigrateReqAdopted",
            End::Expired => "TCPMigrateReqParkExpired",
            End::Evicted => "TCPMigrateReqParkEvicted",
            End::Destroyed => "TCPMigrateReqParkDestroyed",
            End::Cancelled => "TCPMigrateReqParkCancelled",
        }
    }
}

/// Children of the listener a [`park_end`] parks.
const PARK_END_CHILDREN: usize = 2;

/// In a namespace of its own, next to the traffic: a listener with
/// children, half the time in a sockmap, closes and parks, and its park is
/// ended one way of five chosen at random: a joiner adopts it, its grace
/// expires, a stranger's bind() evicts it, SOCK_DESTROY destroys it, or the
/// grace is written to 0. The namespace's counters must then show one
/// park and exactly that end, and its clients must all be served (adopted)
/// or all reset (the other ends): anything else is counted under
/// `park_end_failed/` and fails the run.
fn park_end(mut rng: fastrand::Rng, stats: &Stats) -> Result<()> {
    use migrate_tests::harness::{exchange, fates, wait_until, Client, Group, TcpExt};
    let end = End::ALL[rng.usize(..End::ALL.len())];
    let in_sockmap = rng.bool();
    let r = thread::spawn(move || -> Result<Option<String>> {
        enter_fresh_netns()?;
        set_sysctl(MIGRATE_REQ, "1")?;
        // Long enough for every end but the expiry to come first.
        let grace_ms = match end {
            End::Expired => 300,
            _ => 20_000,
        };
        set_sysctl(PARK_GRACE, &grace_ms.to_string())?;
        let start = TcpExt::read()?;
        let mut g = Group::bind(Family::V4, 1)?;
        let port = g.port;
        g.listen(0)?;
        let mut clients = Vec::new();
        for id in 0..PARK_END_CHILDREN {
            let mut c = Client::connect(Family::V4, g.addr(), id)?;
            c.send_hello()?;
            clients.push(c);
        }
        if g.wait_queued(0, PARK_END_CHILDREN as u32)? != PARK_END_CHILDREN as u32 {
            return Ok(Some("children not queued".into()));
        }
        let map = match in_sockmap {
            true => {
                let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                    sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                    ..Default::default()
                };
                let m = MapHandle::create(MapType::Sockmap, Some("park_end"), 4, 4, 1, &opts)
                    .context("sockmap")?;
                let fd = g.fd(0)? as u32;
                m.update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
                    .context("put the listener into the sockmap")?;
                Some(m)
            }
            false => None,
        };
        g.stop(0, migrate_tests::harness::Stop::Close)?;
        let grew = |name: &str| -> Result<u64> { TcpExt::read()?.since(&start, name) };
        let timeout = scaled(Duration::from_secs(5));
        if !wait_until(timeout, || Ok(grew("TCPMigrateReqParked")? == 1))? {
            return Ok(Some("not parked".into()));
        }
        let mut joiner = None;
        match end {
            End::Adopted => {
                let n = Group::bind_on(Family::V4, Some(port), &[None])?;
                n.listen(0)?;
                joiner = Some(n);
            }
            End::Expired => {}
            End::Evicted => {
                let s = tcp_socket(Family::V4)?;
                s.bind(&g.addr().into()).context("the stranger's bind")?;
            }
            End::Destroyed => {
                let e = sock_destroy_request(&Pool::new_bound(Family::V4, port))?;
                if e != 0 {
                    return Ok(Some(format!("SOCK_DESTROY answered {e}")));
                }
            }
            End::Cancelled => set_sysctl(PARK_GRACE, "0")?,
        }
        if !wait_until(timeout + Duration::from_millis(grace_ms.min(1000)), || {
            Ok(grew(end.counter())? == 1)
        })? {
            return Ok(Some(format!("{} not counted", end.name())));
        }
        let deadline = Deadline::after(timeout);
        let fate = match &joiner {
            Some(n) => {
                let acc = n.accept_all(PARK_END_CHILDREN)?;
                let ex = exchange(&clients, &acc)?;
                // Under fault injection a migration may fail for want of
                // memory (the request's clone): that client is reset, and
                // counted, not lost.
                let nomem = grew("TCPMigrateReqFailNoMem")? as usize;
                (ex.alive + nomem.min(ex.orphans.resets) == PARK_END_CHILDREN)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "{} of {PARK_END_CHILDREN} served, {} failed for memory, others: {}",
                            ex.alive, nomem, ex.orphans
                        )
                    })
            }
            None => {
                let f = fates(&clients, deadline)?;
                (f.resets == PARK_END_CHILDREN)
                    .then_some(())
                    .ok_or_else(|| format!("clients: {f}"))
            }
        };
        if let Err(why) = fate {
            return Ok(Some(why));
        }
        let mut ends = Vec::new();
        for e in End::ALL {
            ends.push(format!("{}={}", e.name(), grew(e.counter())?));
        }
        let want: Vec<String> = End::ALL
            .iter()
            .map(|e| format!("{}={}", e.name(), u8::from(e.name() == end.name())))
            .collect();
        // No park outlives the op; the joiner closes without parking.
        set_sysctl(PARK_GRACE, "0")?;
        drop((joiner, map, clients));
        Ok((ends != want).then(|| format!("ends {}", ends.join(" "))))
    })
    .join()
    .map_err(|_| anyhow!("park_end thread panicked"))??;
    let how = if in_sockmap { "_in_sockmap" } else { "" };
    match r {
        None => stats.bump(&format!("op/park_end/{}{how}", end.name())),
        Some(why) => stats.error(
            &format!("park_end_failed/{}{how}", end.name()),
            &anyhow!("{why}"),
        ),
    }
    Ok(())
}

/// Netlink's sock_diag and the SOCK_DESTROY request (linux/sock_diag.h).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DESTROY: u16 = 21;
const TCP_LISTEN: u32 = 10;
/// "No cookie": the request names the socket by its addresses only.
const INET_DIAG_NOCOOKIE: u32 = !0;

/// Sends one SOCK_DESTROY for the TCP listener on `pool`'s address and
/// port and returns the kernel's answer (0 or a negative errno). With no
/// cookie the kernel destroys the listener its lookup finds: a live one
/// of the group if there is one, else a parked one (which only answers
/// SYNs because no live one does). What `ss -K` does, without ss.
fn sock_destroy_request(pool: &Pool) -> Result<i32> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
    }
    // SAFETY: a descriptor we just made and own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // struct nlmsghdr (16 bytes) + struct inet_diag_req_v2 (56 bytes).
    let mut msg = Vec::with_capacity(72);
    msg.extend_from_slice(&72u32.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    let family = match pool.family {
        Family::V4 => libc::AF_INET,
        Family::V6 => libc::AF_INET6,
    };
    msg.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // inet_diag_sockid: sport, dport (big endian), src[4], dst[4], if,
    // cookie[2]. A listener's remote end is all zero.
    msg.extend_from_slice(&pool.port.to_be_bytes());
    msg.extend_from_slice(&0u16.to_be_bytes());
    let mut src = [0u8; 16];
    match pool.addr().ip() {
        std::net::IpAddr::V4(a) => src[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => src.copy_from_slice(&a.octets()),
    }
    msg.extend_from_slice(&src);
    msg.extend_from_slice(&[0u8; 16]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(msg.len(), 72);
    // SAFETY: sockaddr_nl is plain data; zero is the kernel's address.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `kernel` outlive the call, lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n != msg.len() as isize {
        return Err(std::io::Error::last_os_error()).context("send SOCK_DESTROY");
    }
    // The answer: nlmsghdr of type NLMSG_ERROR, then the errno (0: done).
    let mut buf = [0u8; 256];
    // SAFETY: `buf` outlives the call and is as long as said.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        return Err(std::io::Error::last_os_error()).context("receive the SOCK_DESTROY answer");
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(anyhow!("SOCK_DESTROY answered with message type {kind}"));
    }
    Ok(i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]))
}

/// Destroys a listener of `pool`, parked or live (see
/// [`sock_destroy_request`]). Its children migrate to a live listener or
/// are reset: clients see a reset at worst, which the stress accepts.
fn sock_destroy(pool: &Pool, stats: &Stats) -> Result<()> {
    let fam = pool.family.prefix();
    match -sock_destroy_request(pool)? {
        0 => stats.bump(&format!("op/{fam}/sock_destroy")),
        libc::ENOENT => stats.bump(&format!("op/{fam}/sock_destroy_none")),
        // A kernel without CONFIG_INET_DIAG_DESTROY (or inet_diag).
        libc::EOPNOTSUPP | libc::ENOSYS => stats.bump("op/sock_destroy_unsupported"),
        // The lookup found an MPTCP listener's subflow, which MPTCP does
        // not let SOCK_DESTROY close (tcp_abort_override()).
        libc::EINVAL => stats.bump(&format!("op/{fam}/sock_destroy_mptcp_refused")),
        e => {
            return Err(std::io::Error::from_raw_os_error(e)).context("SOCK_DESTROY of a listener")
        }
    }
    Ok(())
}

/// Slots of the chaos thread's sockmap.
const SOCKMAP_SLOTS: u32 = 16;

/// A BPF_MAP_TYPE_SOCKMAP that live listeners are put into, at random
/// slots, and taken out of now and then. A listener stays in it when its
/// process closes it: the close goes through sockmap's close, and a park
/// then ends through the listener's own close, wherever the map has put
/// it. None until first used, or where the kernel has no sockmap.
#[derive(Default)]
struct SockMap(Option<MapHandle>, bool);

impl SockMap {
    fn step(&mut self, pools: &[Arc<Pool>], rng: &mut fastrand::Rng, stats: &Stats) -> Result<()> {
        if self.1 {
            stats.bump("op/sockmap_unavailable");
            return Ok(());
        }
        if self.0.is_none() {
            let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            match MapHandle::create(
                MapType::Sockmap,
                Some("stress_sockmap"),
                4,
                4,
                SOCKMAP_SLOTS,
                &opts,
            ) {
                Ok(m) => self.0 = Some(m),
                Err(e) => {
                    // A kernel without CONFIG_NET_SOCK_MSG: said once.
                    self.1 = true;
                    stats.error("op/sockmap_unavailable", &anyhow!(e));
                    return Ok(());
                }
            }
        }
        let map = self.0.as_ref().expect("made above");
        let key = rng.u32(..SOCKMAP_SLOTS).to_ne_bytes();
        if rng.u32(..4) == 0 {
            // ENOENT for an empty slot is fine.
            match map.delete(&key) {
                Ok(()) => stats.bump("op/sockmap_delete"),
                Err(_) => stats.bump("op/sockmap_delete_empty"),
            }
            return Ok(());
        }
        let pool = &pools[rng.usize(..pools.len())];
        let ls = pool.listening_tcp();
        let Some(l) = ls.get(rng.usize(..ls.len().max(1))) else {
            stats.bump("op/sockmap_no_listener");
            return Ok(());
        };
        let fd = l.as_raw_fd() as u32;
        match map.update(&key, &fd.to_ne_bytes(), MapFlags::ANY) {
            Ok(()) => stats.bump(&format!("op/{}/sockmap_add", pool.family.prefix())),
            // A listener shut down or destroyed meanwhile: refused, as
            // the kernel should.
            Err(e) => stats.error(
                &format!("op/{}/sockmap_add_refused", pool.family.prefix()),
                &anyhow!(e),
            ),
        }
        Ok(())
    }
}

/// Attaches a migrate program to a group with none, or replaces or
/// detaches the one it has. What the program answers for a migrating
/// socket is chosen at random: the kernel's pick, SK_DROP, or slot 0 of
/// its socket array (a listener of the group, or nobody).
fn program(
    pool: &Pool,
    steer: &mut Option<Steer>,
    rng: &mut fastrand::Rng,
    stats: &Stats,
) -> Result<()> {
    let ls = pool.listening_tcp();
    let Some(l) = ls.get(rng.usize(..ls.len().max(1))) else {
        stats.bump("op/bpf_no_listener");
        return Ok(());
    };
    if steer.is_some() && rng.bool() {
        steer
            .as_ref()
            .expect("checked")
            .detach(l)
            .context("detach")?;
        *steer = None;
        stats.bump("op/bpf_detach");
        return Ok(());
    }
    let s = Steer::load()?;
    match rng.u32(..3) {
        0 => s.on_migrate(Migrate::To(u32::MAX))?,
        1 => s.on_migrate(Migrate::Drop)?,
        _ => {
            s.set_slot(0, l)?;
            s.on_migrate(Migrate::To(0))?;
        }
    }
    s.attach(l).context("attach")?;
    stats.bump(if steer.is_some() {
        "op/bpf_replace"
    } else {
        "op/bpf_attach"
    });
    *steer = Some(s);
    Ok(())
}

/// Drops every final ACK (and later ACK) to the groups' port for a while:
/// handshakes stay half open on the server and SYN+ACK timers fire, on
/// requests whose listener may close meanwhile.
fn hold_acks(pools: &[Arc<Pool>], stats: &Stats) -> Result<()> {
    let hold = HoldAck::attach(pools[0].port)?;
    thread::sleep(HOLD);
    hold.release()?;
    stats.add("op/acks_held", hold.dropped()?);
    stats.bump("op/hold_acks");
    Ok(())
}

/// A network namespace with two listeners, queued children, handshakes and
/// data in flight, and a migration when one listener closes, is dropped
/// with all of that in it. On a kernel that parks, the last listener is
/// parked with its children when the namespace's last process leaves:
/// the namespace goes once the grace ends and the park expires.
fn netns_teardown(stats: &Stats) -> Result<()> {
    let r = thread::spawn(|| -> Result<()> {
        enter_fresh_netns()?;
        set_sysctl(MIGRATE_REQ, "1")?;
        if can_park() {
            set_sysctl(PARK_GRACE, "1000")?;
        }
        set_sysctl("net.ipv4.tcp_fastopen", TFO_NO_COOKIES)?;
        let pool = Pool::new(Family::V4, 0, 2, false)?;
        let mut clients = Vec::new();
        for k in 0..6 {
            let s = tcp_socket(Family::V4)?;
            match s.connect(&pool.addr().into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e).context("connect"),
            }
            if k % 2 == 0
                && poll_fd(
                    s.as_raw_fd(),
                    libc::POLLOUT,
                    Deadline::after(scaled(Duration::from_millis(200))),
                )?
            {
                let _ = (&s).write(b"data before accept\n");
            }
            if k % 3 == 0 {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
            clients.push(s);
        }
        pool.close_slot(0);
        // The last listener closes (parks) while its children are alive.
        drop(pool);
        drop(clients);
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns teardown thread panicked"))?;
    r?;
    stats.bump("op/netns_teardown");
    Ok(())
}
