//! Shared pieces of the migration tests: a private network namespace per
//! test, per-namespace sysctls and TcpExt counters, a reuseport listener
//! group, loopback clients, and bounded waits.
//!
//! Every wait in here takes a deadline; nothing blocks in the kernel without
//! one (all sockets are non-blocking and readiness goes through poll(2)).

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::fs;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Prefix of a line a test prints to report what it measured; the runner
/// appends it to the test's `ok` line.
pub const NOTE: &str = "NOTE ";

/// Reports a measured fact alongside the verdict.
pub fn note(msg: &str) {
    println!("{NOTE}{msg}");
}

/// Upper bound for one awaited event (a queue filling, a reply arriving).
/// Generous on purpose: under TCG the guest is 10-50x slower than a host,
/// and a passing test never waits this long.
const EVENT_TIMEOUT_BASE: Duration = Duration::from_secs(5);

/// How much slower than the plain test kernel the running one is: the
/// debug flavour (KASAN, lockdep) is about 100 times slower, and the
/// runner says so with `RM_TIME_SCALE`. Every bound of the suite is
/// scaled by it; what a test waits for is an event, never a time.
pub fn time_scale() -> u32 {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("RM_TIME_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| (1..=1000).contains(&n))
            .unwrap_or(1)
    })
}

/// A bound of the suite, scaled for the kernel under test.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// [`EVENT_TIMEOUT_BASE`] on the kernel under test.
pub fn event_timeout() -> Duration {
    scaled(EVENT_TIMEOUT_BASE)
}

/// How often a condition that has no file descriptor to poll is re-checked.
const POLL_STEP: Duration = Duration::from_millis(2);

const LISTEN_BACKLOG: i32 = 64;

// ---------------------------------------------------------------------------
// Namespace, sysctls, counters

/// Moves the calling thread into a new network namespace and brings its
/// loopback device up, so counters and sysctls are private. The test then
/// runs on this same thread (counters are read via /proc/thread-self).
pub fn enter_fresh_netns() -> Result<()> {
    // SAFETY: plain syscall with a constant flag.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET) (needs root)");
    }
    set_link_up("lo")
}

fn set_link_up(name: &str) -> Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None).context("socket for ioctl")?;
    // SAFETY: ifreq is plain old data; zero is a valid bit pattern.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCGIFFLAGS lo");
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error()).context("SIOCSIFFLAGS lo up");
        }
    }
    Ok(())
}

/// Pins the calling thread to CPU `cpu` (sched_setaffinity on thread 0).
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and CPU_SETSIZE bounds `cpu`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` outlives the call.
    if unsafe { libc::sched_setaffinity(0, mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
    }
    Ok(())
}

/// Which kernel the suite runs on (the VM runner says so). Tests of what
/// the series adds beyond upstream assert the upstream behaviour on `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    Base,
    Patched,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Base => "base",
            Kernel::Patched => "patched",
        }
    }
}

pub const MIGRATE_REQ: &str = "net.ipv4.tcp_migrate_req";

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// One write(2) of `value` to a sysctl of the current network namespace.
pub fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    fs::write(sysctl_path(name), value)
}

pub fn read_sysctl(name: &str) -> Result<String> {
    let path = sysctl_path(name);
    let s = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    Ok(s.trim().to_string())
}

/// Writes a sysctl of the current network namespace and reads it back.
pub fn set_sysctl(name: &str, value: &str) -> Result<()> {
    write_sysctl(name, value).with_context(|| format!("write {value} to {}", sysctl_path(name)))?;
    let back = read_sysctl(name)?;
    if back != value {
        bail!("{name}: wrote {value}, reads back {back}");
    }
    Ok(())
}

pub fn set_migrate_req(on: bool) -> Result<()> {
    set_sysctl(MIGRATE_REQ, if on { "1" } else { "0" })
}

