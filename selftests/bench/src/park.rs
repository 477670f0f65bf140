// SPDX-License-Identifier: GPL-2.0
//! park-cost: what parking (net.ipv4.tcp_migrate_req_grace_ms) costs and
//! how long its clients wait, for scripts/bench.
//!
//! - `listen`: bind()+listen()+close() of a fresh SO_REUSEPORT listener in
//!   one namespace, each call timed alone, while 0, 1,000, 10,000 ...
//!   listeners (`--parks`, cumulative) have been closed in `--namespaces`
//!   other namespaces. With `--grace-ms` > 0 (a kernel that has the
//!   sysctl) they are parked there; with 0, or on a kernel without the
//!   sysctl, the same listeners are simply closed; with `--keep-open`
//!   they stay open (a control: parked listeners stay hashed as live
//!   ones do). The namespaces stay alive (an fd each) in every case.
//! - `close`: close() of a listener that parks against one that does not,
//!   in two namespaces of the same process (the static key on in both).
//! - `adoption`: K children queued on a listener that is closed and parked;
//!   a new listener of the group listens; the time from its listen()
//!   returning to its first and to its K-th child being accept()able, and,
//!   where tracefs has the events, the kernel's own timestamps of the
//!   adoption's start (`tcp:tcp_reuseport_park event=adopted`, on the
//!   kworker) and of the parked listener's end (`tcp:tcp_destroy_sock`,
//!   after its last child moved). Without parking (base): what is lost.
//! - `gap`: a server's only listener closes, clients keep arriving for G
//!   ms (evenly spread), then a new listener starts: each client's time to
//!   connect and to get its response.
//!
//! Under scripts/vm-run --icount a guest nanosecond is one instruction,
//! counted over both vCPUs: a time measured there is the instructions the
//! whole guest executed meanwhile. The JSON goes to stdout or `--json`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};
use socket2::Socket;
use storm::{netns, worker, Family, SysctlMode};

const GRACE: &str = "/proc/sys/net/ipv4/tcp_migrate_req_grace_ms";
/// The port measured in `listen`; the parked listeners use PARK_PORT0...
const PORT: u16 = 5700;
const PARK_PORT0: u16 = 10000;
/// `close` parks one listener per port from here.
const CLOSE_PORT0: u16 = 20000;
/// At most this many parks per namespace (the kernel's bound is 256).
const PARKS_PER_NS: u32 = 250;
const REQUEST: &[u8] = b"GET park\n";
const RESPONSE: &[u8] = b"OK\n";

#[derive(Parser)]
#[command(
    name = "park-cost",
    version,
    about = "Cost and latency of parking a closed SO_REUSEPORT listener (tcp_migrate_req_grace_ms)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Write the JSON here instead of stdout.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cost of bind()/listen()/close() against the number of parks elsewhere.
    Listen(ListenArgs),
    /// Cost of a close() that parks against one that does not.
    Close(CloseArgs),
    /// From a new listener's listen() to its adopted children.
    Adoption(AdoptionArgs),
    /// Latency of clients that arrive while no listener is open.
    Gap(GapArgs),
}

#[derive(Args)]
struct ListenArgs {
    /// Numbers of listeners closed (parked) in the other namespaces,
    /// ascending; each step adds to the last one.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    parks: Vec<u32>,
    /// Namespaces the parks are spread over (each gets parks/namespaces).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    namespaces: u32,
    /// tcp_migrate_req_grace_ms of those namespaces (0: nothing parks).
    #[arg(long, default_value_t = 60000)]
    grace_ms: u32,
    /// Timed bind+listen+close per step.
    #[arg(long, default_value_t = 1000)]
    iterations: u32,
    /// Leave the listeners open instead (a control: what the same
    /// listeners cost while they listen; implies no parking).
    #[arg(long)]
    keep_open: bool,
}

#[derive(Args)]
struct CloseArgs {
    /// Listeners closed in each namespace (at most 250: one netns parks 256).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=250))]
    count: u32,
    #[arg(long, default_value_t = 60000)]
    grace_ms: u32,
}

#[derive(Args)]
struct AdoptionArgs {
    /// Children queued on the parked listener (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,256,4096",
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    k: Vec<u32>,
    /// Measurements per K (the median one is reported, with all).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    #[arg(long, default_value_t = 60000)]
    grace_ms: u32,
    /// Sleep between two looks at the new listener's accept queue.
    #[arg(long, default_value_t = 20)]
    poll_us: u64,
}

