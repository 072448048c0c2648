//! Embeds the eBPF object that `cargo xtask build-ebpf` wrote, so the agent is one file.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .parent()
        .expect("lb-agent sits in the workspace")
        .to_path_buf();
    let candidates: Vec<PathBuf> = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => vec![PathBuf::from(p)],
        None => ["release", "debug"]
            .iter()
            .map(|p| {
                root.join("target/lb-ebpf/bpfel-unknown-none")
                    .join(p)
                    .join("lb-ebpf")
            })
            .collect(),
    };
    // Only the objects that exist: cargo treats a missing rerun-if-changed path as always
    // changed, which rebuilt the agent on every build.
    for c in candidates.iter().filter(|c| c.exists()) {
        println!("cargo:rerun-if-changed={}", c.display());
    }
    // The newest object wins: the one the last `build-ebpf` wrote.
    let newest = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone());
    let Some(object) = newest else {
        panic!(
            "the eBPF object is missing (looked for {candidates:?}): run `cargo xtask build-ebpf` first"
        );
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("lb-ebpf.o");
    std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
}