/// TcpExt counters of the current network namespace.
#[derive(Clone, Debug)]
pub struct TcpExt(HashMap<String, u64>);

pub const MIGRATE_OK: &str = "TCPMigrateReqSuccess";
pub const MIGRATE_FAIL: &str = "TCPMigrateReqFailure";
pub const SYNACK_RETRANS: &str = "TCPSynRetrans";
pub const TFO_PASSIVE: &str = "TCPFastOpenPassive";
pub const LISTEN_OVERFLOWS: &str = "ListenOverflows";
pub const LISTEN_DROPS: &str = "ListenDrops";

impl TcpExt {
    pub fn read() -> Result<Self> {
        // thread-self: the namespace of this thread, whatever the process does.
        let text = fs::read_to_string("/proc/thread-self/net/netstat")
            .context("read /proc/thread-self/net/netstat")?;
        let mut lines = text.lines();
        let mut map = HashMap::new();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
                (names.split_once(": "), values.split_once(": "))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                map.insert(n.to_string(), v.parse().unwrap_or(u64::MAX));
            }
        }
        if map.is_empty() {
            bail!("no TcpExt section in /proc/thread-self/net/netstat");
        }
        Ok(TcpExt(map))
    }

    pub fn get(&self, name: &str) -> Result<u64> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("kernel has no TcpExt counter {name}"))
    }

    /// How much `name` grew since `earlier`.
    pub fn since(&self, earlier: &TcpExt, name: &str) -> Result<u64> {
        Ok(self.get(name)?.wrapping_sub(earlier.get(name)?))
    }
}

/// Why a migration failed: the per-reason TcpExt counters the series adds
/// next to `TCPMigrateReqFailure` (they partition it), and the `result=`
/// name the `tcp:tcp_reuseport_migrate` tracepoint gives each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NoListener,
    Disabled,
    Bpf,
    NoMem,
    QueueFull,
    TargetClosed,
    Expired,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoListener,
        Reason::Disabled,
        Reason::Bpf,
        Reason::NoMem,
        Reason::QueueFull,
        Reason::TargetClosed,
        Reason::Expired,
        Reason::Other,
    ];

    pub fn counter(self) -> &'static str {
        match self {
            Reason::NoListener => "TCPMigrateReqFailNoListener",
            Reason::Disabled => "TCPMigrateReqFailDisabled",
            Reason::Bpf => "TCPMigrateReqFailBpf",
            Reason::NoMem => "TCPMigrateReqFailNoMem",
            Reason::QueueFull => "TCPMigrateReqFailQueueFull",
            Reason::TargetClosed => "TCPMigrateReqFailTargetClosed",
            Reason::Expired => "TCPMigrateReqFailExpired",
            Reason::Other => "TCPMigrateReqFailOther",
        }
    }

    pub fn traced(self) -> &'static str {
        match self {
            Reason::NoListener => "no_listener",
            Reason::Disabled => "disabled",
            Reason::Bpf => "bpf",
            Reason::NoMem => "nomem",
            Reason::QueueFull => "queue_full",
            Reason::TargetClosed => "target_closed",
            Reason::Expired => "expired",
            Reason::Other => "other",
        }
    }
}

/// In [`Checks::reasons`]: this reason accounts for every failure.
pub const ALL_FAILURES: u64 = u64::MAX;

/// The tracepoint on the patched kernel; the base kernel has none.
pub fn start_trace(kernel: Kernel, port: u16) -> Result<Option<Trace>> {
    match kernel {
        Kernel::Patched => Trace::start(port).map(Some),
        Kernel::Base => Ok(None),
    }
}

/// Mounts the kernel pseudo filesystem `fstype` (tracefs, debugfs) at `at`;
/// one already mounted there (EBUSY) is fine.
pub fn mount_pseudo_fs(fstype: &str, at: &str) -> Result<()> {
    let src = std::ffi::CString::new(fstype).context("filesystem name")?;
    let dst = std::ffi::CString::new(at).context("mount point")?;
    // SAFETY: valid NUL-terminated strings, no mount data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).with_context(|| format!("mount {fstype} at {at}"));
        }
    }
    Ok(())
}

