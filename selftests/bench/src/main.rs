// SPDX-License-Identifier: GPL-2.0
//! migrate-cost: what migrating a closing listener's connections costs.
//!
//! For each K and each kind, in a fresh network namespace with
//! `tcp_migrate_req` set as asked, listener A of a reuseport group gets K
//! connections while it is alone, then listener B joins the group and A is
//! closed:
//!
//! - `children`: the K connections completed their handshake and sit in
//!   A's accept queue; the time of A's `close()` is measured (with
//!   migration the kernel moves the K children to B inside that call, with
//!   `tcp_migrate_req=0` it resets them).
//! - `handshakes`: A has `TCP_DEFER_ACCEPT`, so the K requests stay in its
//!   SYN queue after the clients' bare ACKs; A is closed, then every
//!   client sends one byte, whose arrival at the request of the closed A
//!   migrates it to B (or, with 0, drops it and the client gets a reset).
//!   The time from the first send until B has accepted all migrated
//!   children is measured.
//! - `saturated`: as `children`, but instead of B the group holds
//!   `--full-listeners` listeners whose accept queues are full (backlog 0,
//!   one connection queued, never accepted). Every child then goes through
//!   the load-aware search of `tcp_migrate_req=2` and finds no room: what
//!   that search costs per child is the point.
//!
//! Every measurement is one JSON object of a JSON array on stdout (or in
//! `--json`). The numbers are only compared between kernels of the same
//! run (scripts/bench); the absolute values under emulation mean little.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use socket2::{SockAddr, Socket};
use storm::{netns, worker, Family, SysctlMode};

const PORT: u16 = 5600;
/// Longest wait for B to accept the migrated handshakes.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// K completed connections queued on the closing listener.
    Children,
    /// K requests in the closing listener's SYN queue.
    Handshakes,
    /// K completed connections, and every other listener's queue full.
    Saturated,
}

#[derive(Parser)]
#[command(
    name = "migrate-cost",
    version,
    about = "Time close() of a reuseport listener holding K connections (tcp_migrate_req)"
)]
struct Cli {
    /// net.ipv4.tcp_migrate_req to set in each namespace.
    #[arg(long, value_enum)]
    sysctl: SysctlMode,
    /// Address family (loopback only).
    #[arg(long, value_enum, default_value = "4")]
    family: Family,
    /// Numbers of connections to queue (comma-separated), each 1..=8192.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096",
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    k: Vec<u32>,
    /// Which measurements (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "children,handshakes,saturated"
    )]
    kinds: Vec<Kind>,
    /// `saturated`: the group's other listeners, each with a full queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    full_listeners: u32,
    /// Measurements per kind and K; the sample reported is the median one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    /// Write the JSON array here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One measurement.
#[derive(Serialize)]
struct Sample {
    kind: Kind,
    k: u32,
    family: u8,
    tcp_migrate_req: Option<u32>,
    /// Time of close(A) in ns.
    close_ns: u128,
    /// `handshakes`: first send until B accepted the last migrated child.
    drain_ns: Option<u128>,
    /// The measured time divided by K: close_ns (children) or drain_ns
    /// (handshakes).
    per_conn_ns: f64,
    /// per_conn_ns of every repetition (`--repeat`); this sample is the
    /// median one.
    per_conn_ns_all: Vec<f64>,
    /// Connections B accepted after A closed.
    accepted_on_b: u32,
    migrate_req_success: Option<u64>,
    migrate_req_failure: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("migrate-cost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let most = cli.k.iter().copied().max().unwrap_or(0);
    raise_nofile(u64::from(most) * 3 + 64)?;
    let mut samples = Vec::new();
    for &kind in &cli.kinds {
        for &k in &cli.k {
            let mut reps = Vec::new();
            for _ in 0..cli.repeat {
                reps.push(measure(cli, kind, k).with_context(|| {
                    format!(
                        "{kind:?} with K={k}, tcp_migrate_req={}",
                        cli.sysctl.as_str()
                    )
                })?);
            }
            let s = median_sample(reps);
            eprintln!(
                "migrate-cost: {kind:?} K={k} sysctl={}: close {} µs, {:.0} ns per connection, {} on B",
                cli.sysctl.as_str(),
                s.close_ns / 1000,
                s.per_conn_ns,
                s.accepted_on_b
            );
            samples.push(s);
        }
    }
    let mut text = serde_json::to_string_pretty(&samples)?;
    text.push('\n');
    match &cli.json {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to stdout"),
    }
}

fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft >= want {
        return Ok(());
    }
    let hard = hard.max(want);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        .with_context(|| format!("cannot raise RLIMIT_NOFILE to {want} (needs root)"))
}

fn write_sysctl(path: &str, value: u32) -> Result<()> {
    std::fs::write(path, value.to_string())
        .with_context(|| format!("cannot write {value} to {path}"))
}

/// A fresh namespace for every measurement: nothing left over from the
/// last one (the old namespace goes away with its last socket).
fn fresh_namespace(cli: &Cli, k: u32) -> Result<Option<u32>> {
    netns::enter_private()?;
    let room = (k * 2).max(4096);
    write_sysctl("/proc/sys/net/core/somaxconn", room)?;
    write_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog", room)?;
    match netns::set_migrate_req(cli.sysctl) {
        Ok(v) => Ok(v),
        Err(netns::SysctlError::Missing) => {
            bail!("/proc/sys/net/ipv4/tcp_migrate_req does not exist in this kernel")
        }
        Err(netns::SysctlError::Other(e)) => Err(e),
    }
}

