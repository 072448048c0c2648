//! Developer commands: `cargo xtask build-ebpf`, `test`, `demo`, `lint`, `bench`.

mod bench;
mod demo;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF programs (installs rust-src and bpf-linker first when missing).
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Build everything, run every test (the privileged ones need root) and the linters.
    Test,
    /// Run the agent on a sandbox of namespaces and show how a ClusterIP spreads traffic.
    Demo,
    /// Lint the Dockerfile, the kind workflow and the Rust code.
    Lint,
    /// Compare this load balancer with kube-proxy-shaped iptables and nftables rules (root).
    Bench(bench::BenchArgs),
    /// The bench's client program (started by `bench` inside its namespaces).
    #[command(hide = true)]
    BenchClient(bench::client::ClientArgs),
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds the eBPF object into target/lb-ebpf/bpfel-unknown-none/<profile>/lb-ebpf, where
/// lb-agent's build script embeds it from.
pub fn build_ebpf(release: bool) -> Result<()> {
    let tools = toolchain::ensure()?;
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("lb-ebpf"))
        .args([
            "+nightly",
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(root.join("target/lb-ebpf"))
        // BTF for the maps, so bpftool prints keys and values by field name.
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env("PATH", tools.path_with_linker()?);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test() -> Result<()> {
    build_ebpf(true)?;
    let root = workspace_root();
    // One test binary at a time and one datapath sandbox at a time inside each (lb-testkit
    // serialises them), so convergence checks do not fight over two cores.
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"]))?;
    lint()?;
    // The benchmark still runs end to end (quick, no timing assertions; needs root).
    bench::smoke_test()
}

fn lint() -> Result<()> {
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("bash")
        .current_dir(&root)
        .arg("deploy/lint.sh"))?;
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf { release } => build_ebpf(release),
        Cmd::Test => test(),
        Cmd::Demo => demo::run(),
        Cmd::Lint => lint(),
        Cmd::Bench(args) => bench::run(&args).map(|_| ()),
        Cmd::BenchClient(args) => bench::client::main(args),
    }
}
