//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and running code in
//! them. Code enters a namespace on a dedicated thread with setns, never with `ip netns exec`,
//! which remounts /sys and hides the cgroup2 mount.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn create(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name]))
}

pub fn delete(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "del", name]))
}

pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// A veth pair with one end in each namespace (created inside `ns_a`, so names only need to
/// be unique there and in `ns_b`).
pub fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    ip(
        ns_a,
        &[
            "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ],
    )
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> Result<()> {
    let f = File::open(path(name)).with_context(|| format!("opening netns {name}"))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}

/// Sets a per-namespace sysctl (`key` as a path under /proc/sys, e.g. net/ipv4/ip_forward).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let key = key.to_string();
    let value = value.to_string();
    run_in(ns, move || {
        std::fs::write(format!("/proc/sys/{key}"), &value).with_context(|| format!("setting {key}"))
    })
}

/// Turns transmit checksum offload of `iface` in `ns` on or off (`ethtool -K IFACE tx off`),
/// through the SIOCETHTOOL ioctl.
pub fn set_tx_checksum(ns: &str, iface: &str, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let iface = iface.to_string();
    run_in(ns, move || {
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: u32::from(on),
        };
        let mut req = IfReq {
            name: [0; 16],
            data: &mut value,
            _pad: [0; 16],
        };
        let n = iface.len().min(15);
        req.name[..n].copy_from_slice(&iface.as_bytes()[..n]);
        // SAFETY: a plain socket; the ioctl reads `req` and `value`, both alive for the call.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("socket for ethtool");
            }
            let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(err).with_context(|| format!("ethtool tx checksum on {iface}"));
            }
        }
        Ok(())
    })
}
