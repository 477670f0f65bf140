// SPDX-License-Identifier: GPL-2.0

//! Host tests of the migration policy: the same `policy.rs` the kernel runs.

use proptest::prelude::*;
use reuseport_migrate_policy::policy::{
    by_hash, choose, quick, reciprocal_scale, with_room, Bpf, Choice, Failure, Group, Mode, PROBES,
    REHASH,
};

/// A model group: one entry per listener, `(usable, on_this_cpu)`, and the
/// free places in each accept queue (all room unless a test says otherwise).
#[derive(Debug, Clone)]
struct Model(Vec<(bool, bool)>, Vec<u32>);

impl Model {
    fn plain(listeners: Vec<(bool, bool)>) -> Self {
        let n = listeners.len();
        Model(listeners, vec![1; n])
    }

    /// Whether `i` is usable and has room.
    fn takes(&self, i: u16) -> bool {
        self.0[usize::from(i)].0 && self.1[usize::from(i)] > 0
    }
}

/// A listener of the model is its index.
impl Group for Model {
    type Sk = u16;
    fn num_socks(&self) -> u16 {
        self.0.len() as u16
    }
    fn get(&self, i: u16) -> Option<u16> {
        (i < self.num_socks()).then_some(i)
    }
    fn usable(&self, i: u16) -> bool {
        self.0[usize::from(i)].0
    }
    fn on_this_cpu(&self, i: u16) -> bool {
        self.0[usize::from(i)].1
    }
    fn has_room(&self, i: u16) -> bool {
        self.1[usize::from(i)] > 0
    }
}

/// Upstream's C `reuseport_select_sock_by_hash()`, written as a plain loop
/// over the model, as the oracle.
fn oracle(g: &Model, hash: u32, prefer_cpu: bool) -> Option<u16> {
    let n = g.0.len();
    if n == 0 {
        return None;
    }
    let start = ((u64::from(hash) * n as u64) >> 32) as usize;
    let mut first = None;
    for k in 0..n {
        let i = (start + k) % n;
        let (usable, cpu) = g.0[i];
        if usable {
            if !prefer_cpu || cpu {
                return Some(i as u16);
            }
            if first.is_none() {
                first = Some(i as u16);
            }
        }
    }
    first
}

fn model() -> impl Strategy<Value = Model> {
    prop::collection::vec((any::<bool>(), any::<bool>()), 0..70).prop_map(Model::plain)
}

/// Groups with loads: each queue full (0) or with 1..3 free places.
fn loaded_model() -> impl Strategy<Value = Model> {
    prop::collection::vec((any::<bool>(), any::<bool>(), 0u32..4), 1..70).prop_map(|v| {
        let rooms = v.iter().map(|&(_, _, r)| r).collect();
        Model(v.into_iter().map(|(u, c, _)| (u, c)).collect(), rooms)
    })
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Off), Just(Mode::Hash), Just(Mode::LoadAware)]
}

