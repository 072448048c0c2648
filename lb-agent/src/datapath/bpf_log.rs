//! Log lines from the BPF programs (aya-log): the programs write debug records into a ring
//! buffer; this drains it into `tracing` under the target `lb_ebpf`. The programs' own level
//! filter (`AYA_LOG_LEVEL`) is set at load from the agent's log filter, so with the default
//! `info` the hooks skip the logging code entirely; `RUST_LOG=info,lb_ebpf=debug` turns it on.

use aya::{Ebpf, EbpfLoader};
use aya_log::{EbpfLogger, Level as BpfLevel};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

/// The target the programs' log lines carry.
pub const TARGET: &str = "lb_ebpf";

/// The most verbose level the programs should emit, from the agent's tracing filter.
pub fn programs_level() -> BpfLevel {
    if tracing::enabled!(target: TARGET, tracing::Level::TRACE) {
        BpfLevel::Trace
    } else if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        BpfLevel::Debug
    } else if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        BpfLevel::Info
    } else {
        BpfLevel::Warn
    }
}

/// Sets the programs' level filter before the object is loaded.
pub fn configure(loader: &mut EbpfLoader<'_>, level: &'static u8) {
    // must_exist false: an object whose programs log nothing has no such global.
    loader.override_global(aya_log::LEVEL, level, false);
}

/// Forwards `log` records (what aya-log produces) to tracing.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{msg}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{msg}"),
            log::Level::Info => tracing::info!(target: TARGET, "{msg}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{msg}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{msg}"),
        }
    }
    fn flush(&self) {}
}

/// Starts draining the programs' log ring buffer on the current tokio runtime. Without it
/// (an object that logs nothing, or an error) the agent runs on and says so once.
pub fn spawn_drain(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "no log lines from the BPF programs");
            return None;
        }
    };
    // SAFETY: the logger owns the ring buffer's fd; it stays open and the same for as long
    // as the AsyncFd owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the BPF programs' log buffer");
            return None;
        }
    };
    debug!("draining the BPF programs' log lines");
    Some(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "the BPF programs' log buffer failed; no more log lines");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