/// The repetition with the median per-connection time, carrying all of them.
fn median_sample(mut reps: Vec<Sample>) -> Sample {
    reps.sort_by(|a, b| a.per_conn_ns.total_cmp(&b.per_conn_ns));
    let all: Vec<f64> = reps.iter().map(|r| r.per_conn_ns).collect();
    let mut s = reps.swap_remove(reps.len() / 2);
    s.per_conn_ns_all = all;
    s
}

fn measure(cli: &Cli, kind: Kind, k: u32) -> Result<Sample> {
    let migrate_req = fresh_namespace(cli, k)?;
    let before = netns::tcp_ext()?;
    // Backlog with room to spare: neither queue may overflow (with
    // syncookies on, a full SYN queue would answer with cookies and keep
    // no request).
    let backlog = i32::try_from(k * 2).context("K too large")?;
    let addr = SockAddr::from(cli.family.addr(PORT));
    // saturated: the full listeners join first, each given one connection
    // by a reuseport program that selects it; A joins last and gets the K.
    let mut stalled = Vec::new();
    if kind == Kind::Saturated {
        for j in 0..cli.full_listeners {
            let l = worker::listener(cli.family, PORT, 0)?;
            select_slot(&l, j)?;
            let c = Socket::new(addr.domain(), socket2::Type::STREAM, None)?;
            c.connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connect to full listener {j}"))?;
            stalled.push((l, c));
        }
    }
    let a = worker::listener(cli.family, PORT, backlog)?;
    if kind == Kind::Saturated {
        select_slot(&a, cli.full_listeners)?;
    }
    if kind == Kind::Handshakes {
        set_defer_accept(&a, 60)?;
    }
    let mut clients = Vec::with_capacity(k as usize);
    for i in 0..k {
        let s = Socket::new(addr.domain(), socket2::Type::STREAM, None)?;
        s.connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {i} of {k}"))?;
        clients.push(s);
    }
    // B joins only now: every connection belongs to A. In `saturated`, B
    // is a stranger on another port, so that nothing has room.
    let b_port = if kind == Kind::Saturated {
        PORT + 1
    } else {
        PORT
    };
    let b = worker::listener(cli.family, b_port, backlog)?;
    b.set_nonblocking(true)?;
    let t0 = Instant::now();
    drop(a);
    let close_ns = t0.elapsed().as_nanos();

    let mut accepted = Vec::with_capacity(k as usize);
    let drain_ns = match kind {
        Kind::Children | Kind::Saturated => {
            accept_ready(&b, &mut accepted)?;
            None
        }
        Kind::Handshakes => {
            let t1 = Instant::now();
            for c in &clients {
                // A reset client (tcp_migrate_req=0) may refuse the byte
                // later; the send itself only queues it.
                let _ = TcpStream::from(c.try_clone()?).write(b"x");
            }
            let deadline = t1 + DRAIN_LIMIT;
            let expect = if migrate_req == Some(0) {
                0
            } else {
                k as usize
            };
            loop {
                accept_ready(&b, &mut accepted)?;
                if accepted.len() >= expect || Instant::now() >= deadline {
                    break;
                }
                if migrate_req == Some(0) && t1.elapsed() > Duration::from_millis(200) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Some(t1.elapsed().as_nanos())
        }
    };
    let after = netns::tcp_ext()?;
    let delta = |name: &str| Some(after.get(name)?.saturating_sub(*before.get(name)?));
    let accepted_on_b = u32::try_from(accepted.len()).context("count")?;
    if migrate_req != Some(0) {
        ensure!(
            accepted_on_b > 0 || kind != Kind::Handshakes,
            "no handshake reached B within {DRAIN_LIMIT:?}"
        );
    }
    let measured = drain_ns.unwrap_or(close_ns);
    Ok(Sample {
        kind,
        k,
        family: cli.family.as_num(),
        tcp_migrate_req: migrate_req,
        close_ns,
        drain_ns,
        per_conn_ns: measured as f64 / f64::from(k),
        per_conn_ns_all: Vec::new(),
        accepted_on_b,
        migrate_req_success: delta("TCPMigrateReqSuccess"),
        migrate_req_failure: delta("TCPMigrateReqFailure"),
    })
}

/// Accept everything B has queued right now.
fn accept_ready(b: &Socket, into: &mut Vec<Socket>) -> Result<()> {
    loop {
        match b.accept() {
            Ok((s, _)) => into.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) => return Err(e).context("accept on B"),
        }
    }
}

/// Makes the group of `s` select its listener in slot `slot` for every new
/// connection: a classic BPF reuseport program that returns that index.
/// It is no migrate program, so migration still follows the sysctl.
fn select_slot(s: &Socket, slot: u32) -> Result<()> {
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: slot,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: a valid socket fd, and a sock_fprog of the right size whose
    // filter points to `code`, alive for the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_ATTACH_REUSEPORT_CBPF");
    }
    Ok(())
}

fn set_defer_accept(s: &Socket, secs: libc::c_int) -> Result<()> {
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("TCP_DEFER_ACCEPT");
    }
    Ok(())
}
