//! What each sandbox pod runs: a TCP server that writes the pod's name and closes (the server
//! closes first, so TIME_WAIT stays on the server side and client ports are reusable), and a
//! UDP server that answers every datagram with the pod's name; on `port + 1` a TCP server that
//! keeps each connection open and answers every read with the pod's name (long-lived clients).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::netns;

pub struct PodServer {
    stop: Arc<AtomicBool>,
    tcp_accepts: Arc<AtomicU64>,
    udp_requests: Arc<AtomicU64>,
    /// Client addresses seen (TCP and UDP), to check whose address a pod sees.
    peers: Arc<Mutex<BTreeSet<IpAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl PodServer {
    pub fn start(ns: &str, name: &str, port: u16) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_accepts = Arc::new(AtomicU64::new(0));
        let udp_requests = Arc::new(AtomicU64::new(0));
        let peers = Arc::new(Mutex::new(BTreeSet::new()));
        let (ns, name) = (ns.to_string(), name.to_string());
        let (s, t, u) = (stop.clone(), tcp_accepts.clone(), udp_requests.clone());
        let p = peers.clone();
        let thread = std::thread::spawn(move || {
            let sockets = (|| -> Result<(TcpListener, UdpSocket, TcpListener)> {
                netns::enter(&ns)?;
                // [::] with the default bindv6only=0 serves IPv4 and IPv6.
                let any = SocketAddr::from(([0u16; 8], port));
                let tcp = TcpListener::bind(any).context("binding the pod's TCP port")?;
                let udp = UdpSocket::bind(any).context("binding the pod's UDP port")?;
                let hold = TcpListener::bind(SocketAddr::from(([0u16; 8], port + 1)))
                    .context("binding the pod's long-lived TCP port")?;
                tcp.set_nonblocking(true)?;
                udp.set_nonblocking(true)?;
                hold.set_nonblocking(true)?;
                Ok((tcp, udp, hold))
            })();
            match sockets {
                Ok((tcp, udp, hold)) => {
                    let _ = ready_tx.send(Ok(()));
                    let counters = Counters {
                        accepts: &t,
                        requests: &u,
                        peers: &p,
                    };
                    serve(&name, (&tcp, &udp, &hold), &s, &counters);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx.recv().context("pod server thread died")??;
        Ok(Self {
            stop,
            tcp_accepts,
            udp_requests,
            peers,
            thread: Some(thread),
        })
    }

    pub fn tcp_accepts(&self) -> u64 {
        self.tcp_accepts.load(Ordering::Relaxed)
    }

    pub fn udp_requests(&self) -> u64 {
        self.udp_requests.load(Ordering::Relaxed)
    }

    /// Client addresses this pod has seen (IPv4-mapped ones shown as IPv4).
    pub fn peers(&self) -> BTreeSet<IpAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the server thread counts for its [`PodServer`].
struct Counters<'a> {
    accepts: &'a AtomicU64,
    requests: &'a AtomicU64,
    peers: &'a Mutex<BTreeSet<IpAddr>>,
}

fn serve(
    name: &str,
    (tcp, udp, hold): (&TcpListener, &UdpSocket, &TcpListener),
    stop: &AtomicBool,
    counters: &Counters<'_>,
) {
    let Counters {
        accepts,
        requests,
        peers,
    } = counters;
    let seen = |peer: SocketAddr| {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if let Ok(mut p) = peers.lock() {
            p.insert(ip);
        }
    };
    let reply = format!("{name}\n");
    let pollin = |fd: i32| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut held: Vec<std::net::TcpStream> = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = vec![
            pollin(tcp.as_raw_fd()),
            pollin(udp.as_raw_fd()),
            pollin(hold.as_raw_fd()),
        ];
        fds.extend(held.iter().map(|c| pollin(c.as_raw_fd())));
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        while let Ok((conn, _)) = hold.accept() {
            if conn.set_nonblocking(true).is_ok() {
                held.push(conn);
            }
        }
        // Answer every read; drop connections that ended or failed.
        held.retain_mut(|c| {
            loop {
                match std::io::Read::read(c, &mut buf) {
                    Ok(0) => break false,
                    Ok(_) => {
                        if c.write_all(reply.as_bytes()).is_err() {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                    Err(_) => break false,
                }
            }
        });
        while let Ok((mut conn, peer)) = tcp.accept() {
            accepts.fetch_add(1, Ordering::Relaxed);
            seen(peer);
            let _ = conn.set_nonblocking(false);
            let _ = conn.write_all(reply.as_bytes());
            // Dropping closes: the server closes first.
        }
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            requests.fetch_add(1, Ordering::Relaxed);
            seen(peer);
            let _ = udp.send_to(reply.as_bytes(), peer);
        }
    }
}
