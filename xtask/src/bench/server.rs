//! The bench "pod": one thread in the server namespace, pinned to its own CPU, serving every
//! port it was given. TCP: accept, write one byte, close (the server closes first, so the
//! TIME_WAIT state stays on the server and the client's ports are free again at once). UDP:
//! echo every datagram. Its CPU time is read from /proc to show it was not the bottleneck.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use lb_testkit::netns;

pub struct BenchServer {
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

/// Pins the calling thread (or, in a child before exec, the process) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl BenchServer {
    pub fn start(ns: &str, ports: &[u16], cpu: usize) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let (ns, ports) = (ns.to_string(), ports.to_vec());
        let (s, t) = (stop.clone(), tid.clone());
        let thread = std::thread::spawn(move || {
            let sockets = (|| -> Result<Vec<(TcpListener, UdpSocket)>> {
                netns::enter(&ns)?;
                pin_to_cpu(cpu).context("pinning the server thread")?;
                // SAFETY: gettid has no preconditions.
                t.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                ports
                    .iter()
                    .map(|p| {
                        let any = SocketAddr::from(([0, 0, 0, 0], *p));
                        let tcp = TcpListener::bind(any).with_context(|| format!("TCP :{p}"))?;
                        let udp = UdpSocket::bind(any).with_context(|| format!("UDP :{p}"))?;
                        tcp.set_nonblocking(true)?;
                        udp.set_nonblocking(true)?;
                        Ok((tcp, udp))
                    })
                    .collect()
            })();
            match sockets {
                Ok(socks) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&socks, &s);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx.recv().context("bench server thread died")??;
        Ok(Self {
            stop,
            tid,
            thread: Some(thread),
        })
    }

    /// CPU time the server thread has used so far (ns), from the scheduler's statistics.
    pub fn cpu_ns(&self) -> u64 {
        let tid = self.tid.load(Ordering::Relaxed);
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(socks: &[(TcpListener, UdpSocket)], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .flat_map(|(t, u)| [t.as_raw_fd(), u.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for (i, (tcp, udp)) in socks.iter().enumerate() {
            if fds[2 * i].revents != 0 {
                while let Ok((mut conn, _)) = tcp.accept() {
                    let _ = conn.write_all(b"x");
                    // Dropping closes: the server closes first.
                }
            }
            if fds[2 * i + 1].revents != 0 {
                while let Ok((len, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..len], peer);
                }
            }
        }
    }
}
