//! The one client program every mode is measured with, run as `xtask bench-client` in the
//! mode's namespace (and, for the socket LB, the bench cgroup), pinned to its own CPU.
//!
//! TCP: one connection at a time: socket(), a blocking connect() (timed), read the server's
//! byte and its FIN, close. The server closes first, so no TIME_WAIT piles up on the client.
//! UDP: one unconnected socket; sendto() the target and wait for the echo (timed), in turn.
//! Prints a JSON summary on stdout.

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::server::pin_to_cpu;
use super::stats;

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[arg(long, value_parser = ["tcp", "udp"])]
    proto: String,
    #[arg(long)]
    target: SocketAddrV4,
    /// Measured requests.
    #[arg(long)]
    count: u32,
    /// Requests before the measured ones (neighbour entries, caches).
    #[arg(long, default_value_t = 100)]
    warmup: u32,
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

/// What one client run measured.
#[derive(Clone, Debug, Default)]
pub struct ClientResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: String,
    pub elapsed_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub cpu_ns: u64,
}

impl ClientResult {
    /// Completed requests (connections) per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 * 1e9 / self.elapsed_ns.max(1) as f64
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

fn set_timeouts(fd: i32, d: Duration) {
    let tv = timeval(d);
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: tv is a valid timeval for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One TCP connection: Ok(connect latency) or Err(errno).
fn tcp_once(sa: &libc::sockaddr_in, timeout: Duration) -> std::result::Result<u64, i32> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(errno());
        }
        set_timeouts(fd, timeout);
        let t0 = Instant::now();
        let rc = libc::connect(
            fd,
            (sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let lat = t0.elapsed().as_nanos() as u64;
        if rc != 0 {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        let mut buf = [0u8; 16];
        let mut got = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                got += n;
                continue;
            }
            let e = if n < 0 { errno() } else { 0 };
            libc::close(fd);
            return if got > 0 && n == 0 {
                Ok(lat)
            } else {
                Err(if e == 0 { libc::ECONNRESET } else { e })
            };
        }
    }
}

/// One UDP request on `fd`: Ok(round-trip time) or Err(errno).
fn udp_once(fd: i32, sa: &libc::sockaddr_in) -> std::result::Result<u64, i32> {
    let mut buf = [0u8; 64];
    // SAFETY: valid buffers and address for the duration of each call.
    unsafe {
        let t0 = Instant::now();
        if libc::sendto(
            fd,
            b"ping".as_ptr().cast(),
            4,
            0,
            (sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 4
        {
            return Err(errno());
        }
        // Ask for the sender's address, as a UDP application does (and as makes the
        // kernel run the recvmsg4 hook).
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut from_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let n = libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_in).cast(),
            &mut from_len,
        );
        if n <= 0 {
            return Err(if n < 0 { errno() } else { libc::EIO });
        }
        Ok(t0.elapsed().as_nanos() as u64)
    }
}

fn cpu_ns() -> u64 {
    // SAFETY: rusage is plain data written by the kernel.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The `bench-client` subcommand.
pub fn main(args: ClientArgs) -> Result<()> {
    let sa = sockaddr(args.target);
    let timeout = Duration::from_millis(args.timeout_ms);
    let udp_fd = if args.proto == "udp" {
        // SAFETY: a new socket owned by this process until exit.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        set_timeouts(fd, timeout);
        Some(fd)
    } else {
        None
    };
    let once = |_: u32| match udp_fd {
        Some(fd) => udp_once(fd, &sa),
        None => tcp_once(&sa, timeout),
    };
    for i in 0..args.warmup {
        let _ = once(i);
    }
    let mut lat = Vec::with_capacity(args.count as usize);
    let mut errors = 0u64;
    let mut first_error = String::new();
    let cpu0 = cpu_ns();
    let t0 = Instant::now();
    for i in 0..args.count {
        match once(i) {
            Ok(l) => lat.push(l),
            Err(e) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = std::io::Error::from_raw_os_error(e).to_string();
                }
            }
        }
    }
    let elapsed = t0.elapsed().as_nanos() as u64;
    let cpu = cpu_ns() - cpu0;
    lat.sort_unstable();
    println!(
        "{}",
        json!({
            "ok": lat.len(), "errors": errors, "first_error": first_error,
            "elapsed_ns": elapsed, "cpu_ns": cpu,
            "p50_ns": stats::percentile_sorted(&lat, 50.0),
            "p99_ns": stats::percentile_sorted(&lat, 99.0),
        })
    );
    Ok(())
}

/// How to start a client: in which namespace, cgroup and on which CPU.
pub struct Placement<'a> {
    pub netns: &'a str,
    pub cgroup: Option<&'a Path>,
    pub cpu: usize,
}

/// Runs one client and parses its summary.
pub fn run(
    place: &Placement,
    proto: &str,
    target: SocketAddrV4,
    count: u32,
    warmup: u32,
) -> Result<ClientResult> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let ns = std::fs::File::open(lb_testkit::netns::path(place.netns))
        .with_context(|| format!("opening netns {}", place.netns))?;
    let procs = match place.cgroup {
        Some(cg) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", cg.display()))?,
        ),
        None => None,
    };
    let cpu = place.cpu;
    let mut cmd = Command::new(exe);
    cmd.args(["bench-client", "--proto", proto])
        .args(["--target", &target.to_string()])
        .args([
            "--count",
            &count.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (write, setns, sched_setaffinity) between fork and
    // exec; the files were opened before the fork and moved into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs
                && libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            pin_to_cpu(cpu)
        });
    }
    let out = cmd.output().context("running the bench client")?;
    if !out.status.success() {
        bail!(
            "bench client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the bench client's output")?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Ok(ClientResult {
        ok: n("ok"),
        errors: n("errors"),
        first_error: v
            .get("first_error")
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string(),
        elapsed_ns: n("elapsed_ns"),
        p50_ns: n("p50_ns"),
        p99_ns: n("p99_ns"),
        cpu_ns: n("cpu_ns"),
    })
}
