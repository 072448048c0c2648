//! Ending sockets with the BPF socket iterators (kernel >= 6.5): the agent writes the departed
//! pairs into `LB_SOCK_TERM`, then in each namespace opens the pinned iterator link (each open
//! runs one iteration over that namespace's sockets) and counts the bytes it wrote.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::{Iter, links::FdLink};
use lb_common::{SockTermKey, proto, sock_term};

use super::{Outcome, Protocols, netns};
use crate::datapath::pins::PinPaths;

pub struct IterMechanism {
    term: HashMap<MapData, SockTermKey, u8>,
    /// Pinned iterator links per protocol number.
    links: Vec<(u8, PathBuf)>,
}

/// Loads and attaches the iterators; an error means this kernel cannot use them.
pub fn setup(ebpf: &mut Ebpf, pins: &PinPaths) -> Result<IterMechanism> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let mut links = Vec::new();
    for (name, kind, l4) in [
        (sock_term::ITER_UDP, "udp", proto::UDP),
        (sock_term::ITER_TCP, "tcp", proto::TCP),
    ] {
        let prog: &mut Iter = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not an iterator"))?;
        prog.load(kind, &btf)
            .with_context(|| format!("loading {name} (the verifier said no)"))?;
        let id = prog.attach().with_context(|| format!("attaching {name}"))?;
        let link: FdLink = prog
            .take_link(id)
            .with_context(|| format!("taking the link of {name}"))?
            .try_into()
            .with_context(|| format!("{name}'s link is not an fd link"))?;
        // Beside, not among, the socket hooks' links.
        let dir = pins.root().join("iter");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        // Pinned, so any thread (in any namespace) can start an iteration by opening it.
        link.pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
        links.push((l4, path));
    }
    let map = ebpf
        .take_map(sock_term::TERM_MAP)
        .with_context(|| format!("the eBPF object has no map {}", sock_term::TERM_MAP))?;
    let term = HashMap::try_from(map).context("LB_SOCK_TERM has an unexpected layout")?;
    Ok(IterMechanism { term, links })
}

impl IterMechanism {
    pub fn end(
        &mut self,
        departed: &BTreeSet<SockTermKey>,
        protocols: Protocols,
        namespaces: &[netns::Netns],
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let keys: Vec<SockTermKey> = departed
            .iter()
            .filter(|k| protocols.includes(k.proto))
            .copied()
            .collect();
        let links: Vec<(u8, PathBuf)> = self
            .links
            .iter()
            .filter(|(p, _)| keys.iter().any(|k| k.proto == *p))
            .cloned()
            .collect();
        for batch in keys.chunks(sock_term::TERM_CAPACITY as usize) {
            for k in batch {
                if let Err(e) = self.term.insert(k, 1, 0) {
                    outcome.errors.push(format!("writing LB_SOCK_TERM: {e}"));
                }
            }
            let results = netns::for_each(namespaces, |_| {
                let mut counts = Outcome::default();
                for (l4, path) in &links {
                    let mut out = Vec::new();
                    std::fs::File::open(path)
                        .and_then(|mut f| f.read_to_end(&mut out))
                        .with_context(|| format!("running the iterator {}", path.display()))?;
                    counts.count(*l4, &out);
                }
                Ok(counts)
            });
            for (path, r) in results {
                match r {
                    Ok(c) => outcome.merge(c),
                    Err(e) => outcome.errors.push(format!("{}: {e:#}", path.display())),
                }
            }
            for k in batch {
                let _ = self.term.remove(k);
            }
        }
        outcome
    }
}

impl Outcome {
    /// Counts an iterator's output: one byte per socket it tried to end.
    fn count(&mut self, l4: u8, out: &[u8]) {
        for b in out {
            match *b {
                sock_term::OUT_DESTROYED => *self.destroyed.entry(l4).or_default() += 1,
                _ => self.failed += 1,
            }
        }
    }
}