const TRACEFS: &str = "/sys/kernel/tracing";
const TRACE_EVENT: &str = "events/tcp/tcp_reuseport_migrate";

/// The `tcp:tcp_reuseport_migrate` tracepoint, enabled through tracefs and
/// filtered on one listening port. The trace buffer is global, which is
/// fine: the suite runs one test at a time.
pub struct Trace {
    port: u16,
}

impl Trace {
    /// Clears the trace buffer and starts recording migrations of sockets
    /// leaving listeners on `port`.
    pub fn start(port: u16) -> Result<Trace> {
        let root = std::path::Path::new(TRACEFS);
        if !root.join("events").exists() {
            mount_pseudo_fs("tracefs", TRACEFS)?;
        }
        let ev = root.join(TRACE_EVENT);
        if !ev.exists() {
            bail!("kernel has no tracepoint tcp:tcp_reuseport_migrate ({TRACEFS}/{TRACE_EVENT})");
        }
        let t = Trace { port };
        t.write(&format!("{TRACE_EVENT}/enable"), "0")?;
        t.write(
            &format!("{TRACE_EVENT}/filter"),
            &format!("sport == {port}"),
        )?;
        t.write("trace", "")?;
        t.write(&format!("{TRACE_EVENT}/enable"), "1")?;
        Ok(t)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = format!("{TRACEFS}/{file}");
        fs::write(&path, value).with_context(|| format!("write {value:?} to {path}"))
    }

    /// Events recorded so far, counted by `kind/result`.
    pub fn counts(&self) -> Result<HashMap<String, u64>> {
        let path = format!("{TRACEFS}/trace");
        let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let mut out = HashMap::new();
        let port = format!("sport={}", self.port);
        for line in text
            .lines()
            .filter(|l| l.contains("tcp_reuseport_migrate:"))
        {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .unwrap_or("?")
                    .to_string()
            };
            if !line.split_whitespace().any(|w| w == port) {
                continue;
            }
            let key = format!("{}/{}", field("kind="), field("result="));
            *out.entry(key).or_insert(0) += 1;
        }
        Ok(out)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.write(&format!("{TRACE_EVENT}/enable"), "0");
    }
}

// ---------------------------------------------------------------------------
// Checks: collect every mismatch with its numbers, fail once at the end.

/// The error a test returns when the kernel under test lacks what it needs
/// (reported as SKIP with the reason, not as a failure).
#[derive(Debug)]
pub struct Skip(pub String);

impl Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

