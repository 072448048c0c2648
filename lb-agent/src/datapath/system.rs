//! Facts about the host the agent needs: where cgroup2 and bpffs are mounted, and mounting
//! bpffs when it is missing (as production agents do on a fresh node).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tracing::info;

/// The default bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mount points of file systems of type `fstype`, in /proc/mounts order.
pub fn mount_points(mounts: &str, fstype: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_src, target, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == fstype).then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn proc_mounts() -> Result<String> {
    std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")
}

/// The root of the (first) cgroup v2 mount.
pub fn cgroup2_root() -> Result<PathBuf> {
    match mount_points(&proc_mounts()?, "cgroup2").into_iter().next() {
        Some(p) => Ok(p),
        None => bail!("no cgroup2 file system is mounted (see /proc/mounts); pass --cgroup"),
    }
}

/// Makes sure a bpffs is mounted at `path`, mounting one if not.
pub fn ensure_bpffs(path: &Path) -> Result<()> {
    if mount_points(&proc_mounts()?, "bpf")
        .iter()
        .any(|p| p == path)
    {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    nix::mount::mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", path.display()))?;
    info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs ro 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0
bpf /sys/fs/bpf bpf rw 0 0
cgroup2 /run/my\\040cgroup cgroup2 rw 0 0
";

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let m = mount_points(HYBRID, "cgroup2");
        assert_eq!(m[0], PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[1], PathBuf::from("/run/my cgroup"));
    }

    #[test]
    fn finds_bpffs_and_nothing_of_other_types() {
        assert_eq!(mount_points(HYBRID, "bpf"), [PathBuf::from("/sys/fs/bpf")]);
        assert!(mount_points(HYBRID, "xfs").is_empty());
    }

    #[test]
    fn unified_layout() {
        let m = mount_points("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "cgroup2");
        assert_eq!(m, [PathBuf::from("/sys/fs/cgroup")]);
    }
}