fn verdict() -> impl Strategy<Value = Bpf<u16>> {
    prop_oneof![
        Just(Bpf::None),
        Just(Bpf::Pass),
        Just(Bpf::Drop),
        any::<u16>().prop_map(Bpf::Selected)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn scale_stays_in_range(hash in any::<u32>(), n in 1u16..) {
        prop_assert!(reciprocal_scale(hash, n) < n);
    }

    #[test]
    fn hash_choice_matches_upstream(g in model(), hash in any::<u32>(), cpu in any::<bool>()) {
        prop_assert_eq!(by_hash(&g, hash, cpu), oracle(&g, hash, cpu));
    }

    #[test]
    fn only_live_usable_listeners(g in model(), hash in any::<u32>(), cpu in any::<bool>()) {
        match by_hash(&g, hash, cpu) {
            Some(i) => {
                prop_assert!(i < g.num_socks());
                prop_assert!(g.usable(i));
            }
            None => prop_assert!(g.0.iter().all(|&(usable, _)| !usable)),
        }
    }

    #[test]
    fn deterministic_for_a_hash(g in model(), hash in any::<u32>(), cpu in any::<bool>()) {
        prop_assert_eq!(by_hash(&g, hash, cpu), by_hash(&g, hash, cpu));
    }

    #[test]
    fn cpu_preference_is_honoured(g in model(), hash in any::<u32>()) {
        let any_on_cpu = g.0.iter().any(|&(usable, cpu)| usable && cpu);
        if let Some(i) = by_hash(&g, hash, true) {
            prop_assert_eq!(g.on_this_cpu(i), any_on_cpu);
        }
    }

    #[test]
    fn bpf_has_the_first_word(g in loaded_model(), hash in any::<u32>(), mode in mode(),
                              bpf in verdict(), cpu in any::<bool>()) {
        let got = choose(&g, Choice { hash, mode, prefer_cpu: cpu, bpf });
        let by_hash = || {
            let i = oracle(&g, hash, cpu).ok_or(Failure::NoListener)?;
            Ok(if mode == Mode::LoadAware { with_room(&g, hash, i, cpu) } else { i })
        };
        let want = match bpf {
            Bpf::Selected(s) => Ok(s),
            Bpf::Drop => Err(Failure::BpfCancelled),
            Bpf::None if mode == Mode::Off => Err(Failure::Disabled),
            Bpf::None | Bpf::Pass => by_hash(),
        };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn never_a_full_queue_while_a_probed_one_has_room(g in loaded_model(), hash in any::<u32>(),
                                                       cpu in any::<bool>()) {
        let c = Choice { hash, mode: Mode::LoadAware, prefer_cpu: cpu, bpf: Bpf::<u16>::None };
        let window = probed(&g, hash);
        let room = window.iter().any(|&i| g.takes(i));
        let room_here = window.iter().any(|&i| g.takes(i) && g.on_this_cpu(i));
        let any_room = (0..g.num_socks()).any(|i| g.takes(i));
        match choose(&g, c) {
            Ok(i) => {
                prop_assert!(g.usable(i));
                let up = oracle(&g, hash, cpu).unwrap();
                prop_assert!(g.takes(i) || !(room || g.takes(up)));
                // A group no larger than the probes is searched whole.
                if g.num_socks() <= PROBES {
                    prop_assert!(g.takes(i) || !any_room);
                }
                // This CPU's listeners first, as by_hash() prefers them.
                if cpu && !g.takes(up) && room_here {
                    prop_assert!(g.on_this_cpu(i));
                }
                // Upstream's choice is kept when it has room, and when no
                // probed queue has: load-awareness only ever moves a
                // connection that upstream would put in a full queue.
                if g.takes(up) || !room {
                    prop_assert_eq!(i, up);
                }
            }
            other => prop_assert_eq!(other, Err(Failure::NoListener)),
        }
    }

    #[test]
    fn with_room_reads_a_bounded_number_of_slots(g in loaded_model(), hash in any::<u32>(),
                                                 cpu in any::<bool>()) {
        if let Some(first) = oracle(&g, hash, cpu) {
            let counted = Counted(&g, std::cell::Cell::new(0));
            with_room(&counted, hash, first, cpu);
            prop_assert!(counted.1.get() <= u32::from(PROBES) + 1);
        }
    }

    #[test]
    fn quick_answers_as_choose_does(g in loaded_model(), hash in any::<u32>(), mode in mode(),
                                    bpf in verdict(), cpu in any::<bool>()) {
        let c = Choice { hash, mode, prefer_cpu: cpu, bpf };
        if let Some(got) = quick(&g, &c) {
            prop_assert_eq!(got, choose(&g, c));
        }
    }

    #[test]
    fn hash_mode_ignores_load(g in loaded_model(), hash in any::<u32>(), cpu in any::<bool>()) {
        let c = Choice { hash, mode: Mode::Hash, prefer_cpu: cpu, bpf: Bpf::<u16>::None };
        let want = oracle(&g, hash, cpu).ok_or(Failure::NoListener);
        prop_assert_eq!(choose(&g, c), want);
    }
}

/// The slots with_room() looks at for `hash`: the rehashed one, then up to
/// PROBES from the hashed one on.
fn probed(g: &Model, hash: u32) -> Vec<u16> {
    let n = g.num_socks();
    let start = reciprocal_scale(hash, n);
    let mut v = vec![reciprocal_scale(hash.wrapping_mul(REHASH), n)];
    v.extend((0..PROBES.min(n)).map(|k| (start + k) % n));
    v
}

/// A model that counts the slots read.
struct Counted<'a>(&'a Model, std::cell::Cell<u32>);

impl Group for Counted<'_> {
    type Sk = u16;
    fn num_socks(&self) -> u16 {
        self.0.num_socks()
    }
    fn get(&self, i: u16) -> Option<u16> {
        self.1.set(self.1.get() + 1);
        self.0.get(i)
    }
    fn usable(&self, i: u16) -> bool {
        self.0.usable(i)
    }
    fn on_this_cpu(&self, i: u16) -> bool {
        self.0.on_this_cpu(i)
    }
    fn has_room(&self, i: u16) -> bool {
        self.0.has_room(i)
    }
}

