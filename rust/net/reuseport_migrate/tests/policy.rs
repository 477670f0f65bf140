// SPDX-License-Identifier: GPL-2.0

//! Host tests of the migration policy: the same `policy.rs` the kernel runs.

use proptest::prelude::*;
use reuseport_migrate_policy::policy::{
    by_hash, choose, quick, reciprocal_scale, with_room, Bpf, Choice, Failure, Group, Mode, Target,
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

impl Group for Model {
    fn num_socks(&self) -> u16 {
        self.0.len() as u16
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

fn verdict() -> impl Strategy<Value = Bpf<u32>> {
    prop_oneof![
        Just(Bpf::None),
        Just(Bpf::Pass),
        Just(Bpf::Drop),
        any::<u32>().prop_map(Bpf::Selected)
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
            Ok(Target::Index(if mode == Mode::LoadAware { with_room(&g, hash, i) } else { i }))
        };
        let want = match bpf {
            Bpf::Selected(s) => Ok(Target::Bpf(s)),
            Bpf::Drop => Err(Failure::BpfCancelled),
            Bpf::None if mode == Mode::Off => Err(Failure::Disabled),
            Bpf::None | Bpf::Pass => by_hash(),
        };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn never_a_full_queue_while_another_has_room(g in loaded_model(), hash in any::<u32>(),
                                                  cpu in any::<bool>()) {
        let c = Choice { hash, mode: Mode::LoadAware, prefer_cpu: cpu, bpf: Bpf::<u32>::None };
        let any_room = (0..g.num_socks()).any(|i| g.takes(i));
        match choose(&g, c) {
            Ok(Target::Index(i)) => {
                prop_assert!(g.usable(i));
                prop_assert!(g.takes(i) || !any_room);
                // Upstream's choice is kept when it has room, and when no
                // queue has: load-awareness only ever moves a connection
                // that upstream would put in a full queue.
                let up = oracle(&g, hash, cpu).unwrap();
                if g.takes(up) || !any_room {
                    prop_assert_eq!(i, up);
                }
            }
            other => prop_assert_eq!(other, Err(Failure::NoListener)),
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
        let c = Choice { hash, mode: Mode::Hash, prefer_cpu: cpu, bpf: Bpf::<u32>::None };
        let want = oracle(&g, hash, cpu).map(Target::Index).ok_or(Failure::NoListener);
        prop_assert_eq!(choose(&g, c), want);
    }
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
                bpf: Bpf::<u32>::None,
            };
            match choose(&g, c) {
                Ok(Target::Index(i)) => hits[usize::from(i)] += 1,
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
        assert!(quick(&g, &c(mode, Bpf::Selected(9u32))).is_some());
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
        bpf: Bpf::<u32>::None,
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