#[derive(Default)]
pub struct Checks {
    bad: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn eq<T: PartialEq + Display>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.bad.push(format!("{what}: got {got}, want {want}"));
        }
    }

    pub fn ge<T: PartialOrd + Display>(&mut self, what: &str, got: T, min: T) {
        if got < min {
            self.bad.push(format!("{what}: got {got}, want >= {min}"));
        }
    }

    /// `TCPMigrateReqSuccess` and `TCPMigrateReqFailure` grew by exactly
    /// `ok` and `fail` from `start` to `now`; `when` ends both labels.
    pub fn migrations(
        &mut self,
        when: &str,
        start: &TcpExt,
        now: &TcpExt,
        ok: u64,
        fail: u64,
    ) -> Result<()> {
        let label = |counter: &str| format!("{counter} {when}").trim_end().to_string();
        self.eq(
            &label("TCPMigrateReqSuccess"),
            now.since(start, MIGRATE_OK)?,
            ok,
        );
        self.eq(
            &label("TCPMigrateReqFailure"),
            now.since(start, MIGRATE_FAIL)?,
            fail,
        );
        Ok(())
    }

    /// Why migrations failed since `start`; returns the counters it read.
    ///
    /// Patched kernel: each per-reason counter grew by what `fails` lists
    /// (0 if absent; [`ALL_FAILURES`] for "as much as TCPMigrateReqFailure")
    /// and together they grew as much as `TCPMigrateReqFailure`; `trace`
    /// (started together with `start`) holds one `kind` event per success
    /// and per failure, with the same reasons. The counters and the trace
    /// are read until they agree on the number of attempts, so an attempt
    /// landing between the two reads cannot make a mismatch.
    /// Base kernel: the per-reason counters do not exist.
    pub fn reasons(
        &mut self,
        kernel: Kernel,
        start: &TcpExt,
        trace: Option<&Trace>,
        kind: &str,
        fails: &[(Reason, u64)],
    ) -> Result<TcpExt> {
        if kernel == Kernel::Base {
            let now = TcpExt::read()?;
            for r in Reason::ALL {
                self.eq(
                    &format!("base kernel has {}", r.counter()),
                    now.get(r.counter()).is_ok(),
                    false,
                );
            }
            return Ok(now);
        }
        let attempts = |t: &TcpExt| -> Result<u64> {
            Ok(t.since(start, MIGRATE_OK)? + t.since(start, MIGRATE_FAIL)?)
        };
        let mut now = TcpExt::read()?;
        let mut events = HashMap::new();
        if let Some(trace) = trace {
            wait_until(event_timeout(), || {
                events = trace.counts()?;
                now = TcpExt::read()?;
                Ok(events.values().sum::<u64>() == attempts(&now)?)
            })?;
        }
        let failed = now.since(start, MIGRATE_FAIL)?;
        let want = |r: Reason| {
            fails
                .iter()
                .filter(|(x, _)| *x == r)
                .map(|(_, n)| if *n == ALL_FAILURES { failed } else { *n })
                .sum::<u64>()
        };
        let mut sum = 0;
        let mut want_events = Vec::new();
        let ok = now.since(start, MIGRATE_OK)?;
        if ok > 0 {
            want_events.push(format!("{kind}/ok={ok}"));
        }
        for r in Reason::ALL {
            let grew = now.since(start, r.counter())?;
            sum += grew;
            self.eq(r.counter(), grew, want(r));
            if grew > 0 {
                want_events.push(format!("{kind}/{}={grew}", r.traced()));
            }
        }
        self.eq("per-reason failure counters summed", sum, failed);
        if trace.is_some() {
            let mut got: Vec<String> = events.iter().map(|(k, n)| format!("{k}={n}")).collect();
            got.sort();
            want_events.sort();
            self.eq(
                "tcp:tcp_reuseport_migrate events (kind/result=count)",
                got.join(" "),
                want_events.join(" "),
            );
        }
        Ok(now)
    }

    /// Exactly `n` migrations since `start`, all failed for `why` (see
    /// [`Checks::reasons`]); returns the counters it read.
    pub fn all_failed(
        &mut self,
        kernel: Kernel,
        start: &TcpExt,
        trace: Option<&Trace>,
        kind: &str,
        why: Reason,
        n: u64,
    ) -> Result<TcpExt> {
        let now = self.reasons(kernel, start, trace, kind, &[(why, n)])?;
        self.migrations("", start, &now, 0, n)?;
        Ok(now)
    }

    /// Fails now if anything so far mismatched: later steps would only
    /// produce follow-up noise.
    pub fn gate(&mut self, stage: &str) -> Result<()> {
        if self.bad.is_empty() {
            return Ok(());
        }
        let msg = format!("{stage}: {}", self.bad.join("; "));
        self.bad.clear();
        Err(anyhow!(msg))
    }

    pub fn finish(mut self) -> Result<()> {
        self.gate("end")
    }
}

// ---------------------------------------------------------------------------
// Time

#[derive(Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Re-checks `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Deadline::after(timeout);
    loop {
        if cond()? {
            return Ok(true);
        }
        if deadline.expired() {
            return Ok(false);
        }
        thread::sleep(POLL_STEP.min(deadline.remaining()));
    }
}

