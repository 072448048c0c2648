//! Loading the embedded object, pinning its maps (adopting the ones a previous agent left),
//! and attaching the socket programs to a cgroup through pinned links.
//!
//! A restart must not drop connection attempts, so a new agent never detaches before it has
//! attached. Where a previous agent left a pinned link on the same cgroup, the new program
//! replaces the old one behind that link atomically (BPF_LINK_UPDATE, see [`link_update`]).
//! Otherwise (a first start, or a changed `--cgroup`) it attaches its programs beside any old
//! ones (multi-attach), pins the new links under a temporary name and renames them over the
//! old pins, which releases the old links; while both are attached the old program sees an
//! already-rewritten backend address and passes it through.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use lb_common::{map_names, program_names};
use tracing::{info, warn};

use super::{EBPF_OBJECT, bpf_log, kfunc, link_update, maps::BpfMaps, pins::PinPaths, system};
use crate::sync::Capacity;

pub struct LoadOptions {
    pub pins: PinPaths,
    pub cgroup: PathBuf,
    pub capacity: Capacity,
    /// Interfaces that get the XDP forward path and the TC reply path.
    pub xdp_ifaces: Vec<String>,
    /// What the socket hooks read from `LB_CONFIG` (e.g. the host-only scope).
    pub config: lb_common::LbConfig,
}

/// The loaded object; keep it alive for as long as the agent runs.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: BpfMaps,
    /// Whether the kernel has the `bpf_sock_destroy` kfunc (the socket iterators can run).
    pub sock_destroy_kfunc: bool,
}

pub fn load_and_attach(opts: &LoadOptions) -> Result<Loaded> {
    let bpffs = opts
        .pins
        .root()
        .parent()
        .context("the pin directory needs a parent (the bpffs mount)")?;
    system::ensure_bpffs(bpffs)?;
    std::fs::create_dir_all(opts.pins.links_dir())
        .with_context(|| format!("creating {}", opts.pins.links_dir().display()))?;

    let mut loader = EbpfLoader::new();
    for name in map_names::ALL {
        loader.map_pin_path(name, opts.pins.map(name));
    }
    loader
        .map_max_entries(map_names::SERVICES, opts.capacity.services)
        .map_max_entries(map_names::BACKENDS, opts.capacity.backends)
        .map_max_entries(map_names::REV_NAT, opts.capacity.rev_nat)
        .map_max_entries(map_names::CONN_STATS, opts.capacity.rev_nat)
        .map_max_entries(
            map_names::MAGLEV,
            opts.capacity
                .maglev_size
                .checked_mul(opts.capacity.maglev_tables)
                .context("--maglev-table-size x --maglev-tables overflows")?,
        );
    let log_level: &'static u8 = Box::leak(Box::new(bpf_log::programs_level() as u8));
    bpf_log::configure(&mut loader, log_level);
    let object = kfunc::resolve_for_kernel(EBPF_OBJECT)?;
    let mut ebpf = loader
        .load(object.bytes())
        .context("loading the eBPF object (is this kernel >= 5.18 with BTF, and are we root?)")?;

    let maps = BpfMaps::from_ebpf(&mut ebpf)?;
    super::scope::write(&mut ebpf, &opts.config)?;
    let cgroup = File::open(&opts.cgroup)
        .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;
    for name in program_names::ALL {
        attach_cgroup_program(&mut ebpf, name, &cgroup, &opts.cgroup, &opts.pins)?;
    }
    info!(cgroup = %opts.cgroup.display(), pins = %opts.pins.root().display(), "programs attached");
    if !opts.xdp_ifaces.is_empty() {
        attach_external(&mut ebpf, &opts.xdp_ifaces, &opts.pins)?;
    }
    Ok(Loaded {
        ebpf,
        maps,
        sock_destroy_kfunc: object.has("bpf_sock_destroy"),
    })
}

/// SNATed flows arrive with this node's address as their source (the SNAT on the way in, the
/// frontend on the way back), which the IPv4 stack drops as a martian unless the interface
/// accepts local sources.
fn accept_local_sources(iface: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))?;
    info!(
        iface,
        "accept_local=1 (SNATed flows carry this node's address as their source)"
    );
    Ok(())
}

/// Whether a pinned link exists at `path` (opened), or not.
fn pinned_link(path: &std::path::Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(path) {
        Ok(l) => Ok(Some(FdLink::from(l))),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    }
}

