// SPDX-License-Identifier: GPL-2.0
//! Where a test runs: its own network namespace and the CPU of each of its
//! threads, process state that the rest of the harness takes as given.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use socket2::{Domain, Socket, Type};

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

/// Makes the whole process resident, now and for what it maps later. The
/// binary is read from the guest's shared root: under TCG a page fault on
/// code not yet read has been seen to stall a thread for seconds, which
/// is longer than the windows the park tests time by the grace.
pub fn lock_in_memory() -> Result<()> {
    // SAFETY: no pointers; locks the pages mapped now and later.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(io::Error::last_os_error()).context("mlockall");
    }
    Ok(())
}

/// Makes the calling thread real-time (SCHED_FIFO, the lowest priority):
/// a kworker it wakes on its CPU then runs only once the thread blocks or
/// exits, not in the middle of its syscall. A test whose gate holds that
/// kworker with interrupts off would otherwise never see the syscall
/// return; with [`lock_in_memory`] the thread does not block on the way.
pub fn outrun_kworkers() -> Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error()).context("sched_setscheduler(SCHED_FIFO, 1)");
    }
    Ok(())
}

/// A thread that keeps a CPU busy until dropped. A CPU that goes idle
/// hands its timers to a busy one even with timer_migration at 0 (seen on
/// 6.12 under TCG): keeping the CPU that armed a timer busy keeps the
/// timer, and the work it queues, on that CPU. Work it wakes there still
/// runs: the spinner is an ordinary thread, which the kworker preempts.
pub struct BusyCpu {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyCpu {
    pub fn new(cpu: usize) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let pinned = pin_to_cpu(cpu);
            let ok = pinned.is_ok();
            let _ = tx.send(pinned);
            while ok && !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        rx.recv().context("spinner thread")??;
        Ok(BusyCpu {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BusyCpu {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TIMER_MIGRATION: &str = "/proc/sys/kernel/timer_migration";

/// Timers fire on the CPU that armed them while this lives (restored on
/// drop): a delayed work item armed from a pinned thread then runs on that
/// thread's CPU, so a gate holding it spins where the test is not.
pub struct TimersStayLocal(Option<String>);

impl TimersStayLocal {
    pub fn new() -> Result<Self> {
        match std::fs::read_to_string(TIMER_MIGRATION) {
            Ok(v) => {
                std::fs::write(TIMER_MIGRATION, "0")
                    .with_context(|| format!("write 0 to {TIMER_MIGRATION}"))?;
                Ok(TimersStayLocal(Some(v)))
            }
            // Without NO_HZ_COMMON timers never migrate.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TimersStayLocal(None)),
            Err(e) => Err(e).context(format!("read {TIMER_MIGRATION}")),
        }
    }
}

impl Drop for TimersStayLocal {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            // Best effort: a global setting, put back for the next test.
            let _ = std::fs::write(TIMER_MIGRATION, v);
        }
    }
}

const WQ_CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";

/// Work of the unbound workqueues (system_unbound_wq, where a park's end
/// runs) goes only to CPU `cpu` while this lives; the mask is restored on
/// drop. A gate holding that work with interrupts off then spins there,
/// never on the CPU the test goes on from.
pub struct UnboundWorkOn(String);

impl UnboundWorkOn {
    pub fn new(cpu: usize) -> Result<Self> {
        let old =
            std::fs::read_to_string(WQ_CPUMASK).with_context(|| format!("read {WQ_CPUMASK}"))?;
        let mask = format!("{:x}", 1u64 << cpu);
        std::fs::write(WQ_CPUMASK, &mask)
            .with_context(|| format!("write {mask} to {WQ_CPUMASK}"))?;
        Ok(UnboundWorkOn(old.trim().to_string()))
    }
}

impl Drop for UnboundWorkOn {
    fn drop(&mut self) {
        // Best effort: a global setting, put back for the next test.
        let _ = std::fs::write(WQ_CPUMASK, &self.0);
    }
}

/// The network namespace a thread is in, held open so that the thread
/// can come back to it: a test that enters another namespace for its
/// setup and then leaves it lets that namespace go once nothing else
/// holds it.
pub struct Netns(std::fs::File);

impl Netns {
    /// The calling thread's namespace.
    pub fn current() -> Result<Netns> {
        std::fs::File::open("/proc/thread-self/ns/net")
            .map(Netns)
            .context("open /proc/thread-self/ns/net")
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: the descriptor is a namespace file this value owns.
        if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
        }
        Ok(())
    }

    /// A path to this namespace that another process can open (what
    /// iproute2 takes as `netns FILE`).
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.0.as_raw_fd())
    }
}

/// Runs iproute2's `ip ARGS` in the calling thread's namespace.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2; scripts/setup-host installs it)")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the calling thread's namespace has a device called `name`.
pub fn link_exists(name: &str) -> Result<bool> {
    let c = std::ffi::CString::new(name).context("device name")?;
    // SAFETY: a valid NUL-terminated string; no other memory is touched.
    Ok(unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
}