/// Every queue full in a group of 1,000: the choice reads PROBES + 1 slots
/// and falls back to the hash choice; one listener with room among them is
/// found.
#[test]
fn a_saturated_group_costs_a_bounded_scan() {
    let mut g = Model::plain(vec![(true, false); 1000]);
    g.1 = vec![0; 1000];
    let hash = u32::MAX / 3;
    let first = by_hash(&g, hash, false).unwrap();
    let counted = Counted(&g, std::cell::Cell::new(0));
    assert_eq!(with_room(&counted, hash, first, false), first);
    assert_eq!(counted.1.get(), u32::from(PROBES) + 1);
    let last = (reciprocal_scale(hash, 1000) + PROBES - 1) % 1000;
    g.1[usize::from(last)] = 1;
    assert_eq!(with_room(&g, hash, first, false), last);
}

/// With SO_INCOMING_CPU, a full listener's connections go to a listener of
/// this CPU with room before one of another CPU.
#[test]
fn load_aware_keeps_to_this_cpu() {
    // 0: this CPU, full (the hash choice); 1: other CPU, room; 2: this CPU, room.
    let mut g = Model::plain(vec![(true, true), (true, false), (true, true)]);
    g.1[0] = 0;
    for hash in [0, 1, 1000, u32::MAX / 4] {
        let first = by_hash(&g, hash, true).unwrap();
        if first == 0 {
            assert_eq!(with_room(&g, hash, first, true), 2);
        }
    }
    g.1[2] = 0;
    assert_eq!(with_room(&g, 0, 0, true), 1);
}

#[test]
fn sysctl_values() {
    assert_eq!(Mode::from_sysctl(0), Mode::Off);
    assert_eq!(Mode::from_sysctl(1), Mode::Hash);
    assert_eq!(Mode::from_sysctl(2), Mode::LoadAware);
}

/// One full listener of three: the other two share its connections, neither
/// taking everything (the second hash candidate spreads them).
#[test]
fn full_listener_load_spreads() {
    for full in 0..3u16 {
        let mut g = Model::plain(vec![(true, false); 3]);
        g.1[usize::from(full)] = 0;
        let mut hits = [0u32; 3];
        let samples = 1u32 << 16;
        for k in 0..samples {
            let c = Choice {
                hash: k.wrapping_mul(65537),
                mode: Mode::LoadAware,
                prefer_cpu: false,
                bpf: Bpf::<u16>::None,
            };
            match choose(&g, c) {
                Ok(i) => hits[usize::from(i)] += 1,
                other => panic!("no target: {other:?}"),
            }
        }
        assert_eq!(
            hits[usize::from(full)],
            0,
            "full listener {full} got {hits:?}"
        );
        for (i, &h) in hits.iter().enumerate() {
            if i != usize::from(full) {
                assert!(
                    h > samples * 2 / 5,
                    "listener {i} got {h} of {samples}: {hits:?}"
                );
            }
        }
    }
}

/// The common cases are quick: a verdict, and a hashed listener that is
/// usable (with room, in load-aware mode) when no CPU is preferred.
#[test]
fn quick_covers_the_common_cases() {
    let mut g = Model::plain(vec![(true, false); 4]);
    let c = |mode, bpf| Choice {
        hash: u32::MAX / 2,
        mode,
        prefer_cpu: false,
        bpf,
    };
    for mode in [Mode::Off, Mode::Hash, Mode::LoadAware] {
        assert!(quick(&g, &c(mode, Bpf::Selected(9u16))).is_some());
        assert!(quick(&g, &c(mode, Bpf::Drop)).is_some());
        assert!(quick(&g, &c(mode, Bpf::Pass)).is_some());
    }
    assert!(quick(&g, &c(Mode::Hash, Bpf::None)).is_some());
    assert!(quick(&g, &c(Mode::LoadAware, Bpf::None)).is_some());
    // The hashed listener: full, it needs the scan only when load matters;
    // unusable, always.
    let i = usize::from(reciprocal_scale(u32::MAX / 2, 4));
    g.1[i] = 0;
    assert!(quick(&g, &c(Mode::Hash, Bpf::None)).is_some());
    assert!(quick(&g, &c(Mode::LoadAware, Bpf::None)).is_none());
    g.0[i].0 = false;
    assert!(quick(&g, &c(Mode::Hash, Bpf::None)).is_none());
    let mut cpu = c(Mode::Hash, Bpf::None);
    cpu.prefer_cpu = true;
    assert!(quick(&Model::plain(vec![(true, true); 4]), &cpu).is_none());
    assert!(quick(&Model::plain(vec![]), &c(Mode::Hash, Bpf::None)).is_none());
}

