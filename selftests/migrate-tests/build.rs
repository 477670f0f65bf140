// SPDX-License-Identifier: GPL-2.0
//! Compiles the BPF C sources in `bpf/` into BPF objects embedded in the
//! binary.  The guest kernel has no vmlinux BTF, so the programs only use
//! UAPI headers and libbpf's helper headers; no CO-RE.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &["gate", "hold_ack", "steer"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    // clang's BPF target has no multiarch include path of its own.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    // bpf_tracing.h reads kprobe arguments by the kernel's arch name.
    let target_arch = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    };

    for name in SOURCES {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg(format!("-D__TARGET_ARCH_{target_arch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang} (set BPF_CLANG): {e}"));
        assert!(status.success(), "{clang} failed on {src}");
    }
}
