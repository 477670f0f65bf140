// SPDX-License-Identifier: GPL-2.0
//! What must be back where it was after the run: sockets and request
//! sockets by slab cache, orphans, and kmemleak's verdict.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// The caches whose objects the migration paths allocate and free.
pub const CACHES: &[&str] = &[
    "request_sock_TCP",
    "request_sock_TCPv6",
    "TCP",
    "TCPv6",
    "tw_sock_TCP",
    "tw_sock_TCPv6",
];

/// Objects in use per cache, after the caches were shrunk (which also
/// empties KASAN's quarantine of them, so freed objects do not count).
/// Empty when the kernel has no /sys/kernel/slab (no SLUB_DEBUG).
pub fn slab_objects() -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for c in CACHES {
        let dir = Path::new("/sys/kernel/slab").join(c);
        if !dir.exists() {
            continue;
        }
        let _ = fs::write(dir.join("shrink"), "1");
        let text = fs::read_to_string(dir.join("objects"))
            .with_context(|| format!("read {}/objects", dir.display()))?;
        let n = text
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(u64::MAX);
        out.insert(c.to_string(), n);
    }
    Ok(out)
}

/// One line of /proc/thread-self/net/sockstat as name -> value, e.g.
/// `TCP` -> {inuse, orphan, tw, alloc, mem}.
pub fn sockstat(proto: &str) -> Result<BTreeMap<String, u64>> {
    let text = fs::read_to_string("/proc/thread-self/net/sockstat")
        .context("read /proc/thread-self/net/sockstat")?;
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

const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";

/// Whether the kernel has kmemleak (debugfs must be mounted).
pub fn kmemleak_present() -> bool {
    Path::new(KMEMLEAK).exists()
}

/// Forgets what kmemleak suspected so far: what it reports later is new.
pub fn kmemleak_clear() -> Result<()> {
    fs::write(KMEMLEAK, "clear").context("write clear to kmemleak")
}

/// Scans twice (an object is reported once it was unreferenced in a scan
/// and is old enough) and returns the reports.
pub fn kmemleak_scan() -> Result<Vec<String>> {
    for _ in 0..2 {
        fs::write(KMEMLEAK, "scan").context("write scan to kmemleak")?;
    }
    let text = fs::read_to_string(KMEMLEAK).context("read kmemleak")?;
    Ok(text
        .split("unreferenced object")
        .skip(1)
        .map(|r| {
            format!(
                "unreferenced object{}",
                r.lines().take(12).collect::<Vec<_>>().join("\n")
            )
        })
        .collect())
}
