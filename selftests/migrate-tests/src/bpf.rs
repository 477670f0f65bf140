// SPDX-License-Identifier: GPL-2.0
//! The two BPF objects built from `bpf/*.bpf.c` by build.rs, with just the
//! handles the scenarios need.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{Link, Map, MapCore, MapFlags, Object, ObjectBuilder};
use socket2::Socket;

use crate::faults::Kallsyms;
use crate::harness::{event_timeout, setsockopt_int, wait_until};

const GATE_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gate.bpf.o"));
const HOLD_ACK_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hold_ack.bpf.o"));
const STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

fn load(bytes: &[u8], what: &str) -> Result<Object> {
    ObjectBuilder::default()
        .open_memory(bytes)
        .with_context(|| format!("open BPF object {what}"))?
        .load()
        .with_context(|| format!("load BPF object {what}"))
}

fn map<'o>(obj: &'o Object, name: &str) -> Result<Map<'o>> {
    obj.maps()
        .find(|m| m.name() == name)
        .ok_or_else(|| anyhow!("BPF map {name} missing"))
}

/// Entry 0 of the array map `name`, a value of exactly `N` bytes.
fn value0<const N: usize>(obj: &Object, name: &str) -> Result<[u8; N]> {
    let v = map(obj, name)?
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("lookup {name}"))?
        .ok_or_else(|| anyhow!("{name}[0] missing"))?;
    v.as_slice()
        .try_into()
        .map_err(|_| anyhow!("{name} value: {} bytes", v.len()))
}

fn put_u32(obj: &Object, map_name: &str, key: u32, val: u32) -> Result<()> {
    map(obj, map_name)?
        .update(&key.to_ne_bytes(), &val.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("update {map_name}[{key}]"))
}

fn get_u64(obj: &Object, map_name: &str, key: u32) -> Result<u64> {
    let v = map(obj, map_name)?
        .lookup(&key.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("lookup {map_name}[{key}]"))?
        .ok_or_else(|| anyhow!("{map_name}[{key}] missing"))?;
    let bytes: [u8; 8] = v
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("{map_name}[{key}]: {} bytes", v.len()))?;
    Ok(u64::from_ne_bytes(bytes))
}

/// XDP program on `lo` that discards the client's final handshake ACK (and
/// any later ACK) towards one server port, keeping server-side handshakes
/// half open until `release()`.
pub struct HoldAck {
    obj: Object,
    _link: Link,
}

impl HoldAck {
    pub fn attach(port: u16) -> Result<HoldAck> {
        let obj = load(HOLD_ACK_OBJ, "hold_ack")?;
        put_u32(&obj, "hold_cfg", 0, port.into())?;
        let lo = CString::new("lo").expect("no NUL");
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error()).context("if_nametoindex(lo)");
        }
        let link = obj
            .progs_mut()
            .find(|p| p.name() == "hold_final_ack")
            .ok_or_else(|| anyhow!("XDP program hold_final_ack missing"))?
            .attach_xdp(ifindex as i32)
            .context("attach XDP to lo")?;
        Ok(HoldAck { obj, _link: link })
    }

    /// Lets ACKs through again (one map write, no detach latency).
    pub fn release(&self) -> Result<()> {
        put_u32(&self.obj, "hold_cfg", 0, 0)
    }

    pub fn dropped(&self) -> Result<u64> {
        get_u64(&self.obj, "hold_stats", 0)
    }
}

/// Where a [`Gate`] holds the kernel (bpf/gate.bpf.c).
#[derive(Clone, Copy, Debug)]
pub enum GateAt {
    /// The entry of inet_csk_complete_hashdance_migrate() (on a kernel
    /// without the series, inet_csk_complete_hashdance()): after the kernel
    /// found the listener listening and created the child, before the child
    /// is queued.
    Hashdance,
    /// tcp_set_state(listener, TCP_CLOSE) in __tcp_close(): close() has set
    /// SHUTDOWN_MASK on the listener, which still listens.
    Close,
    /// The entry of inet_csk_reqsk_queue_add_migrate() (on a kernel without
    /// the series, inet_csk_reqsk_queue_add()): a Fast Open or syncookie
    /// child exists and is about to be queued on the listener it was made
    /// from.
    QueueAdd,
    /// The return of reuseport_migrate_sock() with a target: chosen and
    /// referenced, the migrating socket not yet queued on it.
    Migrated,
    /// The entry of tcp_park_work(), the work that ends a park and closes
    /// the parked listener: held whatever its port (the work is not a
    /// socket); arm it only while the test's park is the machine's only.
    ParkWork,
}