/// XDP (forward) and TC egress (replies) on each external interface. A link a previous agent
/// pinned is updated in place (BPF_LINK_UPDATE), so no packet meets a detached interface.
fn attach_external(ebpf: &mut Ebpf, ifaces: &[String], pins: &PinPaths) -> Result<()> {
    for iface in ifaces {
        accept_local_sources(iface)?;
    }
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::XDP_FORWARD)
        .context("the eBPF object has no XDP program")?
        .try_into()
        .context("lb_xdp_forward is not an XDP program")?;
    xdp.load()
        .context("loading lb_xdp_forward (the verifier said no)")?;
    for iface in ifaces {
        let pin = pins.link(&format!("xdp_{iface}"));
        if let Some(old) = pinned_link(&pin)? {
            let link = old.try_into().context("the pinned XDP link")?;
            xdp.attach_to_link(link)
                .with_context(|| format!("updating the XDP link of {iface}"))?;
            info!(iface, "XDP program replaced in place");
            continue;
        }
        let (id, mode) = match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                info!(iface, error = %e, "native XDP not available; using generic XDP");
                let id = xdp
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {iface}"))?;
                (id, "generic")
            }
        };
        let link: FdLink = xdp
            .take_link(id)?
            .try_into()
            .context("the XDP link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        info!(iface, mode, "XDP forward path attached");
    }

    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC_REPLY)
        .context("the eBPF object has no TC program")?
        .try_into()
        .context("lb_tc_reply is not a TC program")?;
    tc.load()
        .context("loading lb_tc_reply (the verifier said no)")?;
    for iface in ifaces {
        let pin = pins.link(&format!("tc_{iface}"));
        if let Some(old) = pinned_link(&pin)? {
            let link = old.try_into().context("the pinned TC link")?;
            tc.attach_to_link(link)
                .with_context(|| format!("updating the TC link of {iface}"))?;
            info!(iface, "TC reply program replaced in place");
            continue;
        }
        let id = tc
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching TC egress to {iface} (kernel >= 6.6 for tcx)"))?;
        let link: FdLink = tc
            .take_link(id)?
            .try_into()
            .context("the TC link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        info!(iface, "TC reply path attached (egress)");
    }
    Ok(())
}

fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &File,
    cgroup_path: &std::path::Path,
    pins: &PinPaths,
) -> Result<()> {
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a cgroup sock_addr program"))?;
    prog.load()
        .with_context(|| format!("loading {name} (the verifier said no)"))?;
    let final_path = pins.link(name);
    if final_path.exists() {
        let updated = prog.fd().map_err(anyhow::Error::from).and_then(|fd| {
            link_update::update_pinned_cgroup_link(&final_path, cgroup_path, fd.as_fd())
        });
        match updated {
            Ok(()) => {
                info!(
                    program = name,
                    "replaced the program behind the pinned link in place"
                );
                return Ok(());
            }
            Err(e) => warn!(
                program = name,
                error = %format!("{e:#}"),
                "cannot update the pinned link in place; attaching beside it and replacing its pin"
            ),
        }
    }
    // With BPF links the kernel wants no attach flags and always allows several links on one
    // cgroup, which is what lets a new agent attach beside the old one.
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {name}"))?;
    let link: FdLink = prog
        .take_link(id)
        .with_context(|| format!("taking the link of {name}"))?
        .try_into()
        .with_context(|| format!("{name}'s link is not an fd link (kernel < 5.7?)"))?;
    // bpffs refuses names with a dot.
    let tmp = pins.link(&format!("{name}_new"));
    if tmp.exists() {
        warn!(path = %tmp.display(), "removing a half-made link pin from an interrupted start");
        std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let pinned = link
        .pin(&tmp)
        .with_context(|| format!("pinning {name}'s link at {}", tmp.display()))?;
    let replaced = final_path.exists();
    std::fs::rename(&tmp, &final_path)
        .with_context(|| format!("moving {} over {}", tmp.display(), final_path.display()))?;
    drop(pinned);
    info!(program = name, replaced_previous = replaced, "attached");
    Ok(())
}

/// Removes every pin under the pin directory: the links (which detaches the programs, once
/// no agent holds them) and the maps.
pub fn cleanup(pins: &PinPaths) -> Result<bool> {
    let root = pins.root();
    if !root.exists() {
        return Ok(false);
    }
    // Detach every pinned link first, so the datapath is gone when cleanup returns (the
    // kernel releases an unpinned link only later, asynchronously).
    // (Iterator links attach to nothing; removing their pins is enough.)
    for entry in std::fs::read_dir(pins.links_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Err(e) = link_update::detach_pinned(&entry.path()) {
            warn!(link = %entry.path().display(), error = %format!("{e:#}"), "cannot detach; removing its pin anyway");
        }
    }
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    Ok(true)
}
