//! Loading the kube-proxy-shaped baselines into a namespace, timed: `iptables-restore` and
//! `nft -f` read the ruleset on stdin, as kube-proxy feeds them.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `program args` inside namespace `ns` with `input` on stdin; returns the wall time.
pub fn run_in_ns(ns: &str, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let nsf = std::fs::File::open(lb_testkit::netns::path(ns))
        .with_context(|| format!("opening netns {ns}"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setns (async-signal-safe) between fork and exec, on a file opened before.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let input = input.to_string();
    // Feed stdin from a thread so a large ruleset cannot deadlock against a full stdout pipe.
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let took = t0.elapsed();
    let _ = feeder.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{program} {args:?} in {ns} failed ({}): {}",
            out.status,
            err.chars().take(2000).collect::<String>()
        );
    }
    Ok(took)
}

pub fn iptables_restore(ns: &str, rules: &str) -> Result<Duration> {
    run_in_ns(ns, "iptables-restore", &[], rules)
}

pub fn nft_load(ns: &str, rules: &str) -> Result<Duration> {
    run_in_ns(ns, "nft", &["-f", "-"], rules)
}

/// Rules in an iptables-restore input.
pub fn iptables_rule_count(rules: &str) -> usize {
    rules.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Rules and map elements in an nft input.
pub fn nft_rule_count(rules: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.starts_with("add rule") || l.starts_with("add element"))
        .count()
}
