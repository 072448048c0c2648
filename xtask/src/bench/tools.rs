//! The programs the baselines and the measurements need, installed from Debian's packages
//! when missing (`apt-get install -y iptables nftables bpftool`, after `apt-get update` if the
//! first attempt fails).

use std::process::Command;

use anyhow::{Context, Result, bail};

const NEEDED: [(&str, &str); 3] = [
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
];

fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(program).is_file())
    })
}

fn apt(args: &[&str]) -> Result<bool> {
    eprintln!("+ apt-get {}", args.join(" "));
    Ok(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get (the bench installs iptables, nftables and bpftool with it)")?
        .success())
}

pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(prog, _)| !have(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut install = vec!["install", "-y"];
    install.extend(&missing);
    let installed = apt(&install)? || (apt(&["update"])? && apt(&install)?);
    if !installed {
        bail!("could not install {missing:?}; install them and run the bench again");
    }
    Ok(())
}

/// One line describing a tool's version, for the report.
pub fn version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}
