// SPDX-License-Identifier: GPL-2.0
//! `storm summary`: one table for the storms of a run, from the JSON files
//! `storm run --json` wrote, so that a demo or a report ends with every
//! outcome side by side instead of scattered through its log.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The fields of a `--json` result that the table shows: what every
/// storm's JSON has, flattened into it, so that the writers and this
/// reader share one definition.
#[derive(Debug, Deserialize, Serialize)]
pub struct Row {
    #[serde(default)]
    pub label: Option<String>,
    /// The release of the kernel it ran on.
    #[serde(default)]
    pub uname: String,
    pub family: u8,
    pub sysctl: String,
    pub pattern: String,
    pub attempted: u64,
    pub served: u64,
    pub reset: u64,
    pub refused: u64,
    pub timeout: u64,
    pub other: u64,
    pub lost: u64,
    pub restarts: u64,
    pub migrate_req_success: Option<u64>,
}

impl Row {
    /// The release of the running kernel, for `uname`.
    pub fn running_kernel() -> String {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn read(path: &Path) -> Result<Row> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a `storm run --json` result (rerun the storm)",
                path.display()
            )
        })
    }

    fn name(&self) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => format!("{} (tcp_migrate_req={})", self.pattern, self.sysctl),
        }
    }
}

/// The rows as a Markdown table, in the order given.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| storm | kernel | family | attempted | served | lost | reset | refused | timeout+other | restarts | migrated |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let migrated = r
            .migrate_req_success
            .map_or_else(|| "n/a".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "| {} | {} | IPv{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name(),
            r.uname,
            r.family,
            r.attempted,
            r.served,
            r.lost,
            r.reset,
            r.refused,
            r.timeout + r.other,
            r.restarts,
            migrated
        );
    }
    out
}

/// `storm summary FILE...`.
pub fn run(files: &[PathBuf]) -> Result<String> {
    anyhow::ensure!(!files.is_empty(), "no result files given");
    let rows = files
        .iter()
        .map(|f| Row::read(f))
        .collect::<Result<Vec<_>>>()?;
    Ok(table(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: Option<&str>, lost: u64) -> Row {
        Row {
            label: label.map(str::to_string),
            uname: "6.12.117+".into(),
            family: 6,
            sysctl: "1".into(),
            pattern: "stop-start".into(),
            attempted: 10 + lost,
            served: 10,
            reset: lost,
            refused: 0,
            timeout: 0,
            other: 0,
            lost,
            restarts: 3,
            migrate_req_success: Some(8),
        }
    }

    #[test]
    fn one_line_per_storm_in_order() {
        let t = table(&[row(Some("patched, parked"), 0), row(None, 2)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            "| patched, parked | 6.12.117+ | IPv6 | 10 | 10 | 0 | 0 | 0 | 0 | 3 | 8 |"
        );
        assert!(lines[3].starts_with("| stop-start (tcp_migrate_req=1) |"));
        assert!(lines[3].contains("| 12 | 10 | 2 | 2 |"));
    }

    /// What `storm run --json` writes reads back as a row: the two
    /// structs name the same fields, and this holds them together.
    #[test]
    fn reads_what_a_storm_writes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: crate::RunArgs,
        }
        let args = Cli::parse_from(["storm", "--family", "6", "--label", "L", "--sysctl", "1"]).run;
        let tally = crate::client::Tally {
            attempted: 12,
            served: 9,
            reset: 1,
            refused: 1,
            timeout: 1,
            ..Default::default()
        };
        let outcome = crate::report::Outcome {
            args,
            migrate_req: Some(1),
            tally,
            restarts: 3,
            restart_failures: 0,
            worker_served: 9,
            worker_errors: 0,
            slowest_start: std::time::Duration::ZERO,
            migrate_success: Some(5),
            migrate_failure: Some(0),
            listen_overflows: None,
            listen_drops: None,
            tcp_ext_moved: Vec::new(),
            load_elapsed: std::time::Duration::ZERO,
            elapsed: std::time::Duration::ZERO,
            errors: Vec::new(),
        };
        let f = std::env::temp_dir().join(format!("storm-roundtrip-{}.json", std::process::id()));
        outcome.write_json(&f).unwrap();
        let r = Row::read(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        assert_eq!(r.label.as_deref(), Some("L"));
        assert_eq!(
            (r.family, r.sysctl.as_str(), r.pattern.as_str()),
            (6, "1", "rolling")
        );
        assert_eq!(
            (
                r.attempted,
                r.served,
                r.reset,
                r.refused,
                r.timeout,
                r.other,
                r.lost
            ),
            (12, 9, 1, 1, 1, 0, 3)
        );
        assert_eq!((r.restarts, r.migrate_req_success), (3, Some(5)));
        assert!(!r.uname.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_result_is_named() {
        let dir = std::env::temp_dir().join(format!("storm-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.json");
        std::fs::write(&f, "{}").unwrap();
        let e = run(std::slice::from_ref(&f)).unwrap_err();
        assert!(format!("{e:#}").contains("bad.json is not a `storm run --json` result"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
