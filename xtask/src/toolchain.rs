//! Makes sure the eBPF toolchain is present, idempotently: the nightly toolchain with rust-src,
//! and bpf-linker built against nightly rustc's own LLVM (a plain `cargo install bpf-linker`
//! looks for a system LLVM of the newest major and fails on most distributions).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Tools {
    cargo_bin: PathBuf,
}

impl Tools {
    /// PATH with the directory holding bpf-linker first.
    pub fn path_with_linker(&self) -> Result<std::ffi::OsString> {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.cargo_bin.clone()];
        dirs.extend(std::env::split_paths(&old));
        std::env::join_paths(dirs).context("building PATH")
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn cargo_bin() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h).join("bin"),
        None => home()?.join(".cargo/bin"),
    })
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!(
            "xtask: adding rust-src to nightly (needed to build core for bpfel-unknown-none)"
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The LLVM major version nightly rustc was built with (`LLVM version: 22.1.4` -> 22).
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn linker_works(bin: &std::path::Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_bpf_linker(cargo_bin: &std::path::Path) -> Result<()> {
    let bin = cargo_bin.join("bpf-linker");
    if linker_works(&bin) {
        return Ok(());
    }
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&vv).context("rustc +nightly -vV printed no LLVM version")?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    // A lasting LLVM "prefix" made of links to rustc's own libLLVM; it becomes bpf-linker's rpath.
    let prefix = home()?.join(".local/share/lb-bpf-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut found = false;
    for e in std::fs::read_dir(sysroot.join("lib"))? {
        let path = e?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            for link in [lib.join(&name), lib.join("libLLVM.so")] {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&path, &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
            found = true;
        }
    }
    if !found {
        bail!("no libLLVM.so.*-rust-* in {}/lib", sysroot.display());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute, once)"
    );
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    if !linker_works(&bin) {
        bail!("{} was installed but does not run", bin.display());
    }
    Ok(())
}

pub fn ensure() -> Result<Tools> {
    ensure_nightly()?;
    let cargo_bin = cargo_bin()?;
    ensure_bpf_linker(&cargo_bin)?;
    Ok(Tools { cargo_bin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
