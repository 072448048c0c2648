//! Replacing the program behind a pinned cgroup link in place (BPF_LINK_UPDATE): the link,
//! its pin and its place in the cgroup stay; only the program changes, atomically. aya 0.14
//! offers this for XDP and TC links only, so this is the raw syscall, guarded: the pinned link
//! must be a cgroup link on the cgroup we are asked to attach to (a changed `--cgroup` falls
//! back to attaching anew).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// The head of `struct bpf_link_info` with its `cgroup` member.
#[repr(C)]
#[derive(Default)]
struct CgroupLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _tail: [u32; 9],
}

/// `bpf_attr` as BPF_OBJ_GET reads it.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf_attr` as BPF_LINK_UPDATE reads it.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out bpf_attr prefix of the given size for `cmd`;
    // the kernel zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Detaches the link pinned at `pin` now (BPF_LINK_DETACH), instead of when the kernel gets
/// round to releasing it after its last pin and descriptor are gone (which it does
/// asynchronously). The pin itself stays.
pub fn detach_pinned(pin: &Path) -> Result<()> {
    let link = open_pin(pin)?;
    let mut attr: [u32; 1] = [link.as_raw_fd() as u32];
    bpf(BPF_LINK_DETACH, &mut attr)
        .with_context(|| format!("BPF_LINK_DETACH of {}", pin.display()))?;
    Ok(())
}

/// Opens a pinned BPF object (here: a link).
fn open_pin(pin: &Path) -> Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", pin.display()))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("opening the pinned link {}", pin.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_info(link: BorrowedFd<'_>) -> Result<CgroupLinkInfo> {
    let mut info = CgroupLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<CgroupLinkInfo>() as u32,
        info: &mut info as *mut CgroupLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD on the link")?;
    Ok(info)
}

/// What a pinned link is attached to: (link id, program id, cgroup id).
pub fn pinned_link_ids(pin: &Path) -> Result<(u32, u32, u64)> {
    let info = link_info(open_pin(pin)?.as_fd())?;
    Ok((info.id, info.prog_id, info.cgroup_id))
}

/// Points the cgroup link pinned at `pin` at `new_prog`, if that link is attached to
/// `cgroup`. Errors leave the link as it was.
pub fn update_pinned_cgroup_link(
    pin: &Path,
    cgroup: &Path,
    new_prog: BorrowedFd<'_>,
) -> Result<()> {
    let link = open_pin(pin)?;
    let info = link_info(link.as_fd())?;
    if info.type_ != BPF_LINK_TYPE_CGROUP {
        bail!(
            "{} is not a cgroup link (type {})",
            pin.display(),
            info.type_
        );
    }
    // On cgroup v2 a cgroup's id is its directory's inode number.
    let want = std::fs::metadata(cgroup)
        .with_context(|| format!("stat {}", cgroup.display()))?
        .ino();
    if info.cgroup_id != want {
        bail!(
            "{} is attached to cgroup id {}, not {} ({})",
            pin.display(),
            info.cgroup_id,
            want,
            cgroup.display()
        );
    }
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).context("BPF_LINK_UPDATE")?;
    Ok(())
}
