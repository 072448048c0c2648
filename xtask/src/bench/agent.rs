//! The real agent (`lb-agent run --manifests`) on the bench cgroup, and what is read from it:
//! time to /readyz, RSS, its pinned maps (bpftool: memory; bpf(2): entries), and the run time
//! of its programs.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::interrupted;

pub struct Agent {
    bin: PathBuf,
    pub pin_dir: String,
    pub health: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

/// Map capacities large enough for `frontends` frontends with `backends` backends in all.
pub fn map_sizes(frontends: usize, backends: usize) -> [(String, u32); 3] {
    let fit = |n: usize| ((n * 5 / 4).next_power_of_two() as u32).max(65_536);
    [
        ("--services-map-size".into(), fit(frontends + backends)),
        ("--backends-map-size".into(), fit(backends)),
        ("--rev-nat-map-size".into(), fit(frontends)),
    ]
}

impl Agent {
    /// Starts the agent and returns it with the time from spawn to /readyz = 200.
    pub fn start(
        bin: &Path,
        manifests: &Path,
        cgroup: &Path,
        pin_dir: &str,
        sizes: &[(String, u32)],
        log: PathBuf,
    ) -> Result<(Self, Duration)> {
        let health = SocketAddr::from((
            [127, 0, 0, 1],
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        ));
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .args(["--pin-dir", pin_dir])
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--health-addr", &health.to_string()]);
        for (flag, v) in sizes {
            cmd.args([flag.as_str(), &v.to_string()]);
        }
        let t0 = Instant::now();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Agent {
            bin: bin.to_path_buf(),
            pin_dir: pin_dir.to_string(),
            health,
            log,
            child: Some(child),
        };
        let deadline = t0 + Duration::from_secs(300);
        loop {
            interrupted()?;
            if let Some(c) = agent.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    agent.log_tail()
                );
            }
            if lb_testkit::http_get(health, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok((agent, t0.elapsed()));
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within 300 s:\n{}",
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> Result<u64> {
        let pid = self.pid().context("agent not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .context("no VmRSS")
    }

    pub fn pin_path(&self, name: &str) -> PathBuf {
        Path::new("/sys/fs/bpf").join(&self.pin_dir).join(name)
    }

    /// `bpftool map show` of one pinned map: (max_entries, bytes_memlock, key+value bytes).
    pub fn map_info(&self, name: &str) -> Result<MapInfo> {
        let v = bpftool(&[
            "map",
            "show",
            "pinned",
            &self.pin_path(name).to_string_lossy(),
        ])?;
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        Ok(MapInfo {
            name: name.to_string(),
            max_entries: n("max_entries"),
            memlock: n("bytes_memlock"),
            entry_bytes: n("bytes_key") + n("bytes_value"),
        })
    }

    /// (run_time_ns, run_cnt) of one attached program, found through its pinned link.
    pub fn prog_stats(&self, program: &str) -> Result<(u64, u64)> {
        let link = bpftool(&[
            "link",
            "show",
            "pinned",
            &self.pin_path("links").join(program).to_string_lossy(),
        ])?;
        let id = link
            .get("prog_id")
            .and_then(|x| x.as_u64())
            .context("link without prog_id")?;
        let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
        let n = |k: &str| prog.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        Ok((n("run_time_ns"), n("run_cnt")))
    }

    /// The agent's mean sync duration so far, from its /metrics histogram.
    pub fn mean_sync_seconds(&self) -> Option<f64> {
        let (_, body) = lb_testkit::http_get(self.health, "/metrics").ok()?;
        let find = |suffix: &str| {
            body.lines()
                .find(|l| l.starts_with(&format!("lb_sync_duration_seconds_{suffix}")))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        };
        let (sum, count) = (find("sum")?, find("count")?);
        (count > 0.0).then(|| sum / count)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        let _ = Command::new(&self.bin)
            .args(["cleanup", "--pin-dir", &self.pin_dir])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&self.pin_dir));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Debug, Default)]
pub struct MapInfo {
    pub name: String,
    pub max_entries: u64,
    pub memlock: u64,
    pub entry_bytes: u64,
}

impl MapInfo {
    /// Kernel memory per entry (the hash maps are preallocated: memlock / max_entries).
    pub fn per_entry(&self) -> f64 {
        self.memlock as f64 / self.max_entries.max(1) as f64
    }
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing bpftool {args:?}"))
}
