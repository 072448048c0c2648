//! `lb-agent probe`: opens connections to an address the way an application would and reports
//! how the answers were spread. The demo and the datapath tests run it inside a client network
//! namespace; people can run it on a node to check a Service by hand.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    Tcp,
    /// UDP on a connected socket (connect, send, recv), as glibc's resolver does.
    Udp,
    /// UDP on an unconnected socket (sendto, recvfrom), as many resolvers and servers do.
    UdpUnconnected,
}

/// The outcome of a probe run (printed as one JSON line).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub attempts: u32,
    pub ok: u32,
    /// Reply text (the server's name) -> how many connections got it.
    pub replies: BTreeMap<String, u32>,
    /// errno name -> how many attempts failed with it.
    pub errors: BTreeMap<String, u32>,
}

/// A short name for an OS error, e.g. ECONNREFUSED.
pub fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EAGAIN) => "EAGAIN".into(),
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(n) => format!("errno-{n}"),
        None if e.kind() == std::io::ErrorKind::TimedOut
            || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            "ETIMEDOUT".into()
        }
        None if e.to_string().starts_with("WRONG_PEER") => "WRONG_PEER".into(),
        None => format!("{:?}", e.kind()),
    }
}

/// An answer that came from (or a peer that claims to be) another address than the one the
/// application addressed: the translation leaked through.
fn wrong_peer(got: SocketAddr) -> std::io::Error {
    std::io::Error::other(format!("WRONG_PEER {got}"))
}

fn one_tcp(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    let peer = s.peer_addr()?;
    if peer != target {
        return Err(wrong_peer(peer));
    }
    s.set_read_timeout(Some(timeout))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf.trim().to_string())
}

/// A UDP socket of the target's family with a read timeout.
fn udp_socket(target: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let any = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

fn one_udp(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let s = udp_socket(target, timeout)?;
    s.connect(target)?;
    let peer = s.peer_addr()?;
    if peer != target {
        return Err(wrong_peer(peer));
    }
    s.send(b"?")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn one_udp_unconnected(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let s = udp_socket(target, timeout)?;
    s.send_to(b"?", target)?;
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    if from != target {
        return Err(wrong_peer(from));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

pub fn run(
    target: SocketAddr,
    count: u32,
    proto: ProbeProto,
    timeout: Duration,
    interval: Duration,
) -> Summary {
    let mut sum = Summary::default();
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            std::thread::sleep(interval);
        }
        sum.attempts += 1;
        let r = match proto {
            ProbeProto::Tcp => one_tcp(target, timeout),
            ProbeProto::Udp => one_udp(target, timeout),
            ProbeProto::UdpUnconnected => one_udp_unconnected(target, timeout),
        };
        match r {
            Ok(reply) => {
                sum.ok += 1;
                *sum.replies.entry(reply).or_default() += 1;
            }
            Err(e) => *sum.errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    let _ = std::io::stdout().flush();
    sum
}

/// One attempt of [`hold`], printed as a JSON line as it happens.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldEvent {
    /// Milliseconds since the start.
    pub ms: u64,
    /// The answer, or the error (errno name) of this attempt.
    pub reply: Option<String>,
    pub error: Option<String>,
    /// Whether this attempt opened a new socket (the first, and each one after an error).
    pub new_socket: bool,
}

enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

fn hold_connect(target: SocketAddr, proto: ProbeProto, timeout: Duration) -> std::io::Result<Held> {
    Ok(match proto {
        ProbeProto::Tcp => {
            let s = TcpStream::connect_timeout(&target, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            Held::Tcp(s)
        }
        ProbeProto::Udp | ProbeProto::UdpUnconnected => {
            let s = udp_socket(target, timeout)?;
            s.connect(target)?;
            Held::Udp(s)
        }
    })
}

fn hold_ask(held: &mut Held) -> std::io::Result<String> {
    let mut buf = [0u8; 512];
    let n = match held {
        Held::Tcp(s) => {
            s.write_all(b"?\n")?;
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            n
        }
        Held::Udp(s) => {
            s.send(b"?")?;
            s.recv(&mut buf)?
        }
    };
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Keeps one connected socket (TCP, or connected UDP) and asks over it every `interval`, the
/// way a long-lived client or a DNS resolver does; after an error it opens a new socket. Each
/// attempt is printed at once as a [`HoldEvent`] JSON line.
pub fn hold(
    target: SocketAddr,
    count: u32,
    proto: ProbeProto,
    timeout: Duration,
    interval: Duration,
) {
    let start = std::time::Instant::now();
    let mut held: Option<Held> = None;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let new_socket = held.is_none();
        let r = match held.take() {
            Some(h) => Ok(h),
            None => hold_connect(target, proto, timeout),
        }
        .and_then(|mut h| hold_ask(&mut h).map(|reply| (h, reply)));
        let mut ev = HoldEvent {
            ms: start.elapsed().as_millis() as u64,
            new_socket,
            ..Default::default()
        };
        match r {
            Ok((h, reply)) => {
                held = Some(h);
                ev.reply = Some(reply);
            }
            Err(e) => ev.error = Some(errno_name(&e)),
        }
        if serde_json::to_writer(&mut out, &ev).is_err() || writeln!(out).is_err() {
            return;
        }
        let _ = out.flush();
    }
}
