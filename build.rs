//! Records the git revision for `turnd --version` and `turnd_build_info`, and builds the XDP
//! program (bpf/turnd_xdp.c) with clang when the `xdp` feature is on and clang is present.
//! Without clang the build goes on and turnd says it was built without XDP.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TURND_GIT_REVISION={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo::rustc-check-cfg=cfg(turnd_xdp)");
    let xdp = if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        "built without XDP: the xdp feature was off"
    } else if build_xdp() {
        "XDP"
    } else {
        "built without XDP: clang was not found"
    };
    println!("cargo:rustc-env=TURND_XDP_BUILD={xdp}");
}

/// Compiles the XDP program into OUT_DIR and sets `cfg(turnd_xdp)`; false when there is no
/// clang.
fn build_xdp() -> bool {
    println!("cargo:rerun-if-changed=bpf/turnd_xdp.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("turnd_xdp.o");
    // The multiarch include directory holds asm/types.h, which the UAPI headers include.
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", "bpf/turnd_xdp.c", "-o"])
        .arg(&out)
        .output();
    match result {
        Ok(o) if o.status.success() => {
            println!("cargo:rustc-cfg=turnd_xdp");
            true
        }
        Ok(o) => {
            // A program that does not compile is a bug here, not a missing tool.
            let err = String::from_utf8_lossy(&o.stderr);
            panic!("clang could not build bpf/turnd_xdp.c:\n{err}");
        }
        Err(e) => {
            println!("cargo:warning=building without the XDP fast path: cannot run {clang} ({e})");
            false
        }
    }
}
