//! Just enough of the bpf(2) syscall to read the agent's pinned maps directly (no agent
//! round trip) and to switch on run-time statistics for as long as a file descriptor is held.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use lb_common::{ServiceKey, ServiceValue, proto, scope, v4_mapped};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
    // SAFETY: attr is a zeroed 128-byte buffer laid out as the command's union member; the
    // kernel reads at most size_of_val(attr) bytes.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    }
}

/// A pinned object (map) opened from bpffs.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr);
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("BPF_OBJ_GET {}", path.display()));
    }
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Looks `key` up in the map; `None` when absent.
pub fn lookup<K, V: Default>(map: &OwnedFd, key: &K) -> Result<Option<V>> {
    let mut value = V::default();
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = key as *const K as u64;
    attr[2] = &mut value as *mut V as u64;
    if bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e).context("BPF_MAP_LOOKUP_ELEM");
    }
    Ok(Some(value))
}

/// The number of active backends the pinned service map holds for a TCP frontend, whichever
/// scope the agent files ClusterIPs under.
pub fn service_count(
    services: &OwnedFd,
    vip: std::net::Ipv4Addr,
    port: u16,
) -> Result<Option<u16>> {
    for sc in [scope::INTERNAL, scope::EXTERNAL] {
        let key = ServiceKey {
            addr: v4_mapped(vip.octets()),
            port,
            proto: proto::TCP,
            scope: sc,
            slot: 0,
            _pad: 0,
        };
        if let Some(v) = lookup::<ServiceKey, ServiceValue>(services, &key)? {
            return Ok(Some(v.count));
        }
    }
    Ok(None)
}

/// Run-time statistics of every BPF program, on while this is alive.
pub struct StatsGuard(#[allow(dead_code)] OwnedFd);

pub fn enable_stats() -> Result<StatsGuard> {
    let mut attr = [0u64; 16];
    attr[0] = BPF_STATS_RUN_TIME as u64;
    let fd = bpf(BPF_ENABLE_STATS, &mut attr);
    if fd < 0 {
        bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from the kernel.
    Ok(StatsGuard(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}