/// poll(2) on one descriptor; true if any of `events` (or an error/hangup)
/// is reported before the deadline.
pub fn poll_fd(fd: RawFd, events: libc::c_short, deadline: Deadline) -> Result<bool> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = deadline.remaining().as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        return Ok(n > 0);
    }
}

// ---------------------------------------------------------------------------
// Addresses and TCP_INFO

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn prefix(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn loopback(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Family::V6 => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        }
    }

    fn domain(self) -> Domain {
        match self {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }

    pub fn tcp_socket(self) -> Result<Socket> {
        let s = Socket::new(self.domain(), Type::STREAM, Some(Protocol::TCP))
            .context("socket(SOCK_STREAM)")?;
        s.set_nonblocking(true)?;
        Ok(s)
    }
}

pub fn tcp_info(fd: RawFd) -> Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
    }
    Ok(info)
}

pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, val: i32) -> io::Result<()> {
    // SAFETY: pointer and length describe one c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn port_of(addr: &SockAddr) -> u16 {
    addr.as_socket().map(|a| a.port()).unwrap_or(0)
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_RECV: u8 = 3;
const TCP_LISTEN: u8 = 10;

pub fn tcp_state(s: &Socket) -> Result<u8> {
    Ok(tcp_info(s.as_raw_fd())?.tcpi_state)
}

// ---------------------------------------------------------------------------
// Listener group

/// How a listener is taken down.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Close,
    Shutdown,
}

/// N TCP sockets bound with SO_REUSEPORT to one loopback port. Index i is
/// "listener i" (L<i>) in failure messages. A socket joins the kernel's
/// reuseport group only when it listen()s, so tests control where new
/// connections can land by choosing when each one listens.
pub struct Group {
    pub family: Family,
    pub port: u16,
    socks: Vec<Option<Socket>>,
    backlogs: Vec<i32>,
}

/// One accepted connection: which listener handed it out and the client
/// port it comes from.
pub struct Accepted {
    pub listener: usize,
    pub sock: Socket,
    pub peer_port: u16,
}

impl Group {
    pub fn bind(family: Family, n: usize) -> Result<Group> {
        Self::bind_on(family, None, &vec![None; n])
    }

