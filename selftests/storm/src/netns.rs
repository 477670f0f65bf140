// SPDX-License-Identifier: GPL-2.0
//! The private network namespace: entering it, `lo`, the sysctl, counters.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{unshare, CloneFlags};
use socket2::{Domain, Socket, Type};

use crate::SysctlMode;

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// unshare(CLONE_NEWNET) and bring `lo` up. Must run before any thread is
/// started: the namespace of the calling thread is what changes.
pub fn enter_private() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)
        .context("unshare(CLONE_NEWNET) failed (storm needs root / CAP_SYS_ADMIN)")?;
    loopback_up().context("cannot bring lo up in the new network namespace")
}

fn loopback_up() -> Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    // SAFETY: fd is a valid socket and ifr a valid, named ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS lo");
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS lo");
    }
    Ok(())
}

const PARK_GRACE: &str = "/proc/sys/net/ipv4/tcp_migrate_req_grace_ms";

/// Sets net.ipv4.tcp_migrate_req_grace_ms of the current namespace (the
/// series' own sysctl: Missing on a kernel without it).
pub fn set_park_grace(ms: u64) -> Result<(), SysctlError> {
    match fs::write(PARK_GRACE, ms.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(SysctlError::Missing),
        Err(e) => Err(SysctlError::Other(
            anyhow!(e).context(format!("cannot write {ms} to {PARK_GRACE}")),
        )),
    }
}

/// Why [`set_migrate_req`] failed.
pub enum SysctlError {
    /// The kernel has no tcp_migrate_req.
    Missing,
    /// Anything else, e.g. the value rejected with EINVAL.
    Other(anyhow::Error),
}

/// Apply `mode` to net.ipv4.tcp_migrate_req of the current namespace and
/// return the value in force afterwards (None if the kernel lacks it and
/// `keep` was asked).
pub fn set_migrate_req(mode: SysctlMode) -> Result<Option<u32>, SysctlError> {
    let value = match mode {
        SysctlMode::Off => Some("0"),
        SysctlMode::On => Some("1"),
        SysctlMode::LoadAware => Some("2"),
        SysctlMode::Keep => None,
    };
    if let Some(v) = value {
        match fs::write(MIGRATE_REQ, v) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(SysctlError::Missing),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(SysctlError::Other(anyhow!(
                    "this kernel rejects tcp_migrate_req={v} with EINVAL ({MIGRATE_REQ}); \
                     2 (load-aware) exists only on the patched kernel"
                )))
            }
            Err(e) => {
                return Err(SysctlError::Other(
                    anyhow!(e).context(format!("cannot write {v} to {MIGRATE_REQ}")),
                ))
            }
        }
    }
    match fs::read_to_string(MIGRATE_REQ) {
        Ok(s) => {
            let n = s
                .trim()
                .parse::<u32>()
                .map_err(|e| SysctlError::Other(anyhow!("{MIGRATE_REQ}: bad value {s:?}: {e}")))?;
            if let Some(v) = value {
                if n.to_string() != v {
                    return Err(SysctlError::Other(anyhow!(
                        "{MIGRATE_REQ} reads {n} after writing {v}"
                    )));
                }
            }
            Ok(Some(n))
        }
        Err(e) if e.kind() == ErrorKind::NotFound && value.is_none() => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(SysctlError::Missing),
        Err(e) => Err(SysctlError::Other(anyhow!(e).context(MIGRATE_REQ))),
    }
}

/// The TcpExt counters of /proc/net/netstat in the current namespace.
pub fn tcp_ext() -> Result<HashMap<String, u64>> {
    let text = fs::read_to_string("/proc/net/netstat").context("/proc/net/netstat")?;
    parse_netstat(&text, "TcpExt:")
}

fn parse_netstat(text: &str, prefix: &str) -> Result<HashMap<String, u64>> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {prefix} header/value lines in /proc/net/netstat");
    };
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        bail!(
            "{prefix}: {} names but {} values",
            names.len(),
            values.len()
        );
    }
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let v = v
                .parse::<u64>()
                .with_context(|| format!("{prefix} {n}: bad value {v:?}"))?;
            Ok((n.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs() {
        let t = "TcpExt: SyncookiesSent TCPMigrateReqSuccess TCPMigrateReqFailure\n\
                 TcpExt: 0 7 1\n\
                 IpExt: InNoRoutes\n\
                 IpExt: 3\n";
        let m = parse_netstat(t, "TcpExt:").unwrap();
        assert_eq!(m["TCPMigrateReqSuccess"], 7);
        assert_eq!(m["TCPMigrateReqFailure"], 1);
        assert!(parse_netstat("IpExt: a\nIpExt: 1\n", "TcpExt:").is_err());
    }
}
