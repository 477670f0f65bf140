// SPDX-License-Identifier: GPL-2.0
//! The `tcp:tcp_reuseport_migrate` tracepoint through tracefs: global to
//! the machine rather than to the namespace, so it is kept apart.

use std::collections::HashMap;
use std::fs;
use std::io;

use anyhow::{bail, Context, Result};

use super::Kernel;

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
