// SPDX-License-Identifier: GPL-2.0
//! Selftests for TCP SO_REUSEPORT listener migration: `tcp_migrate_req`
//! and `sk_reuseport/migrate` BPF programs.
//!
//! Each test runs in a child process of its own (this binary re-executed
//! with a hidden `--run-child NAME`), which first moves into a fresh
//! network namespace. The parent enforces a hard time limit per child and
//! prints one TAP-style line per test, then `# N passed, M failed`.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use migrate_tests::harness::{self, Deadline, Family, Kernel, Stop};
use migrate_tests::scenarios::{self, Lost, Trigger};

/// A test child still running after this long is killed and reported.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "TCP SO_REUSEPORT listener migration selftests (run as root)")]
struct Cli {
    /// Print the names of the selected tests and exit.
    #[arg(long)]
    list: bool,
    /// Run only tests whose name contains this string.
    filter: Option<String>,
    /// The kernel under test: tests of behaviour the series adds beyond
    /// upstream expect upstream's behaviour on `base`.
    #[arg(long, value_enum, default_value_t = Kernel::Patched)]
    kernel: Kernel,
    /// The kernel carries only the net queue (the fixes): judged as
    /// patched, without net-next's per-reason counters and tracepoints.
    #[arg(long)]
    net_queue: bool,
    /// Run the tests whose name, past the family, starts with PREFIX for
    /// IPv4 only, and report their IPv6 twins as skipped (repeatable).
    /// The debug flavour's run uses it for the park tests, whose waits
    /// are a grace each: their objects' lifetimes are the same code for
    /// both families, which the plain kernels run in full.
    #[arg(long, value_name = "PREFIX")]
    ipv4_only: Vec<String>,
    /// Internal: run one test in this process (in a new network namespace).
    #[arg(long, hide = true, value_name = "NAME")]
    run_child: Option<String>,
}

