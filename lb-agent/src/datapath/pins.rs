//! Where the agent pins its maps and links: `<bpffs>/<pin-dir>/<MAP>` and
//! `<bpffs>/<pin-dir>/links/<program>`. One place, used by run, inspect and cleanup.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PinPaths {
    root: PathBuf,
}

impl PinPaths {
    /// `pin_dir` is a name under the bpffs mount (`lb`), or an absolute path.
    pub fn new(bpffs: &Path, pin_dir: &str) -> Self {
        Self {
            root: bpffs.join(pin_dir),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }
}
