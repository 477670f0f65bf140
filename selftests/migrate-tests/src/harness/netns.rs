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
