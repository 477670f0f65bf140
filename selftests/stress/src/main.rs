// SPDX-License-Identifier: GPL-2.0
//! A concurrent stress of SO_REUSEPORT listener migration, for the debug
//! kernel flavour (KASAN, lockdep, kmemleak, fault injection), loopback
//! only, bounded in time and in connections.
//!
//! On all CPUs at once, in a network namespace of its own: listeners of an
//! IPv4 and an IPv6 group join and leave (close, shutdown, listen again,
//! SO_INCOMING_CPU set and cleared); clients connect without pause (plain,
//! data before accept, Fast Open; syncookies forced at times); a migrate
//! program is attached, replaced and detached and tcp_migrate_req flips;
//! the parking grace flips, so that a group's last listener to close parks
//! and the next to listen adopts; final ACKs are held so that SYN+ACK
//! timers fire; namespaces with connections in them, parked ones too, are
//! torn down; listeners, parked or live, are destroyed by SOCK_DESTROY
//! (sock_diag, as `ss -K`) and put into a sockmap; one listener in four
//! is an MPTCP one on the same port; in namespaces of their own, parks
//! (some in a sockmap) are ended each of the five ways and must end that
//! way, with their clients served or reset; failslab and fail_page_alloc fail
//! allocations made under the migration paths.
//!
//! It asserts that every client ended served, reset or refused within its
//! deadline; that the per-reason failure counters add up to
//! TCPMigrateReqFailure; that once nothing is in use every park ended
//! once (parks = the sum of the five ends); that once the namespace is
//! gone the socket and request-socket slab objects and the orphan count
//! are back to their values before the run; and that kmemleak reports nothing new. Splats
//! are the VM runner's to find. The last line says PASS or FAIL.

mod accounting;
mod chaos;
mod listeners;
mod stats;
mod traffic;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use migrate_tests::faults::{available, mount_debugfs, Injection, Injector, Kallsyms, Plan};
use migrate_tests::harness::{
    enter_fresh_netns, scaled, set_sysctl, tcp_inuse, time_scale, wait_until, Family, Reason,
    TcpExt, MIGRATE_FAIL, MIGRATE_OK, MIGRATE_REQ,
};

use crate::listeners::Pool;
use crate::stats::{Stats, Stop};

#[derive(Parser)]
#[command(about = "Concurrent stress of SO_REUSEPORT listener migration (run as root, in a VM)")]
struct Cli {
    /// How long the traffic runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of every thread's random choices; a run prints the one it used.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many client connections in all.
    #[arg(long, default_value_t = 200_000)]
    max_connections: u64,
    /// Listeners per group.
    #[arg(long, default_value_t = 4)]
    listeners: usize,
    /// The tcp_migrate_req values to flip among (the base kernel has 0,1).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    modes: Vec<u8>,
    /// Fail this percentage of the allocations made under the migration
    /// paths (failslab; fail_page_alloc at a fifth of it). 0: none.
    #[arg(long, default_value_t = 5)]
    fault_percent: u32,
    /// Leave out a part of the chaos, to tell which one a failure needs:
    /// `mptcp` (MPTCP listeners in the groups), `destroy` (SOCK_DESTROY of
    /// listeners), `sockmap` (listeners in a sockmap).
    #[arg(long, value_delimiter = ',')]
    without: Vec<chaos::Part>,
}

/// Functions of net/ipv4/inet_connection_sock.c that migrate, or make what
/// is migrated: an allocation with one of them on its stack may fail. They
/// are next to each other in the kernel's text, so one range holds them.
/// Those a kernel lacks are left out: the `_migrate` variants TCP calls on
/// the patched kernel, static functions the compiler inlined.
const FAULT_SITES: &[&str] = &[
    "inet_csk_listen_stop",
    "reqsk_timer_handler",
    "inet_csk_complete_hashdance",
    "inet_csk_complete_hashdance_migrate",
    "inet_csk_reqsk_queue_add",
    "inet_csk_reqsk_queue_add_migrate",
    "inet_reqsk_clone",
    "inet_csk_reqsk_migrate_late",
    "inet_csk_clone_lock",
];

/// What failslab may fail under them: requests, children and skbs, not
/// the metadata kmemleak allocates alongside (which would switch it off).
const FAULT_CACHES: &[&str] = &[
    "request_sock_TCP",
    "request_sock_TCPv6",
    "TCP",
    "TCPv6",
    "skbuff_head_cache",
];