impl GateAt {
    fn program(self) -> &'static str {
        match self {
            GateAt::Hashdance => "hashdance_gate",
            GateAt::Close => "close_gate",
            GateAt::QueueAdd => "queue_add_gate",
            GateAt::Migrated => "migrate_gate",
            GateAt::ParkWork => "park_work_gate",
        }
    }

    /// The functions the gate's kprobe may attach to, newest first, for the
    /// programs whose section names none: the series makes TCP call
    /// `_migrate` variants and leaves the old functions to other callers.
    fn functions(self) -> &'static [&'static str] {
        match self {
            GateAt::Hashdance => &[
                "inet_csk_complete_hashdance_migrate",
                "inet_csk_complete_hashdance",
            ],
            GateAt::QueueAdd => &[
                "inet_csk_reqsk_queue_add_migrate",
                "inet_csk_reqsk_queue_add",
            ],
            GateAt::Close | GateAt::Migrated | GateAt::ParkWork => &[],
        }
    }
}

/// A kprobe that holds, once, the next kernel path that reaches it for a
/// listener of the test's port, until the test releases it.
///
/// Until the kprobe optimizer turns the probe into a jump, a few jiffies
/// after it is attached, its program runs in the breakpoint handler with
/// interrupts off, so while the gate holds, its CPU answers no IPI. The
/// optimizer's text patching waits for every CPU to answer one, spinning on
/// the other CPU: the test could not run there until the gate timed out
/// (4 of 100 gate tests on TCG). Optimization is off while a gate is
/// attached.
pub struct Gate {
    obj: Object,
    _link: Link,
    _optimization: NoKprobeOptimization,
}

const KPROBES_OPTIMIZATION: &str = "/proc/sys/debug/kprobes-optimization";

/// Kprobe optimization off while a program that holds a CPU is attached
/// (see [`Gate`]), and restored on drop.
struct NoKprobeOptimization(Option<String>);

impl NoKprobeOptimization {
    fn new() -> Result<Self> {
        match std::fs::read_to_string(KPROBES_OPTIMIZATION) {
            Ok(v) => {
                std::fs::write(KPROBES_OPTIMIZATION, "0")
                    .with_context(|| format!("write 0 to {KPROBES_OPTIMIZATION}"))?;
                Ok(NoKprobeOptimization(Some(v)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NoKprobeOptimization(None)),
            Err(e) => Err(e).context(format!("read {KPROBES_OPTIMIZATION}")),
        }
    }
}

impl Drop for NoKprobeOptimization {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            // Best effort: the next test sets it again anyway.
            let _ = std::fs::write(KPROBES_OPTIMIZATION, v);
        }
    }
}

/// Attaches the program `name` of `obj`.
fn attach(obj: &mut Object, name: &str) -> Result<Link> {
    obj.progs_mut()
        .find(|p| p.name() == name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .attach()
        .with_context(|| format!("attach {name}"))
}

/// The kernel's functions, read once: the listing is long, and a gate is
/// attached in the middle of a test, between steps a timer may race.
fn kallsyms() -> Result<&'static Kallsyms> {
    static SYMS: OnceLock<Kallsyms> = OnceLock::new();
    if let Some(syms) = SYMS.get() {
        return Ok(syms);
    }
    let syms = Kallsyms::read()?;
    Ok(SYMS.get_or_init(|| syms))
}

