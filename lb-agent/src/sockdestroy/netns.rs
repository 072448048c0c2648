//! Every network namespace on the node: the agent's own, the named ones (`/run/netns/*`) and
//! those of running processes (`/proc/*/ns/net`, which needs hostPID in a pod), each once.
//! Socket iterators and sock_diag netlink sockets see only the namespace they were made in, so
//! the work runs on a dedicated short-lived OS thread that `setns`es into each in turn (never
//! on a Tokio worker, whose namespace must not change).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::debug;

/// One namespace, held open so it cannot go away while we work in it.
pub struct Netns {
    /// Where it was found (for logs).
    pub path: PathBuf,
    file: File,
}

fn candidates() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/proc/self/ns/net")];
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        paths.extend(rd.flatten().map(|e| e.path()));
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        paths.extend(
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    paths
}

/// All network namespaces, deduplicated by (device, inode); the agent's own comes first.
/// Paths that vanish or cannot be opened (a process that just exited) are skipped.
pub fn all() -> Vec<Netns> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for path in candidates() {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(Netns { path, file });
        }
    }
    debug!(count = out.len(), "network namespaces found");
    out
}

fn enter(ns: &Netns) -> Result<()> {
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread, which is ours
    // and short-lived.
    if unsafe { libc::setns(ns.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", ns.path.display()));
    }
    Ok(())
}

/// Runs `work` inside each namespace, on one fresh thread that enters them in turn; returns
/// one result per namespace. `work` must not spawn tasks that outlive it.
pub fn for_each<T: Send>(
    namespaces: &[Netns],
    work: impl Fn(&Path) -> Result<T> + Sync,
) -> Vec<(PathBuf, Result<T>)> {
    std::thread::scope(|s| {
        s.spawn(|| {
            namespaces
                .iter()
                .map(|ns| {
                    let r = enter(ns).and_then(|()| work(&ns.path));
                    (ns.path.clone(), r)
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|_| {
            vec![(
                PathBuf::from("?"),
                Err(anyhow::anyhow!("the namespace thread panicked")),
            )]
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_namespace_first_and_each_namespace_once() {
        let all = all();
        assert_eq!(all[0].path, Path::new("/proc/self/ns/net"));
        let mut inodes: Vec<u64> = all
            .iter()
            .map(|n| n.file.metadata().unwrap().ino())
            .collect();
        let n = inodes.len();
        inodes.sort();
        inodes.dedup();
        assert_eq!(inodes.len(), n);
    }
}