/// The stop-then-start counters of the patched kernel: the parks, then
/// the five ways a park ends. Once nothing is parked, each park has ended
/// once: the first equals the sum of the others.
const PARK_COUNTERS: &[&str] = &[
    "TCPMigrateReqParked",
    "TCPMigrateReqAdopted",
    "TCPMigrateReqParkExpired",
    "TCPMigrateReqParkEvicted",
    "TCPMigrateReqParkDestroyed",
    "TCPMigrateReqParkCancelled",
];

struct World {
    counters: BTreeMap<String, u64>,
    reasons_ok: Option<bool>,
    /// At idle: parks, and the sum of their ends (where the kernel parks).
    parks_ended: Option<(u64, u64)>,
    injected: BTreeMap<String, u64>,
    tcp_left: BTreeMap<String, u64>,
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Joins worker threads, counting each that failed or panicked as
/// `thread/WHAT_failed` or `thread/WHAT_panicked`.
fn join_all(handles: Vec<thread::JoinHandle<Result<()>>>, what: &str, stats: &Stats) {
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stats.error(&format!("thread/{what}_failed"), &e),
            Err(_) => stats.bump(&format!("thread/{what}_panicked")),
        }
    }
}

/// The run itself, in a network namespace of its own (this thread's).
fn world(cli: &Cli, seed: u64, stats: &Arc<Stats>) -> Result<World> {
    enter_fresh_netns()?;
    set_sysctl(MIGRATE_REQ, "1")?;
    set_sysctl("net.ipv4.tcp_fastopen", chaos::TFO_NO_COOKIES)?;
    // Requests whose final ACK is held give up after 1 s + 2 s.
    set_sysctl("net.ipv4.tcp_synack_retries", "1")?;
    set_sysctl("net.ipv4.tcp_fin_timeout", "1")?;

    let mptcp = !cli.without.contains(&chaos::Part::Mptcp);
    let v4 = Pool::new(Family::V4, 0, cli.listeners, mptcp)?;
    let port = v4.port;
    let mut pools = vec![Arc::new(v4)];
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        // The same port, so that the held-ACK program covers both.
        pools.push(Arc::new(Pool::new(Family::V6, port, cli.listeners, mptcp)?));
    }
    let pools = Arc::new(pools);

    let mut injections = Vec::new();
    if cli.fault_percent > 0 && !available(Injector::Slab) {
        // Not the debug flavour: the stress runs without faults.
        stats.bump("faults/unavailable");
    } else if cli.fault_percent > 0 {
        let syms = Kallsyms::read()?;
        let within = syms.span(FAULT_SITES)?;
        // The RST that tells a client its connection is gone is sent from
        // under these functions too (a child forgotten by
        // inet_csk_listen_stop()): failing its skb leaves a client that
        // can only time out, a loss the kernel could not have avoided and
        // the stress would count as a hang.
        let except = syms.range("tcp_send_active_reset").unwrap_or((0, 0));
        for (which, pct) in [
            (Injector::Slab, cli.fault_percent),
            (Injector::PageAlloc, cli.fault_percent.div_ceil(5)),
        ] {
            let plan = Plan {
                probability: pct,
                times: 1_000_000,
                task_only: false,
                within,
                except,
                caches: FAULT_CACHES,
            };
            match Injection::start(which, &plan)? {
                Some(i) => injections.push((which, i)),
                None => stats.bump(&format!("faults/{}_unavailable", which.name())),
            }
        }
    }

    let stop = Arc::new(Stop::default());
    let done = Arc::new(Stop::default());
    let n = cpus();
    let mut clients = Vec::new();
    for k in 0..2 * n {
        let (pools, stop, stats) = (pools.clone(), stop.clone(), stats.clone());
        let budget = cli.max_connections;
        clients.push(thread::spawn(move || {
            traffic::client(&pools, seed ^ (k as u64 + 1), &stop, &stats, budget)
        }));
    }
    let mut servers = Vec::new();
    for _ in 0..2 * n {
        let (pools, done, stats) = (pools.clone(), done.clone(), stats.clone());
        servers.push(thread::spawn(move || {
            traffic::acceptor(&pools, &done, &stats)
        }));
    }
    let mut others = Vec::new();
    for (k, pool) in pools.iter().enumerate() {
        let (pool, stop, stats) = (pool.clone(), stop.clone(), stats.clone());
        others.push(thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(seed ^ (0x100 + k as u64));
            while !stop.is_set() {
                pool.churn(&mut rng, n, &stats);
                thread::sleep(scaled(Duration::from_millis(rng.u64(5..40))));
            }
        }));
    }
    {
        let (pools, stop, stats) = (pools.clone(), stop.clone(), stats.clone());
        let modes = cli.modes.clone();
        let without = cli.without.clone();
        others.push(thread::spawn(move || {
            chaos::chaos(&pools, &modes, &without, seed ^ 0x200, &stop, &stats)
        }));
    }

    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(cli.seconds)
        && stats.sum("client/") < cli.max_connections
    {
        thread::sleep(Duration::from_millis(100));
    }
    stop.set();
    join_all(clients, "client", stats);
    done.set();
    join_all(servers, "acceptor", stats);
    for o in others {
        if o.join().is_err() {
            stats.bump("thread/chaos_panicked");
        }
    }
    let mut injected = BTreeMap::new();
    for (which, i) in injections {
        injected.insert(which.name().to_string(), i.injected()?);
    }

    let tcpext = TcpExt::read()?;
    let mut counters = BTreeMap::new();
    for name in [MIGRATE_OK, MIGRATE_FAIL] {
        counters.insert(name.to_string(), tcpext.get(name)?);
    }
    let mut reason_sum = Some(0);
    for r in Reason::ALL {
        match tcpext.get(r.counter()) {
            Ok(v) => {
                counters.insert(r.counter().to_string(), v);
                reason_sum = reason_sum.map(|s| s + v);
            }
            Err(_) => reason_sum = None,
        }
    }
    let reasons_ok = reason_sum.map(|s| s == tcpext.get(MIGRATE_FAIL).unwrap_or(u64::MAX));
    // Parks and how they ended, where the kernel parks.
    for name in PARK_COUNTERS {
        if let Ok(v) = tcpext.get(name) {
            counters.insert(name.to_string(), v);
        }
    }

    for p in pools.iter() {
        p.close_all();
    }
    drop(pools);
    // IPv4 and IPv6 sockets in use (sockstat and sockstat6): a park of
    // the IPv6 group is an IPv6 socket.
    let _ = wait_until(scaled(Duration::from_secs(30)), || Ok(tcp_inuse()? == 0))?;
    // Nothing in use is nothing parked: every park has ended, once. The
    // counters are read until they balance, and the last reading is
    // reported when they do not within the bound.
    let park_counts = |t: &TcpExt| -> Option<(u64, u64)> {
        let parked = t.get(PARK_COUNTERS[0]).ok()?;
        let ended = PARK_COUNTERS[1..]
            .iter()
            .map(|n| t.get(n).unwrap_or(u64::MAX / 8))
            .sum();
        Some((parked, ended))
    };
    let mut idle = TcpExt::read()?;
    let _ = wait_until(scaled(Duration::from_secs(10)), || {
        idle = TcpExt::read()?;
        Ok(park_counts(&idle).is_none_or(|(p, e)| p == e))
    })?;
    let parks_ended = park_counts(&idle);
    if parks_ended.is_some() {
        for name in PARK_COUNTERS {
            counters.insert(format!("{name} at idle"), idle.get(name)?);
        }
    }
    Ok(World {
        counters,
        reasons_ok,
        parks_ended,
        injected,
        tcp_left: accounting::sockstat("TCP")?,
    })
}