/// A test run once per address family, named `ipv4_NAME` and `ipv6_NAME`.
type Scenario = fn(Family, Kernel) -> Result<()>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("close_children", |f, _| {
        scenarios::queued_children(f, Stop::Close)
    }),
    ("shutdown_children", |f, _| {
        scenarios::queued_children(f, Stop::Shutdown)
    }),
    ("reqsk_ack", |f, _| scenarios::in_flight(f, Trigger::Ack)),
    ("reqsk_timer", |f, _| {
        scenarios::in_flight(f, Trigger::Timer)
    }),
    ("tfo", |f, _| scenarios::fastopen(f)),
    ("sysctl_off_resets", |f, k| {
        scenarios::lost_children(f, k, Lost::SysctlOff)
    }),
    ("no_target_resets", |f, k| {
        scenarios::lost_children(f, k, Lost::NoTarget)
    }),
    ("incoming_cpu0_children", |f, _| {
        scenarios::incoming_cpu_children(f, 0)
    }),
    ("incoming_cpu1_children", |f, _| {
        scenarios::incoming_cpu_children(f, 1)
    }),
    ("bpf_select", |f, _| scenarios::bpf_select(f)),
    ("bpf_drop", scenarios::bpf_drop),
    ("closed_during_ack", scenarios::closed_during_ack),
    ("closed_during_ack_bpf", scenarios::closed_during_ack_bpf),
    (
        "child_of_closing_listener",
        scenarios::child_of_closing_listener,
    ),
    (
        "child_of_orphaned_listener",
        scenarios::child_of_orphaned_listener,
    ),
    ("tfo_closed_before_queued", |f, k| {
        scenarios::closed_before_queued(f, k, scenarios::Path::FastOpen)
    }),
    ("syncookie_closed_before_queued", |f, k| {
        scenarios::closed_before_queued(f, k, scenarios::Path::Syncookie)
    }),
    ("isolated_from_other_netns", scenarios::other_netns),
    ("isolated_from_other_uid", scenarios::other_uid),
    ("isolated_from_other_device", scenarios::other_device),
    ("nomem_clone_at_close", |f, k| {
        scenarios::nomem_at_close(f, k, scenarios::Alloc::Clone)
    }),
    ("nomem_bpf_skb_at_close", |f, k| {
        scenarios::nomem_at_close(f, k, scenarios::Alloc::BpfSkb)
    }),
    ("syncookie_nomem_at_close", |f, k| {
        scenarios::nomem_at_close(f, k, scenarios::Alloc::CookieClone)
    }),
    ("nomem_clone_at_final_ack", |f, k| {
        scenarios::nomem_in_flight(f, k, scenarios::Trigger::Ack)
    }),
    ("nomem_clone_in_synack_timer", |f, k| {
        scenarios::nomem_in_flight(f, k, scenarios::Trigger::Timer)
    }),
    (
        "target_closed_during_ack",
        scenarios::target_closed_during_ack,
    ),
    (
        "target_closed_during_ack_third",
        scenarios::target_closed_during_ack_third,
    ),
    (
        "target_closed_during_close",
        scenarios::target_closed_during_close,
    ),
    ("disabled_after_close", scenarios::disabled_after_close),
    ("expired_in_migration", scenarios::expired_in_migration),
    ("bpf_to_full_target", scenarios::bpf_to_full_target),
    (
        "stalled_target_children",
        scenarios::stalled_target_children,
    ),
    (
        "stalled_target_reqsk_ack",
        scenarios::stalled_target_reqsk_ack,
    ),
    ("stop_start_gap0", |f, k| scenarios::stop_start(f, k, 0)),
    ("stop_start_gap50", |f, k| scenarios::stop_start(f, k, 50)),
    ("stop_start_gap500", |f, k| scenarios::stop_start(f, k, 500)),
    ("stop_start_expired", scenarios::stop_start_expired),
    ("stop_start_strangers", scenarios::stop_start_strangers),
    ("stop_start_owner", scenarios::stop_start_owner),
    ("park_expiry_vs_join", scenarios::park_expiry_vs_join),
    ("park_joiner_closes_before_adoption", |f, k| {
        scenarios::park_joiner_closes_before_adoption(f, k, true)
    }),
    ("park_joiner_closes_before_adoption_no_l2", |f, k| {
        scenarios::park_joiner_closes_before_adoption(f, k, false)
    }),
    ("park_netns_exit", scenarios::park_netns_exit),
    (
        "park_takes_a_closing_listeners_children",
        scenarios::park_takes_a_closing_listeners_children,
    ),
    ("park_destroyed_by_ss_k", scenarios::park_destroyed_by_ss_k),
    (
        "park_destroyed_by_bpf_iter",
        scenarios::park_destroyed_by_bpf_iter,
    ),
    ("park_netns_teardown", scenarios::park_netns_teardown),
    ("park_sysctl_lowered", scenarios::park_sysctl_lowered),
    ("park_sysctl_zero", scenarios::park_sysctl_zero),
    ("park_evicted_by_no_reuseport", |f, k| {
        scenarios::park_evicted(f, k, scenarios::Stranger::NoReuseport)
    }),
    ("park_evicted_by_other_uid", |f, k| {
        scenarios::park_evicted(f, k, scenarios::Stranger::OtherUid)
    }),
    ("park_evicted_by_other_addr", |f, k| {
        scenarios::park_evicted(f, k, scenarios::Stranger::OtherAddr)
    }),
    (
        "park_kept_by_disjoint_addr",
        scenarios::park_kept_by_disjoint_addr,
    ),
    ("park_evicted_by_other_dev", |f, k| {
        scenarios::park_evicted(f, k, scenarios::Stranger::OtherDev)
    }),
    ("park_evicted_by_v6only", |f, k| {
        scenarios::park_evicted(f, k, scenarios::Stranger::V6only)
    }),
    (
        "park_joiner_bind_evicts_nothing",
        scenarios::park_joiner_bind_evicts_nothing,
    ),
    (
        "park_ephemeral_bind_skips",
        scenarios::park_ephemeral_bind_skips,
    ),
];

/// A test with no address family, run once under its own name.
type Single = fn(Kernel) -> Result<()>;

const SINGLES: &[(&str, Single)] = &[
    ("sysctl_rejects_unknown", scenarios::sysctl_rejects_unknown),
    ("grace_rejects_unknown", scenarios::grace_rejects_unknown),
    ("park_bound_per_netns", scenarios::park_bound_per_netns),
    ("park_bound_max_orphans", scenarios::park_bound_max_orphans),
    ("park_many_namespaces", scenarios::park_many_namespaces),
];

#[derive(Clone, Copy)]
enum Run {
    PerFamily(Family, Scenario),
    Once(Single),
}

struct Test {
    name: String,
    run: Run,
}

fn all_tests() -> Vec<Test> {
    let mut v = Vec::new();
    for family in [Family::V4, Family::V6] {
        for (suffix, run) in SCENARIOS {
            v.push(Test {
                name: format!("{}_{suffix}", family.prefix()),
                run: Run::PerFamily(family, *run),
            });
        }
    }
    for (name, run) in SINGLES {
        v.push(Test {
            name: name.to_string(),
            run: Run::Once(*run),
        });
    }
    v
}

/// What a child reports on its stdout, one line.
const PASS: &str = "PASS";
const SKIP: &str = "SKIP ";
const FAIL: &str = "FAIL ";