#[test]
fn empty_group_has_no_target() {
    let g = Model::plain(vec![]);
    let c = Choice {
        hash: 7,
        mode: Mode::LoadAware,
        prefer_cpu: false,
        bpf: Bpf::<u16>::None,
    };
    assert_eq!(choose(&g, c), Err(Failure::NoListener));
}

/// With every listener usable, hashes spread evenly: each of n listeners
/// gets its share of 2^16 evenly spaced hashes within one.
#[test]
fn spreads_evenly() {
    for n in [1u16, 2, 3, 7, 8, 32, 100, 1000] {
        let g = Model::plain(vec![(true, false); usize::from(n)]);
        let mut hits = vec![0u32; usize::from(n)];
        let samples = 1u32 << 16;
        for k in 0..samples {
            let hash = k.wrapping_mul(65537);
            hits[usize::from(by_hash(&g, hash, false).unwrap())] += 1;
        }
        let share = samples / u32::from(n);
        for (i, &h) in hits.iter().enumerate() {
            assert!(
                h.abs_diff(share) <= 1,
                "n={n} listener {i}: {h} hits, want {share}±1"
            );
        }
    }
}

/// A dead-end scan: the only usable listener is found wherever the hash lands.
#[test]
fn finds_the_only_usable_listener() {
    for n in 1..=64u16 {
        for only in 0..n {
            let g = Model::plain((0..n).map(|i| (i == only, false)).collect());
            for hash in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX] {
                assert_eq!(by_hash(&g, hash, true), Some(only));
            }
        }
    }
}

/// A group whose slots change under the choice, as `__reuseport_detach_sock()`
/// moves listeners: every read of a slot yields another listener (a fresh
/// token), usable and with room as `seed` decides. The listener chosen must
/// be one that was read and found usable (and, with load awareness, with
/// room unless no read one had room): a choice that read its slot twice
/// could check one listener and return another.
struct Churning {
    n: u16,
    seed: u64,
    reads: std::cell::Cell<u32>,
    checked: std::cell::RefCell<Vec<(u32, bool, Option<bool>)>>,
}

impl Churning {
    fn bit(&self, token: u32, k: u32) -> bool {
        let x = (self.seed ^ u64::from(token).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (x >> (17 + k)) & 1 == 1
    }
    fn note(&self, token: u32, usable: Option<bool>, room: Option<bool>) {
        let mut c = self.checked.borrow_mut();
        match c.iter_mut().find(|e| e.0 == token) {
            Some(e) => {
                e.1 |= usable.unwrap_or(false);
                e.2 = room.or(e.2);
            }
            None => c.push((token, usable.unwrap_or(false), room)),
        }
    }
}

impl Group for Churning {
    type Sk = u32;
    fn num_socks(&self) -> u16 {
        self.n
    }
    fn get(&self, i: u16) -> Option<u32> {
        (i < self.n).then(|| {
            self.reads.set(self.reads.get() + 1);
            self.reads.get()
        })
    }
    fn usable(&self, t: u32) -> bool {
        let u = self.bit(t, 0);
        self.note(t, Some(u), None);
        u
    }
    fn on_this_cpu(&self, t: u32) -> bool {
        self.bit(t, 1)
    }
    fn has_room(&self, t: u32) -> bool {
        let r = self.bit(t, 2);
        self.note(t, None, Some(r));
        r
    }
}

proptest! {
    #[test]
    fn returns_the_listener_it_checked(n in 1u16..40, seed in any::<u64>(), hash in any::<u32>(),
                                       mode in mode(), cpu in any::<bool>()) {
        let g = Churning { n, seed, reads: 0.into(), checked: Vec::new().into() };
        let got = choose(&g, Choice { hash, mode, prefer_cpu: cpu, bpf: Bpf::None });
        let checked = g.checked.borrow();
        match got {
            Ok(t) => {
                let e = checked.iter().find(|e| e.0 == t);
                prop_assert!(e.is_some_and(|e| e.1), "returned {t}, never found usable");
                if mode == Mode::LoadAware && checked.iter().any(|e| e.1 && e.2 == Some(true)) {
                    prop_assert_eq!(e.and_then(|e| e.2), Some(true));
                }
            }
            Err(f) => {
                prop_assert!(mode == Mode::Off && f == Failure::Disabled
                    || f == Failure::NoListener && !checked.iter().any(|e| e.1));
            }
        }
    }
}
