// SPDX-License-Identifier: GPL-2.0

//! Choice of the listener that takes over a migrating request or child socket.
//!
//! Plain `core` Rust: no allocation, no locking, no indexing or arithmetic that
//! can panic. The kernel glue gives it a [`Group`] view of a `sock_reuseport`
//! read under RCU; host tests give it a model of one.
//!
//! Everything here is `#[inline]`: it runs for every migrated socket, and
//! the kernel's entry points are the only calls it should cost.

/// A view of the live listeners of a reuseport group.
///
/// A listener is read from its slot once, by [`Group::get`], and the
/// policy then asks about, and returns, that same [`Group::Sk`]: the slots
/// of a kernel group change under the choice (a listener leaving the group
/// moves the last one into its slot), so reading a slot twice could check
/// one listener and return another.
pub trait Group {
    /// A listener as read from its slot.
    type Sk: Copy;

    /// Number of live listeners (`num_socks`).
    fn num_socks(&self) -> u16;

    /// Listener `i`, read once from its slot; `None` unless
    /// `i < num_socks()`.
    fn get(&self, i: u16) -> Option<Self::Sk>;

    /// Whether `sk` may take connections: upstream skips sockets in
    /// `TCP_ESTABLISHED` (connected UDP sockets share the array code).
    fn usable(&self, sk: Self::Sk) -> bool;

    /// Whether `sk` prefers the CPU running the choice (`SO_INCOMING_CPU`).
    /// Only asked when [`Choice::prefer_cpu`] is set.
    fn on_this_cpu(&self, sk: Self::Sk) -> bool;

    /// Whether `sk`'s accept queue has room: not `sk_acceptq_is_full()`.
    /// Only asked in [`Mode::LoadAware`].
    fn has_room(&self, sk: Self::Sk) -> bool;
}

/// How the kernel chooses when no BPF program does: `net.ipv4.tcp_migrate_req`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0: no migration unless a BPF program asks for it.
    Off,
    /// 1: a live listener by hash, whatever its load (upstream).
    Hash,
    /// 2: as [`Mode::Hash`], but out of a full accept queue into one with
    /// room, among the listeners [`with_room`] looks at.
    LoadAware,
}

impl Mode {
    /// The mode for a value of the sysctl, which only accepts known values.
    #[inline]
    pub fn from_sysctl(value: u8) -> Self {
        match value {
            0 => Mode::Off,
            1 => Mode::Hash,
            _ => Mode::LoadAware,
        }
    }
}

/// What the group's `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` program said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bpf<S> {
    /// No migrate program is attached.
    None,
    /// The program returned `SK_PASS` without selecting a listener.
    Pass,
    /// The program selected this listener.
    Selected(S),
    /// The program returned `SK_DROP`: the migration is cancelled.
    Drop,
}

/// Why no target was chosen. The values are the C
/// `enum reuseport_migrate_result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Failure {
    /// No live listener is left in the group.
    NoListener = 1,
    /// `tcp_migrate_req` is off and no migrate program is attached.
    Disabled = 2,
    /// The migrate program returned `SK_DROP`.
    BpfCancelled = 3,
}

/// Inputs of one choice besides the group.
#[derive(Clone, Copy, Debug)]
pub struct Choice<S> {
    /// Hash of the migrating socket.
    pub hash: u32,
    /// `net.ipv4.tcp_migrate_req`.
    pub mode: Mode,
    /// Some listener of the group set `SO_INCOMING_CPU`.
    pub prefer_cpu: bool,
    /// Verdict of the migrate program.
    pub bpf: Bpf<S>,
}

/// Chooses the target of a migration.
///
/// The BPF program has the first word: a selected listener wins and `SK_DROP`
/// cancels. Otherwise, if migration is enabled (by the sysctl, or by a program
/// that passed without choosing), a live listener is picked by hash, and in
/// [`Mode::LoadAware`] moved off a full accept queue by [`with_room`].
#[inline]
pub fn choose<G: Group>(group: &G, choice: Choice<G::Sk>) -> Result<G::Sk, Failure> {
    if let Some(decided) = by_verdict(&choice) {
        return decided;
    }
    let first = by_hash(group, choice.hash, choice.prefer_cpu).ok_or(Failure::NoListener)?;
    Ok(match choice.mode {
        Mode::LoadAware => with_room(group, choice.hash, first, choice.prefer_cpu),
        Mode::Off | Mode::Hash => first,
    })
}

