// SPDX-License-Identifier: GPL-2.0
//! What tcp_migrate_req accepts: the sysctl's ABI, which the series widens
//! by one value and must keep strict otherwise.

use anyhow::{Context, Result};

use crate::harness::{read_sysctl, set_sysctl, write_sysctl, Checks, Kernel, MIGRATE_REQ};

/// What one write(2) to the sysctl answered: "ok", "EINVAL" or the error.
pub(super) fn write_outcome(name: &str, value: &str) -> String {
    match write_sysctl(name, value) {
        Ok(()) => "ok".into(),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => "EINVAL".into(),
        Err(e) => e.to_string(),
    }
}

/// Writes `value` to tcp_migrate_req, checks the answer is `want` ("ok" or
/// "EINVAL") and that the sysctl then holds `value`, or still `old` if the
/// write was refused. Returns what it holds.
pub(super) fn try_migrate_req(
    ck: &mut Checks,
    old: &str,
    value: &str,
    want: &str,
) -> Result<String> {
    ck.eq(
        &format!("writing {value:?} over {old}"),
        write_outcome(MIGRATE_REQ, value).as_str(),
        want,
    );
    let now = read_sysctl(MIGRATE_REQ)?;
    let expect = if want == "ok" { value } else { old };
    ck.eq(
        &format!("tcp_migrate_req after writing {value:?} over {old}"),
        now.as_str(),
        expect,
    );
    Ok(now)
}

/// tcp_migrate_req takes 0 and 1 on both kernels, 2 only on the patched
/// one; anything else is refused with EINVAL and leaves the value as it was.
pub fn sysctl_rejects_unknown(kernel: Kernel) -> Result<()> {
    let mut ck = Checks::new();
    let two = match kernel {
        Kernel::Patched => "ok",
        Kernel::Base => "EINVAL",
    };
    let mut old = read_sysctl(MIGRATE_REQ)?;
    for (value, want) in [("1", "ok"), ("0", "ok"), ("2", two), ("1", "ok")] {
        old = try_migrate_req(&mut ck, &old, value, want)?;
    }
    ck.gate("known values")?;

    let kept: &[&str] = match kernel {
        Kernel::Patched => &["0", "1", "2"],
        Kernel::Base => &["0", "1"],
    };
    for old in kept {
        set_sysctl(MIGRATE_REQ, old).context("set the value to keep")?;
        let mut bad = vec!["3", "255", "-1", "abc"];
        if kernel == Kernel::Base {
            bad.push("2");
        }
        for value in bad {
            try_migrate_req(&mut ck, old, value, "EINVAL")?;
        }
    }
    ck.finish()
}
