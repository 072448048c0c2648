//! Ending sockets through netlink sock_diag (`SOCK_DESTROY`, needs CONFIG_INET_DIAG_DESTROY),
//! the way `ss -K` does, for kernels without `bpf_sock_destroy`: dump the sockets of each
//! protocol and family, keep those connected to a departed backend that `LB_SOCK_REVNAT` says
//! we translated through the frontend it left, and destroy each by its dumped id.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use lb_common::{SockRevNat, SockRevNatKey, SockTermKey, sock_term, v4_mapped};

use super::{Outcome, Protocols, netns};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const MSG_LEN: usize = 72;
/// `struct inet_diag_sockid`, inside both.
const SOCKID_LEN: usize = 48;

pub struct NetlinkMechanism {
    rev_nat: HashMap<MapData, SockRevNatKey, SockRevNat>,
}

pub fn setup(ebpf: &mut aya::Ebpf) -> Result<NetlinkMechanism> {
    let name = lb_common::map_names::SOCK_REV_NAT;
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    let rev_nat = HashMap::try_from(map).context("LB_SOCK_REVNAT has an unexpected layout")?;
    // Fail early (and fall back to nothing) when sock_diag is missing.
    socket().context("opening a NETLINK_SOCK_DIAG socket")?;
    Ok(NetlinkMechanism { rev_nat })
}

/// A socket seen in a dump.
struct Dumped {
    family: u8,
    /// The `inet_diag_sockid` exactly as the kernel sent it.
    id: [u8; SOCKID_LEN],
    daddr: [u8; 16],
    dport: u16,
    cookie: u64,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

fn request(kind: u16, flags: u16, seq: u32, family: u8, l4: u8, states: u32, id: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.extend_from_slice(&[family, l4, 0, 0]);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl is the kernel's address; msg is a valid buffer.
    let n = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Netlink messages in one datagram: (type, payload).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, at) as usize;
        if len < NLMSG_HDR || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        out.push((kind, &buf[at + NLMSG_HDR..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// States worth dumping: all but TIME_WAIT, CLOSE, LISTEN, NEW_SYN_RECV.
fn state_mask() -> u32 {
    (0..32u8)
        .filter(|s| sock_term::endable_state(*s))
        .fold(0, |m, s| m | 1 << s)
}

fn dump(fd: &OwnedFd, family: u8, l4: u8) -> io::Result<Vec<Dumped>> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    send(
        fd,
        &request(
            SOCK_DIAG_BY_FAMILY,
            flags,
            1,
            family,
            l4,
            state_mask(),
            &[0; SOCKID_LEN],
        ),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let errno = -(u32_at(payload, 0) as i32);
                    return Err(io::Error::from_raw_os_error(errno));
                }
                _ if payload.len() >= MSG_LEN => {
                    let state = payload[1];
                    if !sock_term::endable_state(state) {
                        continue;
                    }
                    let mut id = [0u8; SOCKID_LEN];
                    id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                    // sport(2) dport(2) src(16) dst(16) if(4) cookie(8)
                    let dport = u16::from_be_bytes([id[2], id[3]]);
                    let mut daddr = [0u8; 16];
                    daddr.copy_from_slice(&id[20..36]);
                    if i32::from(payload[0]) == libc::AF_INET {
                        daddr = v4_mapped([id[20], id[21], id[22], id[23]]);
                    }
                    let cookie = u64::from(u32_at(&id, 40)) | (u64::from(u32_at(&id, 44)) << 32);
                    out.push(Dumped {
                        family: payload[0],
                        id,
                        daddr,
                        dport,
                        cookie,
                    });
                }
                _ => {}
            }
        }
    }
}

/// Destroys one socket; Ok(false) when it was already gone.
fn destroy(fd: &OwnedFd, s: &Dumped, l4: u8) -> io::Result<bool> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    send(
        fd,
        &request(SOCK_DESTROY, flags, 2, s.family, l4, u32::MAX, &s.id),
    )?;
    let mut buf = vec![0u8; 4096];
    let n = recv(fd, &mut buf)?;
    for (kind, payload) in messages(&buf[..n]) {
        if kind as i32 == libc::NLMSG_ERROR && payload.len() >= 4 {
            return match -(u32_at(payload, 0) as i32) {
                0 => Ok(true),
                libc::ENOENT => Ok(false),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
    }
    Err(io::Error::other("no answer to SOCK_DESTROY"))
}

impl NetlinkMechanism {
    pub fn end(
        &mut self,
        departed: &BTreeSet<SockTermKey>,
        protocols: Protocols,
        namespaces: &[netns::Netns],
    ) -> Outcome {
        let wanted: BTreeSet<u8> = departed
            .iter()
            .map(|k| k.proto)
            .filter(|p| protocols.includes(*p))
            .collect();
        let rev_nat = &self.rev_nat;
        let doomed = |s: &Dumped, l4: u8| -> bool {
            let key = SockRevNatKey {
                cookie: s.cookie,
                addr: s.daddr,
                port: s.dport,
                _pad: [0; 6],
            };
            let Ok(front) = rev_nat.get(&key, 0) else {
                return false;
            };
            departed.contains(&SockTermKey {
                addr: s.daddr,
                port: s.dport,
                proto: l4,
                _pad: 0,
                rev_nat_id: front.rev_nat_id,
            })
        };
        let results = netns::for_each(namespaces, |_| {
            let mut outcome = Outcome::default();
            let fd = socket().context("opening a NETLINK_SOCK_DIAG socket")?;
            for &l4 in &wanted {
                for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                    let sockets = dump(&fd, family, l4)
                        .with_context(|| format!("dumping sockets (proto {l4})"))?;
                    for s in sockets.iter().filter(|s| doomed(s, l4)) {
                        match destroy(&fd, s, l4) {
                            Ok(true) => *outcome.destroyed.entry(l4).or_default() += 1,
                            Ok(false) => {}
                            Err(e) => {
                                outcome.failed += 1;
                                tracing::warn!(error = %e, cookie = s.cookie, "SOCK_DESTROY failed");
                            }
                        }
                    }
                }
            }
            Ok(outcome)
        });
        let mut outcome = Outcome::default();
        for (path, r) in results {
            match r {
                Ok(c) => outcome.merge(c),
                Err(e) => outcome.errors.push(format!("{}: {e:#}", path.display())),
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernel_layout() {
        let m = request(SOCK_DESTROY, 5, 7, 2, 17, 2, &[9; SOCKID_LEN]);
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(&m[16..20], &[2, 17, 0, 0]);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!(&m[24..], &[9; SOCKID_LEN]);
    }

    #[test]
    fn the_state_mask_leaves_out_listening_closed_and_time_wait() {
        let m = state_mask();
        assert_ne!(m & 1 << sock_term::TCP_ESTABLISHED, 0);
        for s in [
            sock_term::TCP_TIME_WAIT,
            sock_term::TCP_CLOSE,
            sock_term::TCP_LISTEN,
            sock_term::TCP_NEW_SYN_RECV,
        ] {
            assert_eq!(m & 1 << s, 0);
        }
    }

    #[test]
    fn messages_split_on_aligned_lengths() {
        let mut buf = request(SOCK_DIAG_BY_FAMILY, 0, 1, 2, 6, 0, &[0; SOCKID_LEN]);
        buf.extend(request(SOCK_DESTROY, 0, 2, 10, 17, 0, &[1; SOCKID_LEN]));
        let ms = messages(&buf);
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].0, SOCK_DESTROY);
        assert_eq!(ms[1].1[0], 10);
    }
}
