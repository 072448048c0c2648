# syntax=docker/dockerfile:1
# lb-agent: one self-contained binary (the eBPF object is embedded at build time) in a small
# Debian image. Build with `docker build -t lb-agent .`; deploy/README.md says how to run it.

FROM rust:1-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The eBPF crate is built with nightly (-Z build-std=core for bpfel-unknown-none).
RUN rustup toolchain install nightly --profile minimal --component rust-src

# bpf-linker, linked against nightly rustc's own libLLVM so that both use the same LLVM (a
# plain `cargo install bpf-linker` wants a system LLVM of the newest major). The LLVM major
# comes from the nightly just installed; the symlinks give bpf-linker's build an LLVM prefix.
ARG BPF_LINKER_VERSION=0.13.0
RUN sysroot="$(rustc +nightly --print sysroot)" \
    && llvm_major="$(rustc +nightly --version --verbose | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
    && prefix=/opt/lb-bpf-llvm \
    && mkdir -p "$prefix/lib" \
    && for f in "$sysroot"/lib/libLLVM.so.*-rust-*; do \
         ln -sf "$f" "$prefix/lib/"; ln -sf "$f" "$prefix/lib/libLLVM.so"; \
       done \
    && LLVM_PREFIX="$prefix" cargo +nightly install --locked --version "$BPF_LINKER_VERSION" \
         bpf-linker --no-default-features --features "llvm-$llvm_major" \
    && bpf-linker --version

WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo xtask build-ebpf --release \
    && cargo build --release --locked -p lb-agent \
    && install -m 0755 target/release/lb-agent /usr/local/bin/lb-agent

FROM debian:bookworm-slim
# Nothing else is installed: the init container of deploy/daemonset.yaml uses the base image's
# /bin/sh, grep and mount to mount bpffs on the host.
COPY --from=builder /usr/local/bin/lb-agent /usr/local/bin/lb-agent
ENTRYPOINT ["/usr/local/bin/lb-agent"]
