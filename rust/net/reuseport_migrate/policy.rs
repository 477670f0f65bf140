// SPDX-License-Identifier: GPL-2.0

//! Choice of the listener that takes over a migrating request or child socket.
//!
//! Plain `core` Rust: no allocation, no locking, no indexing or arithmetic that
//! can panic. The kernel glue gives it a [`Group`] view of a `sock_reuseport`
//! read under RCU; host tests give it a model of one.
//!
//! Everything here is `#[inline]`, so that the kernel's two entry points,
//! [`quick`] for the common case and the out-of-line scan, make no calls
//! between these functions. (Measured in the guest, such calls and the
//! `Result` passed through memory cost about 65 instructions per migrated
//! child, 9% of the whole migration.)

/// A snapshot view of the live listeners of a reuseport group.
///
/// Listener `i` for `i < num_socks()` is live when the view is made; the choice never
/// asks about any other index.
pub trait Group {
    /// Number of live listeners (`num_socks`).
    fn num_socks(&self) -> u16;

    /// Whether listener `i` may take connections: upstream skips sockets in
    /// `TCP_ESTABLISHED` (connected UDP sockets share the array code).
    fn usable(&self, i: u16) -> bool;

    /// Whether listener `i` prefers the CPU running the choice
    /// (`SO_INCOMING_CPU`). Only asked when [`Choice::prefer_cpu`] is set.
    fn on_this_cpu(&self, i: u16) -> bool;

    /// Whether listener `i`'s accept queue has room: not
    /// `sk_acceptq_is_full()`. Only asked in [`Mode::LoadAware`].
    fn has_room(&self, i: u16) -> bool;
}

/// How the kernel chooses when no BPF program does: `net.ipv4.tcp_migrate_req`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0: no migration unless a BPF program asks for it.
    Off,
    /// 1: a live listener by hash, whatever its load (upstream).
    Hash,
    /// 2: as [`Mode::Hash`], but never a listener whose accept queue is full
    /// while another live listener has room.
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

/// The chosen target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<S> {
    /// The listener the BPF program selected.
    Bpf(S),
    /// The listener at this index of the group.
    Index(u16),
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
pub fn choose<G: Group, S: Copy>(group: &G, choice: Choice<S>) -> Result<Target<S>, Failure> {
    if let Some(decided) = by_verdict(&choice) {
        return decided;
    }
    let i = by_hash(group, choice.hash, choice.prefer_cpu).ok_or(Failure::NoListener)?;
    Ok(Target::Index(match choice.mode {
        Mode::LoadAware => with_room(group, choice.hash, i),
        Mode::Off | Mode::Hash => i,
    }))
}

/// [`choose`] for the common case, in O(1) and without a loop: the BPF
/// verdict, or the hashed listener when it is usable, no listener prefers a
/// CPU and, in [`Mode::LoadAware`], its queue has room. `None` when the
/// choice needs a scan of the group.
///
/// Whenever it answers, it answers as [`choose`] does. It lets the kernel
/// keep the scan out of line, so that the common case runs without the
/// registers the scan needs saved and restored.
#[inline]
pub fn quick<G: Group, S: Copy>(
    group: &G,
    choice: &Choice<S>,
) -> Option<Result<Target<S>, Failure>> {
    if let Some(decided) = by_verdict(choice) {
        return Some(decided);
    }
    let n = group.num_socks();
    if n == 0 || choice.prefer_cpu {
        return None;
    }
    let i = reciprocal_scale(choice.hash, n);
    let fits = group.usable(i) && (choice.mode != Mode::LoadAware || group.has_room(i));
    fits.then_some(Ok(Target::Index(i)))
}

/// The outcome when the BPF verdict or a disabled sysctl decides it, `None`
/// when the choice is the kernel's.
#[inline]
fn by_verdict<S: Copy>(choice: &Choice<S>) -> Option<Result<Target<S>, Failure>> {
    match choice.bpf {
        Bpf::Selected(sk) => Some(Ok(Target::Bpf(sk))),
        Bpf::Drop => Some(Err(Failure::BpfCancelled)),
        Bpf::None if choice.mode == Mode::Off => Some(Err(Failure::Disabled)),
        Bpf::None | Bpf::Pass => None,
    }
}

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
pub fn by_hash<G: Group>(group: &G, hash: u32, prefer_cpu: bool) -> Option<u16> {
    let n = group.num_socks();
    let start = reciprocal_scale(hash, n);
    let mut first = None;
    let mut i = start;
    for _ in 0..n {
        if group.usable(i) {
            if !prefer_cpu || group.on_this_cpu(i) {
                return Some(i);
            }
            first = first.or(Some(i));
        }
        i = next(i, n);
    }
    first
}

/// Moves the hash choice `first` off a full accept queue.
///
/// `first` is kept when it has room, so with no full queue the choice is the
/// upstream one. Otherwise a second hash-derived candidate, then the first
/// usable listener with room after `first`; when every queue is full, `first`
/// (nothing is dropped that upstream would keep). O(1) unless queues are
/// full, at most one pass over the group.
#[inline]
pub fn with_room<G: Group>(group: &G, hash: u32, first: u16) -> u16 {
    if group.has_room(first) {
        return first;
    }
    let n = group.num_socks();
    // Another mapping of the same hash, so connections that collided on
    // `first` spread instead of all landing on its neighbour.
    let second = reciprocal_scale(hash.wrapping_mul(0x9e37_79b9), n);
    if group.usable(second) && group.has_room(second) {
        return second;
    }
    let mut i = first;
    for _ in 1..n {
        i = next(i, n);
        if group.usable(i) && group.has_room(i) {
            return i;
        }
    }
    first
}
