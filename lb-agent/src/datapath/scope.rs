//! `--socket-lb-scope`: which sockets the socket hooks translate. With `host`, only sockets
//! in the agent's own network namespace (the node's, for a hostNetwork DaemonSet); pod sockets
//! keep the Service address so a sidecar proxy (Istio, Linkerd) sees what it routes on. The
//! hooks compare the socket's netns cookie with the agent's, from the `LB_CONFIG` map.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use aya::maps::Array;
use lb_common::{LbConfig, config_flags, sock_term};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLbScope {
    /// Every socket in the cgroup.
    #[default]
    All,
    /// Only sockets in the agent's network namespace.
    Host,
}

/// The network namespace cookie of the calling thread's namespace (`SO_NETNS_COOKIE`, 5.14+).
pub fn netns_cookie() -> Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket")?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .context("getsockopt(SO_NETNS_COOKIE) (kernel >= 5.14)");
    }
    Ok(cookie)
}

/// The `LB_CONFIG` entry for `scope`.
pub fn config(scope: SocketLbScope) -> Result<LbConfig> {
    Ok(match scope {
        SocketLbScope::All => LbConfig::default(),
        SocketLbScope::Host => LbConfig {
            flags: config_flags::HOST_ONLY,
            _pad: 0,
            netns_cookie: netns_cookie()?,
        },
    })
}

/// Writes `config` into the loaded object's `LB_CONFIG` (before the programs are attached).
pub fn write(ebpf: &mut aya::Ebpf, config: &LbConfig) -> Result<()> {
    let name = sock_term::CONFIG_MAP;
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    let mut array: Array<_, LbConfig> =
        Array::try_from(map).with_context(|| format!("{name} has an unexpected layout"))?;
    array
        .set(0, config, 0)
        .with_context(|| format!("writing {name}"))
}
