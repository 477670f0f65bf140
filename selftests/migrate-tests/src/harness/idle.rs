// SPDX-License-Identifier: GPL-2.0
//! What must be back where it was when a test ends: the namespace's TCP
//! sockets in use, the machine's TCP orphans (a parked listener counts as
//! one), and where the kernel shows them (SLUB_DEBUG), the socket and
//! request-socket slab objects.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::{scaled, wait_until, Checks};

/// One line of /proc/thread-self/net/sockstat as name -> value, e.g.
/// `TCP` -> {inuse, orphan, tw, alloc, mem}. `inuse` and `tw` are the
/// calling thread's namespace's, `orphan` is the machine's.
pub fn sockstat(proto: &str) -> Result<BTreeMap<String, u64>> {
    sockstat_in("sockstat", proto)
}

/// As [`sockstat`], from /proc/thread-self/net/`file` (`sockstat6` has
/// the IPv6 sockets: `TCP6` -> {inuse}).
fn sockstat_in(file: &str, proto: &str) -> Result<BTreeMap<String, u64>> {
    let path = format!("/proc/thread-self/net/{file}");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&format!("{proto}: ")) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        for pair in w.chunks(2) {
            if let [k, v] = pair {
                out.insert(k.to_string(), v.parse().unwrap_or(u64::MAX));
            }
        }
    }
    Ok(out)
}

fn tcp_stat(key: &str) -> Result<u64> {
    sockstat("TCP")?
        .get(key)
        .copied()
        .ok_or_else(|| anyhow!("no TCP {key} in sockstat"))
}

/// TCP sockets in use in the calling thread's namespace, IPv4 and IPv6
/// (sockstat counts tcp_prot's, sockstat6 tcpv6_prot's).
pub fn tcp_inuse() -> Result<u64> {
    let v6 = match std::path::Path::new("/proc/thread-self/net/sockstat6").exists() {
        true => sockstat_in("sockstat6", "TCP6")?
            .get("inuse")
            .copied()
            .ok_or_else(|| anyhow!("no TCP6 inuse in sockstat6"))?,
        false => 0,
    };
    Ok(tcp_stat("inuse")? + v6)
}

/// TCP orphans of the whole machine (the count is global): sockets closed
/// by their process and not yet gone, parked listeners included.
pub fn tcp_orphans() -> Result<u64> {
    tcp_stat("orphan")
}

/// The caches whose objects a park and its connections use.
const CACHES: &[&str] = &["TCP", "TCPv6", "request_sock_TCP", "request_sock_TCPv6"];

/// Objects in use per cache of [`CACHES`] (see [`slab_objects_of`]).
pub fn slab_objects() -> Result<BTreeMap<String, u64>> {
    slab_objects_of(CACHES)
}

/// Objects in use per cache of `caches`; empty when the kernel does not
/// show them (`objects` needs SLUB_DEBUG). The caches are shrunk first,
/// which also empties KASAN's quarantine of them.
pub fn slab_objects_of(caches: &[&str]) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for c in caches {
        let dir = Path::new("/sys/kernel/slab").join(c);
        let objects = dir.join("objects");
        if !objects.exists() {
            continue;
        }
        let _ = fs::write(dir.join("shrink"), "1");
        let text =
            fs::read_to_string(&objects).with_context(|| format!("read {}", objects.display()))?;
        let n = text
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(u64::MAX);
        out.insert(c.to_string(), n);
    }
    Ok(out)
}

/// How long what earlier tests left (a park of a namespace that is
/// gone, sockets finishing their close) may take to go before a test
/// takes its idle values: the longest grace the suite sets, and more.
const SETTLE: Duration = Duration::from_secs(15);

/// The idle values a test must come back to.
pub struct Idle {
    inuse: u64,
    orphans: u64,
    slab: BTreeMap<String, u64>,
}

impl Idle {
    /// Takes the idle values of the calling thread's namespace, after
    /// waiting (bounded) for the machine to have no TCP orphan: an earlier
    /// test's park ends within its grace, and the count is global, so a
    /// test asserting exact orphan counts must start from a still one.
    pub fn settle() -> Result<Idle> {
        let _ = wait_until(scaled(SETTLE), || Ok(tcp_orphans()? == 0))?;
        Ok(Idle {
            inuse: tcp_inuse()?,
            orphans: tcp_orphans()?,
            slab: slab_objects()?,
        })
    }

    /// The machine's TCP orphans when the test started.
    pub fn orphans(&self) -> u64 {
        self.orphans
    }

    /// The namespace's TCP sockets in use when the test started.
    pub fn inuse(&self) -> u64 {
        self.inuse
    }

    /// Waits (bounded by `within`) until the namespace's TCP sockets, the
    /// machine's orphans and the slab objects are back to their idle
    /// values (at most, for the global ones: another namespace's leftover
    /// may have gone meanwhile), then checks each. `what` names the step.
    pub fn check(&self, ck: &mut Checks, what: &str, within: Duration) -> Result<()> {
        let mut now = (0, 0, BTreeMap::new());
        wait_until(within, || {
            now = (tcp_inuse()?, tcp_orphans()?, slab_objects()?);
            Ok(now.0 == self.inuse
                && now.1 <= self.orphans
                && now
                    .2
                    .iter()
                    .all(|(c, n)| self.slab.get(c).is_some_and(|b| n <= b)))
        })?;
        ck.eq(&format!("TCP inuse {what}"), now.0, self.inuse);
        ck.le(&format!("TCP orphans {what}"), now.1, self.orphans);
        for (c, n) in &now.2 {
            if let Some(b) = self.slab.get(c) {
                ck.le(&format!("{c} slab objects {what}"), *n, *b);
            }
        }
        Ok(())
    }
}