    /// As [`Group::bind`], on a given port (None: a free one), socket i
    /// bound to device `devices[i]` (SO_BINDTODEVICE) or to none.
    pub fn bind_on(family: Family, port: Option<u16>, devices: &[Option<&str>]) -> Result<Group> {
        // Every listener binds to the port by number, as servers do: a
        // socket bound to port 0 gives its port up when it closes, one
        // bound by number keeps it until it is freed, and only then can a
        // handshake still complete on it after close().
        let port = match port {
            Some(p) => p,
            None => {
                let probe = family.tcp_socket()?;
                probe
                    .bind(&family.loopback(0).into())
                    .context("bind a probe socket to find a free port")?;
                port_of(&probe.local_addr()?)
            }
        };
        let n = devices.len();
        let mut socks = Vec::with_capacity(n);
        for (i, dev) in devices.iter().enumerate() {
            let s = family.tcp_socket()?;
            s.set_reuse_port(true)?;
            if let Some(d) = dev {
                s.bind_device(Some(d.as_bytes()))
                    .with_context(|| format!("SO_BINDTODEVICE {d} on L{i}"))?;
            }
            s.bind(&family.loopback(port).into())
                .with_context(|| format!("bind L{i} to port {port}"))?;
            socks.push(Some(s));
        }
        Ok(Group {
            family,
            port,
            socks,
            backlogs: vec![LISTEN_BACKLOG; n],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.family.loopback(self.port)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// A group of no sockets (never made by [`Group::bind`] with n > 0).
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn sock(&self, i: usize) -> Result<&Socket> {
        self.socks
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("L{i} is closed"))
    }

    pub fn fd(&self, i: usize) -> Result<RawFd> {
        Ok(self.sock(i)?.as_raw_fd())
    }

    pub fn listen(&self, i: usize) -> Result<()> {
        let backlog = self.backlogs[i];
        self.sock(i)?
            .listen(backlog)
            .with_context(|| format!("listen L{i} (backlog {backlog})"))
    }

    /// The backlog L<i> will listen() with (before it does).
    pub fn set_backlog(&mut self, i: usize, backlog: i32) {
        self.backlogs[i] = backlog;
    }

    /// Enables TCP Fast Open on every socket of the group (before listen).
    pub fn enable_fastopen(&self, qlen: i32) -> Result<()> {
        for i in 0..self.len() {
            setsockopt_int(self.fd(i)?, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, qlen)
                .with_context(|| format!("TCP_FASTOPEN on L{i}"))?;
        }
        Ok(())
    }

    /// Hands L<i> over, to be closed elsewhere (another thread); the group
    /// counts it as closed.
    pub fn take(&mut self, i: usize) -> Result<Socket> {
        self.socks[i]
            .take()
            .ok_or_else(|| anyhow!("L{i} already closed"))
    }

    /// close() drops the descriptor; shutdown(SHUT_RDWR) keeps it open in
    /// TCP_CLOSE state so the test can also check it hands out nothing.
    pub fn stop(&mut self, i: usize, how: Stop) -> Result<()> {
        match how {
            Stop::Close => drop(self.take(i)?),
            Stop::Shutdown => self
                .sock(i)?
                .shutdown(std::net::Shutdown::Both)
                .with_context(|| format!("shutdown(SHUT_RDWR) L{i}"))?,
        }
        Ok(())
    }

    /// Children waiting in L<i>'s accept queue (TCP_INFO reports the accept
    /// backlog of a listener in tcpi_unacked); 0 once it stopped listening.
    pub fn queued(&self, i: usize) -> Result<u32> {
        let info = tcp_info(self.fd(i)?)?;
        Ok(if info.tcpi_state == TCP_LISTEN {
            info.tcpi_unacked
        } else {
            0
        })
    }

    /// Waits until L<i>'s accept queue holds `want` children; returns what
    /// it holds at the end.
    pub fn wait_queued(&self, i: usize, want: u32) -> Result<u32> {
        wait_until(event_timeout(), || Ok(self.queued(i)? >= want))?;
        self.queued(i)
    }

    /// Accepts whatever is queued on L<i> right now (non-blocking).
    /// A listener taken down by shutdown() answers EINVAL: nothing to hand out.
    pub fn accept_now(&self, i: usize, out: &mut Vec<Accepted>) -> Result<()> {
        let Some(l) = self.socks[i].as_ref() else {
            return Ok(());
        };
        loop {
            match l.accept() {
                Ok((sock, peer)) => {
                    sock.set_nonblocking(true)?;
                    out.push(Accepted {
                        listener: i,
                        sock,
                        peer_port: port_of(&peer),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("accept on L{i}")),
            }
        }
    }

    /// Accepts from every listener until `want` connections were handed out
    /// or the event timeout passes, then one more sweep so surplus
    /// connections are seen too.
    pub fn accept_all(&self, want: usize) -> Result<Vec<Accepted>> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.accept_from(&all, want)
    }

    /// As `accept_all`, but only from the listeners in `which` (a stalled
    /// listener is never served).
    pub fn accept_from(&self, which: &[usize], want: usize) -> Result<Vec<Accepted>> {
        let mut got = Vec::new();
        let deadline = Deadline::after(event_timeout());
        loop {
            for &i in which {
                self.accept_now(i, &mut got)?;
            }
            if got.len() >= want || deadline.expired() {
                break;
            }
            thread::sleep(POLL_STEP.min(deadline.remaining()));
        }
        for &i in which {
            self.accept_now(i, &mut got)?;
        }
        Ok(got)
    }
}

pub fn count_on(accepted: &[Accepted], listener: usize) -> usize {
    accepted.iter().filter(|a| a.listener == listener).count()
}

// ---------------------------------------------------------------------------
// Clients

/// A loopback client. `hello` is what it sends first; the server side
/// checks it arrives intact on the accepted socket.
pub struct Client {
    pub sock: Socket,
    pub port: u16,
    pub hello: Vec<u8>,
    sent: bool,
}

fn hello_for(id: usize) -> Vec<u8> {
    format!("hello {id:04}\n").into_bytes()
}

const PONG: &[u8] = b"pong\n";

impl Client {
    /// Connects and waits (bounded) for the client side to be established,
    /// i.e. for the SYN+ACK; the final ACK may still be in flight or held.
    pub fn connect(family: Family, to: SocketAddr, id: usize) -> Result<Client> {
        let sock = family.tcp_socket()?;
        match sock.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e).with_context(|| format!("client {id}: connect {to}")),
        }
        Self::finish_connect(sock, id)
    }

    /// Fast Open: the hello travels in the SYN (no cookie needed with
    /// tcp_fastopen bits 0x4 and 0x200), then waits for the SYN+ACK.
    pub fn connect_fastopen(family: Family, to: SocketAddr, id: usize) -> Result<Client> {
        let sock = family.tcp_socket()?;
        let hello = hello_for(id);
        let n = sock
            .send_to_with_flags(&hello, &to.into(), libc::MSG_FASTOPEN)
            .with_context(|| format!("client {id}: sendto(MSG_FASTOPEN) {to}"))?;
        if n != hello.len() {
            bail!("client {id}: SYN carried {n} of {} data bytes", hello.len());
        }
        let mut c = Self::finish_connect(sock, id)?;
        c.sent = true;
        Ok(c)
    }

    fn finish_connect(sock: Socket, id: usize) -> Result<Client> {
        if !poll_fd(
            sock.as_raw_fd(),
            libc::POLLOUT,
            Deadline::after(event_timeout()),
        )? {
            bail!("client {id}: not connected after {:?}", event_timeout());
        }
        if let Some(e) = sock.take_error()? {
            return Err(e).with_context(|| format!("client {id}: connect"));
        }
        let port = port_of(&sock.local_addr()?);
        Ok(Client {
            sock,
            port,
            hello: hello_for(id),
            sent: false,
        })
    }

    /// Sends the hello unless it already went out (Fast Open).
    pub fn send_hello(&mut self) -> Result<()> {
        if self.sent {
            return Ok(());
        }
        let n = (&self.sock).write(&self.hello).context("client send")?;
        if n != self.hello.len() {
            bail!("client sent {n} of {} bytes", self.hello.len());
        }
        self.sent = true;
        Ok(())
    }

    /// Segments sent but not yet acknowledged by the server (TCP_INFO).
    pub fn unacked(&self) -> Result<u32> {
        Ok(tcp_info(self.sock.as_raw_fd())?.tcpi_unacked)
    }

    /// Waits (bounded) for something from the server and classifies it.
    pub fn fate(&self, deadline: Deadline) -> Result<Fate> {
        if !poll_fd(self.sock.as_raw_fd(), libc::POLLIN, deadline)? {
            return Ok(Fate::Silent);
        }
        let mut buf = [0u8; 64];
        Ok(match (&self.sock).read(&mut buf) {
            Ok(0) => Fate::Eof,
            Ok(n) => Fate::Data(buf[..n].to_vec()),
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Fate::Reset,
            Err(e) => Fate::Error(e),
        })
    }
}

#[derive(Debug)]
pub enum Fate {
    Data(Vec<u8>),
    Eof,
    Reset,
    Silent,
    Error(io::Error),
}

/// What the clients experienced.
#[derive(Default, Debug)]
pub struct Fates {
    pub data: usize,
    pub resets: usize,
    pub eofs: usize,
    pub silent: usize,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl fmt::Display for Fates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data={} reset={} eof={} silent={} error={}",
            self.data, self.resets, self.eofs, self.silent, self.errors
        )?;
        match &self.first_error {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

/// Collects the fate of each client, all within one shared deadline.
pub fn fates<'a>(
    clients: impl IntoIterator<Item = &'a Client>,
    deadline: Deadline,
) -> Result<Fates> {
    let mut f = Fates::default();
    for c in clients {
        match c.fate(deadline)? {
            Fate::Data(_) => f.data += 1,
            Fate::Reset => f.resets += 1,
            Fate::Eof => f.eofs += 1,
            Fate::Silent => f.silent += 1,
            Fate::Error(e) => {
                f.errors += 1;
                f.first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(f)
}

/// Result of talking over every accepted connection.
#[derive(Default)]
pub struct Exchange {
    /// accepted connections whose peer port is one of our clients
    pub matched: usize,
    /// the server read exactly the hello its client sent
    pub hello_ok: usize,
    /// the client read the server's reply: the connection is alive
    pub alive: usize,
    /// the client saw ECONNRESET instead
    pub resets: usize,
    /// the server side reached ESTABLISHED
    pub established: usize,
    /// what the clients that no accepted socket belongs to saw
    pub orphans: Fates,
}

impl Exchange {
    /// Each of `n` accepted clients had its hello read intact and read the
    /// answer; none was reset.
    pub fn check_served(&self, ck: &mut Checks, n: usize) {
        ck.eq("accepted sockets of our clients", self.matched, n);
        ck.eq("hellos read intact", self.hello_ok, n);
        ck.eq("clients answered", self.alive, n);
        ck.eq("clients reset", self.resets, 0);
    }

    /// As [`Exchange::check_served`], and no client was left unaccepted.
    pub fn check_all_served(&self, ck: &mut Checks, n: usize) {
        self.check_served(ck, n);
        ck.eq(
            "clients never accepted",
            self.orphans.to_string(),
            Fates::default().to_string(),
        );
    }
}

/// For every accepted connection: find its client by port, read the hello
/// on the server side, answer, and have the client read the answer.
/// The client hellos must have been sent already.
pub fn exchange(clients: &[Client], accepted: &[Accepted]) -> Result<Exchange> {
    let deadline = Deadline::after(event_timeout());
    let mut ex = Exchange::default();
    let mut matched = vec![false; clients.len()];
    for a in accepted {
        let Some(ci) = clients.iter().position(|c| c.port == a.peer_port) else {
            continue;
        };
        ex.matched += 1;
        matched[ci] = true;
        let want = &clients[ci].hello;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want.len() && poll_fd(a.sock.as_raw_fd(), libc::POLLIN, deadline)? {
            match (&a.sock).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
        if &got == want {
            ex.hello_ok += 1;
        }
        if (&a.sock)
            .write(PONG)
            .map(|n| n == PONG.len())
            .unwrap_or(false)
        {
            match clients[ci].fate(deadline)? {
                Fate::Data(d) if d == PONG => ex.alive += 1,
                Fate::Reset => ex.resets += 1,
                _ => {}
            }
        }
    }
    let orphans = clients.iter().zip(&matched).filter(|(_, m)| !**m);
    ex.orphans = fates(orphans.map(|(c, _)| c), deadline)?;
    // The server child may still be in SYN_RECV (Fast Open) until the
    // client's ACK of the reply lands; give it the remaining time.
    let _ = wait_until(deadline.remaining(), || {
        let mut n = 0;
        for a in accepted {
            if tcp_state(&a.sock)? == TCP_ESTABLISHED {
                n += 1;
            }
        }
        ex.established = n;
        Ok(n == accepted.len())
    })?;
    Ok(ex)
}