fn run(cli: &Cli) -> Result<Vec<String>> {
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "# stress: seed {seed}, {} s, {} CPUs, listeners {} per group, modes {:?}, faults {}%, without {:?}, time scale {}",
        cli.seconds,
        cpus(),
        cli.listeners,
        cli.modes,
        cli.fault_percent,
        cli.without,
        time_scale()
    );
    // The plain test kernel has no debugfs: no faults, no leak scan there.
    let _ = mount_debugfs();
    let leak_check = accounting::kmemleak_present();
    if leak_check {
        accounting::kmemleak_clear()?;
    }
    let slab_before = accounting::slab_objects()?;
    let orphans_before = accounting::sockstat("TCP")?.get("orphan").copied();

    let stats = Arc::new(Stats::default());
    let t0 = Instant::now();
    let w = {
        let stats = stats.clone();
        thread::scope(|s| {
            s.spawn(|| world(cli, seed, &stats))
                .join()
                .map_err(|_| anyhow!("the stress thread panicked"))
        })??
    };
    let ran = t0.elapsed();

    // The namespace is torn down asynchronously once its last socket goes.
    let mut slab_after = BTreeMap::new();
    let mut orphans_after = None;
    let settled = wait_until(scaled(Duration::from_secs(60)), || {
        slab_after = accounting::slab_objects()?;
        orphans_after = accounting::sockstat("TCP")?.get("orphan").copied();
        Ok(slab_after
            .iter()
            .all(|(c, n)| slab_before.get(c).is_some_and(|b| n <= b))
            && orphans_after <= orphans_before)
    })?;
    let leaks = if leak_check {
        // kmemleak reports objects older than 5 s only.
        thread::sleep(Duration::from_secs(6));
        accounting::kmemleak_scan()?
    } else {
        Vec::new()
    };

    let snap = stats.snapshot();
    for (k, v) in &snap {
        println!("# {k}: {v}");
    }
    for (k, v) in &w.injected {
        println!("# faults/{k}_injected: {v}");
    }
    for (k, v) in &w.counters {
        println!("# TcpExt {k}: {v}");
    }
    println!("# TCP left in the namespace: {:?}", w.tcp_left);
    println!("# slab objects before {slab_before:?} after {slab_after:?}");
    println!("# TCP orphans before {orphans_before:?} after {orphans_after:?}");
    for (k, es) in stats.first_errors() {
        for e in es {
            println!("# first {k}: {e}");
        }
    }
    for l in &leaks {
        println!("# kmemleak: {}", l.replace('\n', "\n#   "));
    }

    let mut bad = Vec::new();
    for o in traffic::Outcome::FAILURES {
        let n = stats.get(&format!("client/{}", o.name()));
        if n > 0 {
            bad.push(format!("{n} clients {}", o.name()));
        }
    }
    let park_ends_failed = stats.sum("park_end_failed/");
    if park_ends_failed > 0 {
        bad.push(format!("{park_ends_failed} parks did not end as made to"));
    }
    if stats.sum("thread/") > 0 {
        bad.push("a worker thread failed".into());
    }
    if w.reasons_ok == Some(false) {
        bad.push("per-reason failure counters do not add up to TCPMigrateReqFailure".into());
    }
    if let Some((parked, ended)) = w.parks_ended {
        if parked != ended {
            bad.push(format!(
                "{parked} parks but {ended} ends once idle (every park ends once)"
            ));
        }
    }
    if w.tcp_left.get("inuse") != Some(&0) {
        bad.push(format!(
            "TCP sockets left in the namespace: {:?}",
            w.tcp_left
        ));
    }
    if !settled {
        bad.push("slab objects or orphans not back to their values before the run".into());
    }
    if !leaks.is_empty() {
        bad.push(format!("kmemleak: {} unreferenced objects", leaks.len()));
    }
    if stats.sum("client/") == 0 {
        bad.push("no client ran".into());
    }
    let summary = format!(
        "seed {seed}, {:.0} s, {} connections ({} served, {} reset, {} refused), {} listener ops, {} chaos ops, migrations {} ok {} failed, faults injected {}, leaks {}",
        ran.as_secs_f64(),
        stats.sum("client/"),
        stats.get("client/served"),
        stats.get("client/reset"),
        stats.get("client/refused"),
        stats.sum("op/ipv"),
        stats.sum("op/") - stats.sum("op/ipv") - stats.get("op/acks_held"),
        w.counters.get(MIGRATE_OK).copied().unwrap_or(0),
        w.counters.get(MIGRATE_FAIL).copied().unwrap_or(0),
        w.injected.values().sum::<u64>(),
        leaks.len(),
    );
    if bad.is_empty() {
        println!("stress: PASS: {summary}");
        Ok(bad)
    } else {
        println!("stress: FAIL: {}; {summary}", bad.join("; "));
        Ok(bad)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, |_, msg| {
        eprint!("libbpf: {msg}")
    })));
    if cli.modes.is_empty() || cli.listeners == 0 {
        eprintln!("stress: --modes and --listeners need at least one");
        return ExitCode::from(2);
    }
    match run(&cli).context("stress") {
        Ok(bad) if bad.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            println!("stress: FAIL: {e:#}");
            ExitCode::FAILURE
        }
    }
}