/// [`choose`] for the common case, in O(1) and without a loop: the BPF
/// verdict, or the hashed listener when it is usable, no listener prefers a
/// CPU and, in [`Mode::LoadAware`], its queue has room. `None` when the
/// choice needs a scan of the group.
///
/// Whenever it answers, it answers as [`choose`] does. It lets the kernel
/// keep the scan out of line, off the common path.
#[inline]
pub fn quick<G: Group>(group: &G, choice: &Choice<G::Sk>) -> Option<Result<G::Sk, Failure>> {
    if let Some(decided) = by_verdict(choice) {
        return Some(decided);
    }
    if choice.prefer_cpu {
        return None;
    }
    let sk = group.get(reciprocal_scale(choice.hash, group.num_socks()))?;
    let fits = group.usable(sk) && (choice.mode != Mode::LoadAware || group.has_room(sk));
    fits.then_some(Ok(sk))
}

/// The outcome when the BPF verdict or a disabled sysctl decides it, `None`
/// when the choice is the kernel's.
#[inline]
fn by_verdict<S: Copy>(choice: &Choice<S>) -> Option<Result<S, Failure>> {
    match choice.bpf {
        Bpf::Selected(sk) => Some(Ok(sk)),
        Bpf::Drop => Some(Err(Failure::BpfCancelled)),
        Bpf::None if choice.mode == Mode::Off => Some(Err(Failure::Disabled)),
        Bpf::None | Bpf::Pass => None,
    }
}

/// The odd constant [`with_room`] rehashes with (`REUSEPORT_MIGRATE_REHASH`
/// in C).
pub const REHASH: u32 = 0x9e37_79b9;

/// Maps a 32-bit hash onto `0..n` without a division (the kernel's
/// `reciprocal_scale()`).
#[inline]
pub fn reciprocal_scale(hash: u32, n: u16) -> u16 {
    // (hash * n) >> 32 < n <= u16::MAX, so the narrowing loses nothing.
    ((u64::from(hash) * u64::from(n)) >> 32) as u16
}

/// The index after `i` in a group of `n`, wrapping to 0. Wrapping
/// arithmetic: `i < n` always holds, but the compiler cannot see it and would
/// keep an overflow check that can panic.
#[inline]
fn next(i: u16, n: u16) -> u16 {
    let j = i.wrapping_add(1);
    if j >= n {
        0
    } else {
        j
    }
}

/// Picks a usable listener by hash, preferring one bound to this CPU when
/// `prefer_cpu` is set: the scan starts at the hashed index and wraps once.
#[inline]
pub fn by_hash<G: Group>(group: &G, hash: u32, prefer_cpu: bool) -> Option<G::Sk> {
    let n = group.num_socks();
    let mut first = None;
    let mut i = reciprocal_scale(hash, n);
    for _ in 0..n {
        if let Some(sk) = group.get(i).filter(|&sk| group.usable(sk)) {
            if !prefer_cpu || group.on_this_cpu(sk) {
                return Some(sk);
            }
            first = first.or(Some(sk));
        }
        i = next(i, n);
    }
    first
}

/// How many slots [`with_room`] looks at from the hashed one on
/// (`REUSEPORT_MIGRATE_PROBES` in C), besides the rehashed one.
///
/// It bounds what a connection costs when every queue is full: without a
/// bound, `inet_csk_listen_stop()` of a listener with N children into a
/// group of M full listeners reads N x M slots with BH disabled. A group of
/// up to this many listeners is still searched whole.
pub const PROBES: u16 = 8;

/// Moves `first`, the hash choice for `hash`, off a full accept queue.
///
/// `first` is kept when it has room, so with no full queue the choice is the
/// upstream one. Otherwise a listener with room among a second hash-derived
/// candidate, so that connections that collided on `first` spread out, and
/// the [`PROBES`] slots from the hashed one on; with `prefer_cpu`, one bound
/// to this CPU before any other, as [`by_hash`] prefers. When none of those
/// has room, `first` (nothing is dropped that upstream would keep). At most
/// `PROBES + 1` slots are read.
#[inline]
pub fn with_room<G: Group>(group: &G, hash: u32, first: G::Sk, prefer_cpu: bool) -> G::Sk {
    if group.has_room(first) {
        return first;
    }
    let n = group.num_socks();
    let mut other_cpu = None;
    let mut i = reciprocal_scale(hash.wrapping_mul(REHASH), n);
    let mut next_probe = reciprocal_scale(hash, n);
    // An exclusive range: a `RangeInclusive` keeps an exhaustion flag that
    // costs a compare on every round. PROBES.min(n) + 1 <= 9.
    for _ in 0..PROBES.min(n) + 1 {
        if let Some(sk) = group
            .get(i)
            .filter(|&sk| group.usable(sk) && group.has_room(sk))
        {
            if !prefer_cpu || group.on_this_cpu(sk) {
                return sk;
            }
            other_cpu = other_cpu.or(Some(sk));
        }
        i = next_probe;
        next_probe = next(next_probe, n);
    }
    other_cpu.unwrap_or(first)
}