#[derive(Args)]
struct GapArgs {
    /// Gaps between the close and the new listen(), in ms (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,50,200,500")]
    gaps: Vec<u64>,
    /// Clients started during each gap, evenly spread.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    clients: u32,
    /// Restarts per gap (the clients of all are pooled).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    /// listen() backlog of both listeners: a parked listener whose accept
    /// queue is full drops SYNs like any other.
    #[arg(long, default_value_t = 128)]
    backlog: i32,
    #[arg(long, default_value_t = 60000)]
    grace_ms: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = match &cli.cmd {
        Cmd::Listen(a) => listen_cost(a),
        Cmd::Close(a) => close_cost(a),
        Cmd::Adoption(a) => adoption(a),
        Cmd::Gap(a) => gap(a),
    };
    let res = out.and_then(|v| {
        let mut text = serde_json::to_string_pretty(&v)?;
        text.push('\n');
        match &cli.json {
            Some(p) => fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
            None => std::io::stdout()
                .write_all(text.as_bytes())
                .context("stdout"),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("park-cost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- helpers

/// CLOCK_MONOTONIC in ns: the same clock as the trace clock `mono`.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn has_grace() -> bool {
    Path::new(GRACE).exists()
}

fn write_sysctl(path: &str, value: impl ToString) -> Result<()> {
    fs::write(path, value.to_string())
        .with_context(|| format!("cannot write {} to {path}", value.to_string()))
}

fn read_u64(path: &str) -> Result<u64> {
    let s = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("{path}: bad value {s:?}"))
}

/// A new namespace with lo up, tcp_migrate_req=1 and, if the kernel has
/// it and `grace` > 0, the grace; returns whether the grace was set.
fn enter_ns(grace: u32, room: u32) -> Result<bool> {
    netns::enter_private()?;
    if room > 0 {
        write_sysctl("/proc/sys/net/core/somaxconn", room)?;
        write_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog", room)?;
    }
    match netns::set_migrate_req(SysctlMode::On) {
        Ok(_) => {}
        Err(netns::SysctlError::Missing) => bail!("this kernel has no tcp_migrate_req"),
        Err(netns::SysctlError::Other(e)) => return Err(e),
    }
    if grace > 0 && has_grace() {
        write_sysctl(GRACE, grace)?;
        return Ok(true);
    }
    Ok(false)
}

fn ns_fd() -> Result<File> {
    File::open("/proc/thread-self/ns/net").context("open /proc/thread-self/ns/net")
}

fn setns(fd: &File) -> Result<()> {
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns(net)")
}

/// The machine's orphaned TCP sockets (/proc/net/sockstat is global for
/// this line): a parked listener counts as one.
fn orphans() -> Result<u64> {
    let s = fs::read_to_string("/proc/net/sockstat").context("/proc/net/sockstat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP: line in /proc/net/sockstat")?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w
        .iter()
        .position(|x| *x == "orphan")
        .context("no orphan in /proc/net/sockstat")?;
    w.get(i + 1)
        .context("orphan without value")?
        .parse()
        .context("orphan value")
}

fn ext(name: &str) -> Result<u64> {
    Ok(netns::tcp_ext()?.get(name).copied().unwrap_or(0))
}

/// The sum of the counters of a park's ends in the current namespace.
fn park_ends() -> Result<u64> {
    let m = netns::tcp_ext()?;
    Ok([
        "TCPMigrateReqAdopted",
        "TCPMigrateReqParkExpired",
        "TCPMigrateReqParkEvicted",
        "TCPMigrateReqParkCancelled",
        "TCPMigrateReqParkDestroyed",
    ]
    .iter()
    .map(|n| m.get(*n).copied().unwrap_or(0))
    .sum())
}

/// Median, 10th and 90th percentile, min and max of ns values.
fn dist(v: &[u64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    json!({"median": q(0.5), "p10": q(0.1), "p90": q(0.9), "p99": q(0.99),
           "min": s[0], "max": s[s.len() - 1], "n": s.len()})
}

fn sockaddr_v4(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// socket() with SO_REUSEADDR and SO_REUSEPORT, as a raw fd (the timed
/// calls go straight to libc).
fn raw_reuseport_socket() -> Result<libc::c_int> {
    // SAFETY: plain syscalls on an fd we own; the option value is a c_int.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e).context("setsockopt");
            }
        }
        Ok(fd)
    }
}

/// bind(), listen() and close() of `fd`, each timed: (bind, listen, close) ns.
fn timed_bind_listen_close(fd: libc::c_int, port: u16) -> Result<(u64, u64, u64)> {
    let sa = sockaddr_v4(port);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: fd is ours, sa a valid sockaddr_in of length len.
    let (t0, rb, t1, rl, t2, rc, t3) = unsafe {
        let t0 = now_ns();
        let rb = libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len);
        let t1 = now_ns();
        let rl = libc::listen(fd, 128);
        let t2 = now_ns();
        let rc = libc::close(fd);
        let t3 = now_ns();
        (t0, rb, t1, rl, t2, rc, t3)
    };
    ensure!(
        rb == 0,
        "bind port {port}: {}",
        std::io::Error::last_os_error()
    );
    ensure!(
        rl == 0,
        "listen port {port}: {}",
        std::io::Error::last_os_error()
    );
    ensure!(rc == 0, "close: {}", std::io::Error::last_os_error());
    Ok((t1 - t0, t2 - t1, t3 - t2))
}

/// What two back-to-back clock reads cost (subtract from each call).
fn clock_overhead() -> u64 {
    let mut v: Vec<u64> = (0..200)
        .map(|_| {
            let a = now_ns();
            now_ns() - a
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Raises tcp_max_orphans (a knob of the initial namespace only) to at
/// least `want`; returns the old value to restore.
fn raise_max_orphans(want: u64) -> Result<Option<u64>> {
    let p = "/proc/sys/net/ipv4/tcp_max_orphans";
    let old = read_u64(p)?;
    if old >= want {
        return Ok(None);
    }
    write_sysctl(p, want)?;
    Ok(Some(old))
}

fn restore_max_orphans(old: Option<u64>) -> Result<()> {
    match old {
        Some(v) => write_sysctl("/proc/sys/net/ipv4/tcp_max_orphans", v),
        None => Ok(()),
    }
}

/// Waits (up to `limit`) for the machine's orphan count to fall to `to`.
fn wait_orphans(to: u64, limit: Duration) -> Result<u64> {
    let end = Instant::now() + limit;
    loop {
        let n = orphans()?;
        if n <= to || Instant::now() >= end {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----------------------------------------------------------------- listen

fn listen_cost(a: &ListenArgs) -> Result<Value> {
    ensure!(
        a.parks.windows(2).all(|w| w[0] <= w[1]),
        "--parks must be ascending"
    );
    let most = a.parks.last().copied().unwrap_or(0);
    ensure!(
        most.div_ceil(a.namespaces) <= PARKS_PER_NS,
        "{most} parks over {} namespaces is more than {PARKS_PER_NS} per namespace",
        a.namespaces
    );
    let parking = a.grace_ms > 0 && has_grace() && !a.keep_open;
    if a.keep_open {
        raise_nofile(u64::from(most) + 1024)?;
    }
    let init = ns_fd()?;
    let orphans0 = orphans()?;
    let old_max = if parking {
        raise_max_orphans(u64::from(most) + 4096)?
    } else {
        None
    };
    // The namespaces that hold the parks; the measuring one is made last.
    let mut nss = Vec::with_capacity(a.namespaces as usize);
    let mut res = (|| -> Result<Value> {
        for _ in 0..a.namespaces {
            enter_ns(a.grace_ms, 0)?;
            nss.push(ns_fd()?);
        }
        listen_cost_in(a, parking, orphans0, &nss)
    })();
    // Whatever happened: end the parks (a grace of 0 ends every park of
    // its namespace at once), let the namespaces go, restore the bound.
    let cleanup = (|| -> Result<u64> {
        if parking {
            for fd in &nss {
                setns(fd)?;
                write_sysctl(GRACE, 0)?;
            }
        }
        setns(&init)?;
        drop(nss);
        let left = wait_orphans(orphans0, Duration::from_secs(30))?;
        restore_max_orphans(old_max)?;
        Ok(left)
    })();
    if let Ok(v) = &mut res {
        v["orphans_after_cleanup"] = json!(cleanup?);
    }
    res
}

fn listen_cost_in(a: &ListenArgs, parking: bool, orphans0: u64, nss: &[File]) -> Result<Value> {
    enter_ns(0, 0)?;
    let me = ns_fd()?;
    let overhead = clock_overhead();
    let mut per_ns_have = 0u32;
    let mut steps = Vec::new();
    let mut open = Vec::new();
    for &n in &a.parks {
        let per = n / a.namespaces;
        // Add listeners in every namespace up to `per`, close them, and
        // check that each closed one parked (or, not parking, that none did).
        let t_setup = Instant::now();
        for fd in nss {
            setns(fd)?;
            let parked0 = ext("TCPMigrateReqParked")?;
            for j in per_ns_have..per {
                let s = worker::listener(Family::V4, PARK_PORT0 + j as u16, 16)?;
                if a.keep_open {
                    open.push(s);
                }
            }
            let parked = ext("TCPMigrateReqParked")? - parked0;
            let want = if parking {
                u64::from(per - per_ns_have)
            } else {
                0
            };
            ensure!(
                parked == want,
                "a namespace parked {parked} listeners of {}, expected {want}",
                per - per_ns_have
            );
        }
        per_ns_have = per;
        setns(&me)?;
        let setup_ms = t_setup.elapsed().as_millis();
        // What the setup queued (RCU callbacks, the kworkers of the
        // namespaces' creation) runs before the clock does.
        std::thread::sleep(Duration::from_millis(500));
        let total = u64::from(per) * u64::from(a.namespaces);
        let orphans_before = orphans()?;
        if parking {
            ensure!(
                orphans_before >= orphans0 + total,
                "{orphans_before} orphans, expected at least {} with {total} parks",
                orphans0 + total
            );
        }
        // Warm up (page faults, the bind bucket's slab), then measure.
        for _ in 0..50 {
            timed_bind_listen_close(raw_reuseport_socket()?, PORT)?;
        }
        let (mut b, mut l, mut c, mut all) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.iterations {
            let fd = raw_reuseport_socket()?;
            let (tb, tl, tc) = timed_bind_listen_close(fd, PORT)?;
            let o = overhead;
            b.push(tb.saturating_sub(o));
            l.push(tl.saturating_sub(o));
            c.push(tc.saturating_sub(o));
            all.push((tb + tl + tc).saturating_sub(3 * o));
        }
        let orphans_after = orphans()?;
        // No park may have ended while we measured.
        let mut ended = 0;
        for fd in nss {
            setns(fd)?;
            ended += park_ends()?;
        }
        setns(&me)?;
        ensure!(
            !parking || ended == 0,
            "{ended} parks ended during the measurement"
        );
        eprintln!(
            "park-cost listen: {total} elsewhere ({}), listen() median {} ns, bind {} ns, close {} ns",
            if parking {
                "parked"
            } else if a.keep_open {
                "open"
            } else {
                "closed"
            },
            dist(&l)["median"],
            dist(&b)["median"],
            dist(&c)["median"]
        );
        steps.push(json!({
            "parks": total, "parked": parking, "open": open.len(), "setup_ms": setup_ms,
            "orphans_before": orphans_before, "orphans_after": orphans_after,
            "bind_ns": dist(&b), "listen_ns": dist(&l), "close_ns": dist(&c), "total_ns": dist(&all),
        }));
    }
    Ok(json!({
        "grace_ms": a.grace_ms, "kernel_has_grace": has_grace(), "parking": parking,
        "keep_open": a.keep_open, "namespaces": a.namespaces, "iterations": a.iterations,
        "clock_overhead_ns": overhead, "steps": steps,
    }))
}

// ------------------------------------------------------------------ close

fn close_cost(a: &CloseArgs) -> Result<Value> {
    let init = ns_fd()?;
    let orphans0 = orphans()?;
    let overhead = clock_overhead();
    // The namespace that parks first, so that the key is on for both.
    let parking = enter_ns(a.grace_ms, 0)?;
    let parks_ns = ns_fd()?;
    enter_ns(0, 0)?;
    let plain_ns = ns_fd()?;
    let run = |fd: &File| -> Result<(Vec<u64>, u64)> {
        setns(fd)?;
        let parked0 = ext("TCPMigrateReqParked")?;
        let mut v = Vec::new();
        for i in 0..a.count {
            let s = raw_reuseport_socket()?;
            let sa = sockaddr_v4(CLOSE_PORT0 + i as u16);
            // SAFETY: s is ours; sa a valid sockaddr_in.
            let (rb, rl) = unsafe {
                (
                    libc::bind(
                        s,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ),
                    libc::listen(s, 128),
                )
            };
            ensure!(
                rb == 0 && rl == 0,
                "bind/listen: {}",
                std::io::Error::last_os_error()
            );
            let t0 = now_ns();
            // SAFETY: s is ours.
            let rc = unsafe { libc::close(s) };
            let t1 = now_ns();
            ensure!(rc == 0, "close: {}", std::io::Error::last_os_error());
            v.push((t1 - t0).saturating_sub(overhead));
        }
        Ok((v, ext("TCPMigrateReqParked")? - parked0))
    };
    let res = (|| -> Result<Value> {
        let (plain, parked_plain) = run(&plain_ns)?;
        let (parks, parked) = run(&parks_ns)?;
        ensure!(
            parked_plain == 0,
            "{parked_plain} parks where the grace is 0"
        );
        ensure!(
            parked == if parking { u64::from(a.count) } else { 0 },
            "{parked} parks of {} closes",
            a.count
        );
        eprintln!(
            "park-cost close: not parking {} ns, parking {} ns (median; {parked} parked)",
            dist(&plain)["median"],
            dist(&parks)["median"]
        );
        Ok(json!({
            "grace_ms": a.grace_ms, "kernel_has_grace": has_grace(), "parking": parking,
            "count": a.count, "clock_overhead_ns": overhead, "parked": parked,
            "close_not_parking_ns": dist(&plain), "close_parking_ns": dist(&parks),
        }))
    })();
    if parking {
        setns(&parks_ns)?;
        write_sysctl(GRACE, 0)?;
    }
    setns(&init)?;
    drop((parks_ns, plain_ns));
    let mut v = res?;
    v["orphans_after_cleanup"] = json!(wait_orphans(orphans0, Duration::from_secs(30))?);
    Ok(v)
}

// --------------------------------------------------------------- adoption

const TRACEFS: &str = "/sys/kernel/tracing";

/// The two events that bound an adoption in the kernel's own clock.
struct Trace;

impl Trace {
    fn start(port: u16) -> Option<Trace> {
        if !Path::new(TRACEFS).join("trace").exists() {
            let _ = fs::create_dir_all(TRACEFS);
            let src = std::ffi::CString::new("tracefs").ok()?;
            let dst = std::ffi::CString::new(TRACEFS).ok()?;
            // SAFETY: valid NUL-terminated strings, no data.
            unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
        }
        let t = Path::new(TRACEFS);
        let evs = ["tcp/tcp_reuseport_park", "tcp/tcp_destroy_sock"];
        if !evs.iter().all(|e| t.join("events").join(e).exists()) {
            return None;
        }
        let w = |f: &str, v: &str| fs::write(t.join(f), v).ok();
        w("tracing_on", "0")?;
        w("trace_clock", "mono")?;
        w("trace", "")?;
        for e in evs {
            w(&format!("events/{e}/filter"), &format!("sport == {port}"))?;
            w(&format!("events/{e}/enable"), "1")?;
        }
        w("tracing_on", "1")?;
        Some(Trace)
    }

    /// (adopted, destroyed) timestamps in ns of CLOCK_MONOTONIC, and the
    /// task that ran the adoption.
    fn finish(self) -> (Option<u64>, Option<u64>, Option<String>) {
        let t = Path::new(TRACEFS);
        let _ = fs::write(t.join("tracing_on"), "0");
        let text = fs::read_to_string(t.join("trace")).unwrap_or_default();
        for e in ["tcp/tcp_reuseport_park", "tcp/tcp_destroy_sock"] {
            let _ = fs::write(t.join("events").join(e).join("enable"), "0");
            let _ = fs::write(t.join("events").join(e).join("filter"), "0");
        }
        let _ = fs::write(t.join("trace_clock"), "local");
        parse_trace(&text)
    }
}

/// "secs.usecs" of a trace line before ": EVENT:", as ns.
fn trace_ts(line: &str, event: &str) -> Option<u64> {
    let head = &line[..line.find(&format!(" {event}:"))?];
    let ts = head
        .trim_end()
        .trim_end_matches(':')
        .split_whitespace()
        .last()?;
    let (s, us) = ts.split_once('.')?;
    let us = format!("{us:0<9}");
    Some(s.parse::<u64>().ok()? * 1_000_000_000 + us[..9].parse::<u64>().ok()?)
}

fn parse_trace(text: &str) -> (Option<u64>, Option<u64>, Option<String>) {
    let (mut adopted, mut destroyed, mut task) = (None, None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.contains("tcp_reuseport_park:") && line.contains("event=adopted") {
            adopted = trace_ts(line, "tcp_reuseport_park");
            task = line.split_whitespace().next().map(str::to_string);
        } else if line.contains("tcp_destroy_sock:") && destroyed.is_none() {
            destroyed = trace_ts(line, "tcp_destroy_sock");
        }
    }
    (adopted, destroyed, task)
}

fn tcp_queue_len(s: &Socket) -> Result<u32> {
    // SAFETY: tcp_info is plain old data; getsockopt fills at most len.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid fd and buffer of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    ensure!(rc == 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // For a listener, tcpi_unacked is its accept queue's length.
    Ok(ti.tcpi_unacked)
}

fn poll_in(s: &Socket, timeout_ms: i32) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    ensure!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    Ok(rc > 0)
}

fn adoption(a: &AdoptionArgs) -> Result<Value> {
    let most = a.k.iter().copied().max().unwrap_or(0);
    raise_nofile(u64::from(most) * 3 + 64)?;
    let mut out = Vec::new();
    for &k in &a.k {
        let mut reps = Vec::new();
        for r in 0..a.repeat {
            let port = 5800 + r as u16;
            let s = adopt_once(a, k, port).with_context(|| format!("K={k}, repetition {r}"))?;
            reps.push(s);
        }
        // The median repetition by the time to the last child.
        let key = |v: &Value| v["listen_to_last_ns"].as_u64().unwrap_or(u64::MAX);
        reps.sort_by_key(key);
        let all: Vec<Value> = reps
            .iter()
            .map(|v| v["listen_to_last_ns"].clone())
            .collect();
        let all_trace: Vec<Value> = reps
            .iter()
            .map(|v| v["trace_listen_to_closed_ns"].clone())
            .collect();
        let mut m = reps.swap_remove(reps.len() / 2);
        eprintln!(
            "park-cost adoption: K={k}: listen to last child {} ns (trace: adopted {} ns, closed {} ns), acceptable {} of {k}, reset {}",
            m["listen_to_last_ns"], m["trace_listen_to_adopted_ns"], m["trace_listen_to_closed_ns"],
            m["acceptable"], m["reset"]
        );
        m["listen_to_last_ns_all"] = Value::Array(all);
        m["trace_listen_to_closed_ns_all"] = Value::Array(all_trace);
        out.push(m);
    }
    Ok(json!({"grace_ms": a.grace_ms, "kernel_has_grace": has_grace(), "samples": out}))
}

fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft >= want {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want))
        .with_context(|| format!("cannot raise RLIMIT_NOFILE to {want}"))
}

fn adopt_once(a: &AdoptionArgs, k: u32, port: u16) -> Result<Value> {
    let init = ns_fd()?;
    let room = (k * 2).max(4096);
    let parking = enter_ns(a.grace_ms, room)?;
    let res = adopt_in_ns(a, k, port, parking, room);
    // On an error too, nothing left parks when it closes.
    if parking {
        let _ = write_sysctl(GRACE, 0);
    }
    setns(&init)?;
    res
}

fn adopt_in_ns(a: &AdoptionArgs, k: u32, port: u16, parking: bool, room: u32) -> Result<Value> {
    let backlog = room as i32;
    let l0 = worker::listener(Family::V4, port, backlog)?;
    let addr = Family::V4.addr(port);
    let mut clients = Vec::with_capacity(k as usize);
    for i in 0..k {
        let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {i} of {k}"))?;
        clients.push(c);
    }
    // Every handshake done: the children are in L0's queue.
    let end = Instant::now() + Duration::from_secs(10);
    while tcp_queue_len(&l0)? < k {
        ensure!(
            Instant::now() < end,
            "only {} of {k} queued",
            tcp_queue_len(&l0)?
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let parked0 = ext("TCPMigrateReqParked")?;
    let moved0 = ext("TCPMigrateReqSuccess")?;
    drop(l0);
    let parked = ext("TCPMigrateReqParked")? - parked0;
    ensure!(
        parked == u64::from(parking),
        "{parked} parks at the close (parking {parking})"
    );
    let trace = if parking { Trace::start(port) } else { None };

    // The new listener: the clock starts when its listen() returns.
    let l1 = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    l1.set_reuse_address(true)?;
    l1.set_reuse_port(true)?;
    l1.bind(&addr.into())?;
    l1.listen(backlog)?;
    let t0 = now_ns();
    let limit = Duration::from_secs(10) + Duration::from_micros(u64::from(k) * 200);
    let (first, last) = if parking {
        let first = poll_in(&l1, limit.as_millis() as i32)?.then(now_ns);
        let end = Instant::now() + limit;
        let mut last = None;
        loop {
            if tcp_queue_len(&l1)? >= k {
                last = Some(now_ns());
                break;
            }
            if Instant::now() >= end {
                break;
            }
            std::thread::sleep(Duration::from_micros(a.poll_us));
        }
        (first, last)
    } else {
        // Nothing to wait for: what the close did is done.
        std::thread::sleep(Duration::from_millis(200));
        (None, None)
    };
    // The parked listener's end comes a little after its last child moved:
    // give the kworker time to get there before the trace stops.
    if trace.is_some() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (adopted, closed, task) = trace.map(Trace::finish).unwrap_or((None, None, None));
    let acceptable = tcp_queue_len(&l1)?;
    let moved = ext("TCPMigrateReqSuccess")? - moved0;
    // What each client sees: reset (ECONNRESET on read) or still open.
    let mut reset = 0;
    for c in &mut clients {
        c.set_nonblocking(true)?;
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
            Ok(0) => reset += 1,
            _ => {}
        }
    }
    // The new listener is the last of its group: with the grace on, its
    // close would park it, and the K children with it, for a minute.
    if parking {
        write_sysctl(GRACE, 0)?;
    }
    drop(l1);
    drop(clients);
    let rel = |t: Option<u64>| t.map(|t| t.saturating_sub(t0));
    Ok(json!({
        "k": k, "parking": parking, "acceptable": acceptable, "migrated": moved,
        "reset": reset, "lost": k.saturating_sub(acceptable),
        "listen_to_first_ns": rel(first), "listen_to_last_ns": rel(last),
        "trace_listen_to_adopted_ns": rel(adopted), "trace_listen_to_closed_ns": rel(closed),
        "trace_adopted_to_closed_ns": adopted.zip(closed).map(|(a, c)| c.saturating_sub(a)),
        "adopting_task": task, "poll_us": a.poll_us,
    }))
}

// -------------------------------------------------------------------- gap

/// Accepts and answers one request per connection until stopped; returns
/// its listener (to be closed by the caller, timed) and how many it served.
fn serve(l: Socket, stop: Arc<AtomicBool>) -> JoinHandle<(Socket, u32)> {
    std::thread::spawn(move || {
        let _ = l.set_nonblocking(true);
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let mut s = TcpStream::from(s);
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 64];
                    let mut got = 0;
                    while got < REQUEST.len() {
                        match s.read(&mut buf[got..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                    }
                    if got == REQUEST.len() && s.write_all(RESPONSE).is_ok() {
                        served += 1;
                    }
                }
                Err(_) => {
                    let _ = poll_in(&l, 5);
                }
            }
        }
        (l, served)
    })
}

#[derive(Serialize)]
struct Client {
    /// Start after the close, in ns.
    offset_ns: u64,
    /// connect() alone.
    connect_ns: Option<u64>,
    /// connect() to the whole response.
    latency_ns: Option<u64>,
    outcome: &'static str,
}

fn one_client(addr: SocketAddr, at: Instant, t_close: u64) -> Client {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
    let t0 = now_ns();
    let fail = |outcome, connect_ns| Client {
        offset_ns: t0.saturating_sub(t_close),
        connect_ns,
        latency_ns: None,
        outcome,
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return fail("refused", None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return fail("timeout", None),
        Err(_) => return fail("other", None),
    };
    let t1 = now_ns();
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    if s.write_all(REQUEST).is_err() {
        return fail("reset", Some(t1 - t0));
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    loop {
        match s.read(&mut buf[got..]) {
            Ok(0) => return fail(if got == 0 { "reset" } else { "other" }, Some(t1 - t0)),
            Ok(n) => {
                got += n;
                if buf[..got].ends_with(b"\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return fail("reset", Some(t1 - t0))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return fail("timeout", Some(t1 - t0))
            }
            Err(_) => return fail("other", Some(t1 - t0)),
        }
    }
    Client {
        offset_ns: t0.saturating_sub(t_close),
        connect_ns: Some(t1 - t0),
        latency_ns: Some(now_ns() - t0),
        outcome: if &buf[..got] == RESPONSE {
            "served"
        } else {
            "other"
        },
    }
}

fn gap(a: &GapArgs) -> Result<Value> {
    let mut out = Vec::new();
    for &g in &a.gaps {
        let mut clients = Vec::new();
        let mut listen_after_close = Vec::new();
        let mut parking = false;
        for r in 0..a.repeat {
            let init = ns_fd()?;
            let res = (|| -> Result<(Vec<Client>, u64, bool)> {
                let parks = enter_ns(a.grace_ms, 4096)?;
                let port = 5900 + r as u16;
                let (c, d) = gap_once(a, g, port, parks)?;
                Ok((c, d, parks))
            })();
            if has_grace() {
                let _ = write_sysctl(GRACE, 0);
            }
            setns(&init)?;
            let (c, d, p) = res.with_context(|| format!("gap {g} ms, repetition {r}"))?;
            clients.extend(c);
            listen_after_close.push(d);
            parking = p;
        }
        let lat: Vec<u64> = clients.iter().filter_map(|c| c.latency_ns).collect();
        let con: Vec<u64> = clients.iter().filter_map(|c| c.connect_ns).collect();
        // The part of each wait that is not waiting for a listener: the
        // latency minus the time from the client's start to the listen().
        let mut excess = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let d = listen_after_close[i / a.clients as usize];
            if let Some(l) = c.latency_ns {
                excess.push(l.saturating_sub(d.saturating_sub(c.offset_ns)));
            }
        }
        let count = |o: &str| clients.iter().filter(|c| c.outcome == o).count();
        let v = json!({
            "gap_ms": g, "backlog": a.backlog, "parking": parking, "clients": clients.len(),
            "served": count("served"), "refused": count("refused"), "reset": count("reset"),
            "timeout": count("timeout"), "other": count("other"),
            "latency_ns": dist(&lat), "connect_ns": dist(&con), "excess_ns": dist(&excess),
            "listen_after_close_ns": listen_after_close, "per_client": clients,
        });
        eprintln!(
            "park-cost gap: {g} ms, backlog {}: served {} of {}, refused {}, latency p50 {} p99 {} ns, excess p99 {} ns",
            a.backlog, v["served"], v["clients"], v["refused"], v["latency_ns"]["median"],
            v["latency_ns"]["p99"], v["excess_ns"]["p99"]
        );
        out.push(v);
    }
    Ok(
        json!({"grace_ms": a.grace_ms, "kernel_has_grace": has_grace(), "clients_per_gap": a.clients,
              "repeat": a.repeat, "samples": out}),
    )
}

/// One stop, gap and start; returns the clients and the time from the
/// close to the new listen() in ns.
fn gap_once(a: &GapArgs, g: u64, port: u16, parking: bool) -> Result<(Vec<Client>, u64)> {
    let addr = Family::V4.addr(port);
    // The clients' threads exist before the close (a TCG guest takes
    // hundreds of ms to start 32 of them) and wait for its time.
    type Go = Arc<(Mutex<Option<(Instant, u64)>>, Condvar)>;
    let go: Go = Arc::new((Mutex::new(None), Condvar::new()));
    let gap = Duration::from_millis(g);
    let mut hs = Vec::new();
    for i in 0..a.clients {
        let go = go.clone();
        let n = a.clients;
        hs.push(std::thread::spawn(move || {
            let (m, cv) = &*go;
            let mut at = m.lock().unwrap_or_else(|e| e.into_inner());
            while at.is_none() {
                at = cv.wait(at).unwrap_or_else(|e| e.into_inner());
            }
            let (i_close, t_close) = at.expect("set");
            drop(at);
            one_client(addr, i_close + gap * i / n, t_close)
        }));
    }
    let stop0 = Arc::new(AtomicBool::new(false));
    let s0 = serve(
        worker::listener(Family::V4, port, a.backlog)?,
        stop0.clone(),
    );
    // One request first: the server works, and its queue is empty.
    let warm = one_client(addr, Instant::now(), now_ns());
    ensure!(
        warm.outcome == "served",
        "the first server did not answer: {}",
        warm.outcome
    );
    stop0.store(true, Ordering::Relaxed);
    let (l0, _) = s0
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    let parked0 = ext("TCPMigrateReqParked")?;
    drop(l0);
    let t_close = now_ns();
    let i_close = Instant::now();
    {
        let (m, cv) = &*go;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = Some((i_close, t_close));
        cv.notify_all();
    }
    let now = Instant::now();
    if i_close + gap > now {
        std::thread::sleep(i_close + gap - now);
    }
    let stop1 = Arc::new(AtomicBool::new(false));
    let l1 = worker::listener(Family::V4, port, a.backlog)?;
    let d = now_ns() - t_close;
    let s1 = serve(l1, stop1.clone());
    let clients: Vec<Client> = hs
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        ext("TCPMigrateReqParked")? - parked0 == u64::from(parking),
        "the close did not park as expected (parking {parking})"
    );
    // Nothing parks at the close of the new listener.
    if parking {
        write_sysctl(GRACE, 0)?;
    }
    stop1.store(true, Ordering::Relaxed);
    let _ = s1.join();
    Ok((clients, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines() {
        let t = "# tracer: nop\n\
          kworker/u4:1-45      [001] .....   123.000456: tcp_reuseport_park: family=AF_INET sport=5800 saddr=127.0.0.1 daddr=0.0.0.0 saddrv6=::1 daddrv6=:: sock_cookie=1 event=adopted queued=16 requests=0 sk=0000\n\
          kworker/u4:1-45      [001] ..s1.   123.001: tcp_destroy_sock: family=AF_INET sport=5800 dport=0\n";
        let (a, d, task) = parse_trace(t);
        assert_eq!(a, Some(123_000_456_000));
        assert_eq!(d, Some(123_001_000_000));
        assert_eq!(task.as_deref(), Some("kworker/u4:1-45"));
    }

    #[test]
    fn distribution() {
        let v: Vec<u64> = (1..=100).collect();
        let d = dist(&v);
        assert_eq!(d["min"], 1);
        assert_eq!(d["max"], 100);
        assert_eq!(d["n"], 100);
    }
}
