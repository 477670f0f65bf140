// SPDX-License-Identifier: GPL-2.0
//! The `tcp:tcp_reuseport_migrate` and `tcp:tcp_reuseport_park`
//! tracepoints through tracefs: global to the machine rather than to the
//! namespace, so they are kept apart.

use std::collections::HashMap;
use std::fs;
use std::io;

use anyhow::{bail, Context, Result};

use super::Kernel;

/// The tracepoint on the patched kernel; the base kernel has none, nor
/// does a kernel of the `net` queue alone.
pub fn start_trace(kernel: Kernel, port: u16) -> Result<Option<Trace>> {
    if super::observes_reasons(kernel) {
        Trace::start(port).map(Some)
    } else {
        Ok(None)
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
const PARK_EVENT: &str = "events/tcp/tcp_reuseport_park";

/// One `tcp_reuseport_park` event: what a parked listener held when it
/// was parked, and when its park ended and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkEvent {
    /// `parked`, or how the park ended: `adopted`, `expired`, `evicted`,
    /// `destroyed` or `cancelled`.
    pub event: String,
    /// Children in its accept queue.
    pub queued: u32,
    /// Handshakes in flight.
    pub requests: u32,
    /// The listener's port: a trace may follow several.
    pub sport: u16,
    /// The listener's socket cookie, which tells two listeners of one
    /// port apart.
    pub cookie: String,
    /// The trace clock (seconds since boot, the kernel's own), for the
    /// time between a park and its end without the test's latency.
    pub at: f64,
}

impl std::fmt::Display for ParkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} queued={} requests={}",
            self.event, self.queued, self.requests
        )
    }
}

/// The `tcp:tcp_reuseport_migrate` tracepoint, and `tcp_reuseport_park`
/// where the kernel has it, enabled through tracefs and filtered on the
/// listening ports of the test. The trace buffer is global, which is fine:
/// the suite runs one test at a time.
pub struct Trace {
    ports: Vec<u16>,
    park: bool,
}

impl Trace {
    /// Clears the trace buffer and starts recording migrations of sockets
    /// leaving listeners on `port`.
    pub fn start(port: u16) -> Result<Trace> {
        Self::start_ports(&[port])
    }

    /// As [`Trace::start`], for listeners on any of `ports`.
    pub fn start_ports(ports: &[u16]) -> Result<Trace> {
        if ports.is_empty() {
            bail!("a trace needs a port to filter on");
        }
        let root = std::path::Path::new(TRACEFS);
        if !root.join("events").exists() {
            mount_pseudo_fs("tracefs", TRACEFS)?;
        }
        let ev = root.join(TRACE_EVENT);
        if !ev.exists() {
            bail!("kernel has no tracepoint tcp:tcp_reuseport_migrate ({TRACEFS}/{TRACE_EVENT})");
        }
        let park = root.join(PARK_EVENT).exists();
        let t = Trace {
            ports: ports.to_vec(),
            park,
        };
        let filter = ports
            .iter()
            .map(|p| format!("sport == {p}"))
            .collect::<Vec<_>>()
            .join(" || ");
        for ev in t.events() {
            t.write(&format!("{ev}/enable"), "0")?;
            t.write(&format!("{ev}/filter"), &filter)?;
        }
        t.write("trace", "")?;
        for ev in t.events() {
            t.write(&format!("{ev}/enable"), "1")?;
        }
        Ok(t)
    }

    fn events(&self) -> Vec<&'static str> {
        let mut v = vec![TRACE_EVENT];
        if self.park {
            v.push(PARK_EVENT);
        }
        v
    }

    fn read_trace(&self) -> Result<String> {
        let path = format!("{TRACEFS}/trace");
        fs::read_to_string(&path).with_context(|| format!("read {path}"))
    }

    /// The lines of `event` (its name) on this trace's ports in `text`.
    fn lines_of<'a>(&'a self, text: &'a str, event: &str) -> impl Iterator<Item = &'a str> {
        let name = format!("{event}:");
        let ports: Vec<String> = self.ports.iter().map(|p| format!("sport={p}")).collect();
        text.lines().filter(move |l| {
            l.contains(&name) && l.split_whitespace().any(|w| ports.iter().any(|p| p == w))
        })
    }

    /// The `tcp_reuseport_park` events recorded so far, in order. An error
    /// on a kernel without that tracepoint.
    pub fn park_events(&self) -> Result<Vec<ParkEvent>> {
        if !self.park {
            bail!("kernel has no tracepoint tcp:tcp_reuseport_park ({TRACEFS}/{PARK_EVENT})");
        }
        let text = self.read_trace()?;
        let mut out = Vec::new();
        for line in self.lines_of(&text, "tcp_reuseport_park") {
            out.push(park_event(line)?);
        }
        Ok(out)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = format!("{TRACEFS}/{file}");
        fs::write(&path, value).with_context(|| format!("write {value:?} to {path}"))
    }

    /// Events recorded so far, counted by `kind/result`.
    pub fn counts(&self) -> Result<HashMap<String, u64>> {
        let text = self.read_trace()?;
        let mut out = HashMap::new();
        for line in self.lines_of(&text, "tcp_reuseport_migrate") {
            let kind = field(line, "kind=").unwrap_or("?");
            let result = field(line, "result=").unwrap_or("?");
            *out.entry(format!("{kind}/{result}")).or_insert(0) += 1;
        }
        Ok(out)
    }
}

/// One `tcp_reuseport_park` line of the trace file.
fn park_event(line: &str) -> Result<ParkEvent> {
    let field = |key: &str| field(line, key).with_context(|| format!("no {key} in {line:?}"));
    let num = |key: &str| -> Result<u32> {
        field(key)?
            .parse()
            .with_context(|| format!("{key} in {line:?}"))
    };
    // "... [000] ..... 123.456789: tcp_reuseport_park: ..."
    let at = line
        .split_whitespace()
        .take_while(|w| !w.starts_with("tcp_reuseport_park"))
        .last()
        .and_then(|w| w.strip_suffix(':'))
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no timestamp in {line:?}"))?;
    Ok(ParkEvent {
        event: field("event=")?.to_string(),
        queued: num("queued=")?,
        requests: num("requests=")?,
        sport: field("sport=")?
            .parse()
            .with_context(|| format!("sport in {line:?}"))?,
        cookie: field("sock_cookie=")?.to_string(),
        at,
    })
}

/// The value of the `key=value` word `key` of a trace line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

impl Drop for Trace {
    fn drop(&mut self) {
        for ev in self.events() {
            let _ = self.write(&format!("{ev}/enable"), "0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the new series' tracefs prints it (kworker of
    /// system_unbound_wq, an expiry).
    const LINE: &str = "  kworker/u8:2-41      [000] b..1.  1402.915342: tcp_reuseport_park: \
        family=AF_INET6 sport=41577 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=::1 daddrv6=:: \
        sock_cookie=2f event=expired queued=4 requests=0 sk=00000000c0ffee00";

    #[test]
    fn parses_a_park_line() {
        let e = park_event(LINE).expect("parses");
        assert_eq!(e.to_string(), "expired queued=4 requests=0");
        assert_eq!((e.sport, e.cookie.as_str()), (41577, "2f"));
        assert!((e.at - 1402.915342).abs() < 1e-9);
    }

    #[test]
    fn a_line_without_a_field_is_an_error() {
        let cut = LINE.replace("queued=4 ", "");
        assert!(park_event(&cut).is_err());
    }
}