fn run_child(name: &str, kernel: Kernel) -> ExitCode {
    let Some(test) = all_tests().into_iter().find(|t| t.name == name) else {
        println!("{FAIL}no test named {name}");
        return ExitCode::FAILURE;
    };
    // Keep libbpf quiet unless something is wrong.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, |_, msg| {
        eprint!("libbpf: {msg}")
    })));
    let outcome = std::panic::catch_unwind(|| -> Result<Option<String>> {
        harness::enter_fresh_netns()?;
        match test.run {
            Run::PerFamily(Family::V6, _)
                if !std::path::Path::new("/proc/sys/net/ipv6").exists() =>
            {
                return Ok(Some("kernel without IPv6".into()));
            }
            Run::PerFamily(family, run) => run(family, kernel)?,
            Run::Once(run) => run(kernel)?,
        }
        Ok(None)
    });
    match outcome {
        Ok(Ok(None)) => println!("{PASS}"),
        Ok(Ok(Some(why))) => println!("{SKIP}{why}"),
        Ok(Err(e)) => match e.downcast_ref::<harness::Skip>() {
            Some(why) => println!("{SKIP}{why}"),
            None => println!("{FAIL}{}", format!("{e:#}").replace('\n', " ")),
        },
        Err(_) => println!("{FAIL}panicked (see stderr)"),
    }
    ExitCode::SUCCESS
}

enum Verdict {
    /// passed, with the notes the test printed (`harness::note`)
    Pass(String),
    Skip(String),
    Fail(String),
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn run_in_child(name: &str, kernel: Kernel, net_queue: bool) -> Result<Verdict> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut child = Command::new(exe);
    child.args(["--run-child", name, "--kernel", kernel.name()]);
    if net_queue {
        child.arg("--net-queue");
    }
    let mut child = child
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn test child")?;
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let deadline = Deadline::after(harness::scaled(CHILD_LIMIT));
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if deadline.expired() {
            // our own child, by its handle
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let last_err = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let Some(status) = status else {
        return Ok(Verdict::Fail(format!(
            "killed after {}s hard limit",
            harness::scaled(CHILD_LIMIT).as_secs()
        )));
    };
    let line = out
        .lines()
        .find(|l| l.starts_with(PASS) || l.starts_with(SKIP) || l.starts_with(FAIL));
    Ok(match line {
        Some(l) if l == PASS && status.success() => Verdict::Pass(
            out.lines()
                .filter_map(|l| l.strip_prefix(harness::NOTE))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(l) if l.starts_with(SKIP) => Verdict::Skip(l[SKIP.len()..].to_string()),
        Some(l) if l.starts_with(FAIL) => {
            let mut why = l[FAIL.len()..].to_string();
            if !last_err.is_empty() {
                why.push_str(&format!(" [stderr: {last_err}]"));
            }
            Verdict::Fail(why)
        }
        _ => Verdict::Fail(format!(
            "child exited with {status} without a verdict [stderr: {last_err}]"
        )),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.net_queue {
        harness::set_net_queue_only();
    }
    if let Some(name) = cli.run_child {
        return run_child(&name, cli.kernel);
    }
    let tests: Vec<Test> = all_tests()
        .into_iter()
        .filter(|t| cli.filter.as_deref().is_none_or(|f| t.name.contains(f)))
        .collect();
    if tests.is_empty() {
        eprintln!(
            "no test name contains {:?}; see --list",
            cli.filter.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    if cli.list {
        for t in &tests {
            println!("{}", t.name);
        }
        return ExitCode::SUCCESS;
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    // Each test's wall time, for the summary of the slowest: what the CI
    // budget goes to, on the debug flavour above all.
    let mut took: Vec<(Duration, &str)> = Vec::with_capacity(tests.len());
    for t in &tests {
        let start = Instant::now();
        let v4_only = t
            .name
            .strip_prefix("ipv6_")
            .and_then(|rest| cli.ipv4_only.iter().find(|p| rest.starts_with(p.as_str())));
        let verdict = match v4_only {
            Some(p) => Verdict::Skip(format!("IPv4 only in this run (--ipv4-only {p})")),
            None => run_in_child(&t.name, cli.kernel, cli.net_queue)
                .unwrap_or_else(|e| Verdict::Fail(format!("{e:#}"))),
        };
        took.push((start.elapsed(), &t.name));
        match verdict {
            Verdict::Pass(notes) if notes.is_empty() => {
                passed += 1;
                println!("ok {}", t.name);
            }
            Verdict::Pass(notes) => {
                passed += 1;
                println!("ok {} # {notes}", t.name);
            }
            Verdict::Skip(why) => {
                skipped += 1;
                println!("ok {} # SKIP {why}", t.name);
            }
            Verdict::Fail(why) => {
                failed += 1;
                println!("not ok {} - {why}", t.name);
            }
        }
    }
    took.sort_unstable_by(|a, b| b.cmp(a));
    let slowest: Vec<String> = took
        .iter()
        .take(12)
        .map(|(d, name)| format!("{name} {:.1} s", d.as_secs_f64()))
        .collect();
    let total: Duration = took.iter().map(|(d, _)| *d).sum();
    println!(
        "# {:.0} s in all; slowest: {}",
        total.as_secs_f64(),
        slowest.join(", ")
    );
    if skipped > 0 {
        println!("# {passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("# {passed} passed, {failed} failed");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