/// Attaches the kprobe program `name` of `obj` to the kernel function `func`.
fn attach_kprobe(obj: &mut Object, name: &str, func: &str) -> Result<Link> {
    obj.progs_mut()
        .find(|p| p.name() == name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .attach_kprobe(false, func)
        .with_context(|| format!("attach {name} to {func}"))
}

/// Byte offsets of the fields of `struct gate` in bpf/gate.bpf.c.
const GATE_ARMED: usize = 0;
const GATE_HOLDING: usize = 4;
const GATE_RELEASE: usize = 8;
const GATE_TIMED_OUT: usize = 12;
const GATE_HELD: usize = 16;
const GATE_PORT: usize = 24;
const GATE_OTHER_PORT: usize = 28;
const GATE_OTHERS: usize = 32;
const GATE_SIZE: usize = 40;

impl Gate {
    /// Loads the programs and attaches the kprobe `at`; the gate starts
    /// unarmed.
    pub fn attach(at: GateAt) -> Result<Gate> {
        let optimization = NoKprobeOptimization::new()?;
        let mut obj = load(GATE_OBJ, "gate")?;
        let link = match at.functions() {
            [] => attach(&mut obj, at.program())?,
            names => attach_kprobe(&mut obj, at.program(), kallsyms()?.first_of(names))?,
        };
        Ok(Gate {
            obj,
            _link: link,
            _optimization: optimization,
        })
    }

    fn read(&self) -> Result<[u8; GATE_SIZE]> {
        value0(&self.obj, "gate_map")
    }

    fn field(&self, off: usize) -> Result<u32> {
        let v = self.read()?;
        Ok(u32::from_ne_bytes(
            v[off..off + 4].try_into().expect("4 bytes"),
        ))
    }

    fn field64(&self, off: usize) -> Result<u64> {
        let v = self.read()?;
        Ok(u64::from_ne_bytes(
            v[off..off + 8].try_into().expect("8 bytes"),
        ))
    }

    fn set(&self, fields: &[(usize, u32)]) -> Result<()> {
        let mut v = self.read()?;
        for &(off, val) in fields {
            v[off..off + 4].copy_from_slice(&val.to_ne_bytes());
        }
        map(&self.obj, "gate_map")?
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .context("update gate_map")
    }

    /// The next path to reach the gate for a listener of `port` will be
    /// held; those for other ports pass.
    pub fn arm(&self, port: u16) -> Result<()> {
        self.set(&[(GATE_PORT, port.into()), (GATE_ARMED, 1)])
    }

    /// Waits until the gate holds.
    pub fn wait_holding(&self) -> Result<()> {
        if !wait_until(event_timeout(), || Ok(self.field(GATE_HOLDING)? == 1))? {
            let others = self.field64(GATE_OTHERS)?;
            let last = match others {
                0 => String::new(),
                _ => format!(", the last on port {}", self.field(GATE_OTHER_PORT)?),
            };
            bail!(
                "nothing for port {} reached the gate within {timeout:?} \
                 ({others} for other ports passed{last})",
                self.field(GATE_PORT)?,
                timeout = event_timeout()
            );
        }
        Ok(())
    }

    /// Lets the held path go on, and checks it was held exactly once and
    /// released by us, not by the gate's own time limit.
    pub fn release(&self) -> Result<()> {
        self.set(&[(GATE_RELEASE, 1)])?;
        if !wait_until(event_timeout(), || Ok(self.field(GATE_HOLDING)? == 0))? {
            bail!("the gate still holds {:?} after release", event_timeout());
        }
        let held = self.field64(GATE_HELD)?;
        if held != 1 || self.field(GATE_TIMED_OUT)? != 0 {
            bail!(
                "gate: held {held} time(s), timed out: {} (want 1, 0)",
                self.field(GATE_TIMED_OUT)?
            );
        }
        Ok(())
    }
}

/// The dead_child_* programs of bpf/gate.bpf.c: a final ACK for the test's
/// port held at tcp_check_req() until a close() of its listener reaches
/// inet_csk_destroy_sock(), which is held until the ACK's tcp_check_req()
/// returns. The child is then made from an orphaned listener.
pub struct DeadChildGate {
    obj: Object,
    _links: Vec<Link>,
    _optimization: NoKprobeOptimization,
}

/// Byte offsets of the fields of `struct chain` in bpf/gate.bpf.c, and its
/// stages.
const CHAIN_ARMED: usize = 0;
const CHAIN_PORT: usize = 4;
const CHAIN_STAGE: usize = 8;
const CHAIN_TIMED_OUT: usize = 12;
const CHAIN_SIZE: usize = 16;
pub const CHAIN_ACK_HELD: u32 = 1;
pub const CHAIN_ACK_DONE: u32 = 3;

impl DeadChildGate {
    pub fn attach() -> Result<DeadChildGate> {
        let optimization = NoKprobeOptimization::new()?;
        let mut obj = load(GATE_OBJ, "gate")?;
        let links = ["dead_child_ack", "dead_child_close", "dead_child_done"]
            .iter()
            .map(|name| attach(&mut obj, name))
            .collect::<Result<_>>()?;
        Ok(DeadChildGate {
            obj,
            _links: links,
            _optimization: optimization,
        })
    }

    fn field(&self, off: usize) -> Result<u32> {
        let v: [u8; CHAIN_SIZE] = value0(&self.obj, "chain_map")?;
        Ok(u32::from_ne_bytes(
            v[off..off + 4].try_into().expect("4 bytes"),
        ))
    }

    /// The next final ACK for a listener of `port` is held.
    pub fn arm(&self, port: u16) -> Result<()> {
        let mut v = [0u8; CHAIN_SIZE];
        v[CHAIN_PORT..CHAIN_PORT + 4].copy_from_slice(&u32::from(port).to_ne_bytes());
        v[CHAIN_ARMED..CHAIN_ARMED + 4].copy_from_slice(&1u32.to_ne_bytes());
        map(&self.obj, "chain_map")?
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .context("update chain_map")
    }

    /// Waits until the chain reached `stage`, and checks that no hold ran
    /// into its time limit.
    pub fn wait_stage(&self, stage: u32) -> Result<()> {
        if !wait_until(event_timeout(), || Ok(self.field(CHAIN_STAGE)? >= stage))? {
            bail!(
                "the dead-child gate reached stage {} of {stage} within {timeout:?}",
                self.field(CHAIN_STAGE)?,
                timeout = event_timeout()
            );
        }
        if self.field(CHAIN_TIMED_OUT)? != 0 {
            bail!("a hold of the dead-child gate timed out: the window was not held");
        }
        Ok(())
    }
}

/// Counters kept by the steer program (index into `steer_stats`; keep in
/// sync with `enum stat` in bpf/steer.bpf.c).
#[derive(Clone, Copy, Debug)]
pub enum Stat {
    SynSelected = 0,
    MigrateEstablished = 1,
    MigrateSynRecv = 2,
    MigrateReqAck = 3,
    MigrateReqTimer = 4,
    MigrateDropped = 5,
    SelectError = 6,
}

impl Stat {
    pub const ALL: [Stat; 7] = [
        Stat::SynSelected,
        Stat::MigrateEstablished,
        Stat::MigrateSynRecv,
        Stat::MigrateReqAck,
        Stat::MigrateReqTimer,
        Stat::MigrateDropped,
        Stat::SelectError,
    ];
}

const CFG_SYN_SLOT: u32 = 0;
const CFG_MIGRATE_SLOT: u32 = 1;
const SLOT_NONE: u32 = 0xffff_ffff;
const SLOT_DROP: u32 = 0xffff_fffe;

/// What the steer program does with a socket leaving a closed listener.
#[derive(Clone, Copy, Debug)]
pub enum Migrate {
    /// select the listener in this socket-array slot
    To(u32),
    /// return SK_DROP: the kernel must not migrate
    Drop,
}

/// `sk_reuseport/migrate` program (BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) with
/// a REUSEPORT_SOCKARRAY of the group's listeners.
pub struct Steer {
    obj: Object,
}

impl Steer {
    pub fn load() -> Result<Steer> {
        let obj = load(STEER_OBJ, "steer")?;
        let s = Steer { obj };
        s.place_syns(None)?;
        put_u32(&s.obj, "steer_cfg", CFG_MIGRATE_SLOT, SLOT_NONE)?;
        Ok(s)
    }

    fn prog_fd(&self) -> Result<RawFd> {
        Ok(self
            .obj
            .progs()
            .find(|p| p.name() == "steer")
            .ok_or_else(|| anyhow!("program steer missing"))?
            .as_fd()
            .as_raw_fd())
    }

    /// SO_ATTACH_REUSEPORT_EBPF on one listener attaches to its whole group.
    pub fn attach(&self, listener: &Socket) -> Result<()> {
        setsockopt_int(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            self.prog_fd()?,
        )
        .context("setsockopt(SO_ATTACH_REUSEPORT_EBPF)")
    }

    /// SO_DETACH_REUSEPORT_BPF: the group has no program any more, so
    /// `tcp_migrate_req` alone decides where sockets of a closed listener go.
    pub fn detach(&self, listener: &Socket) -> Result<()> {
        setsockopt_int(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            0,
        )
        .context("setsockopt(SO_DETACH_REUSEPORT_BPF)")
    }

    /// Puts a listening socket into slot `slot` of the socket array.
    pub fn set_slot(&self, slot: u32, listener: &Socket) -> Result<()> {
        let fd = listener.as_raw_fd() as u64;
        map(&self.obj, "listeners")?
            .update(&slot.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("listeners[{slot}] = fd {fd}"))
    }

    /// New connections go to `slot`, or to the kernel's hash pick.
    pub fn place_syns(&self, slot: Option<u32>) -> Result<()> {
        put_u32(
            &self.obj,
            "steer_cfg",
            CFG_SYN_SLOT,
            slot.unwrap_or(SLOT_NONE),
        )
    }

    pub fn on_migrate(&self, m: Migrate) -> Result<()> {
        let v = match m {
            Migrate::To(slot) => slot,
            Migrate::Drop => SLOT_DROP,
        };
        put_u32(&self.obj, "steer_cfg", CFG_MIGRATE_SLOT, v)
    }

    pub fn stat(&self, s: Stat) -> Result<u64> {
        get_u64(&self.obj, "steer_stats", s as u32)
    }
}
