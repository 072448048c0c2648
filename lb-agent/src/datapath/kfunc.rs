//! Kfunc calls in the eBPF object, resolved before aya loads it.
//!
//! bpf-linker leaves a call to an `extern "C"` function (here `bpf_sock_destroy`) as `call -1`
//! with a relocation to an undefined symbol, and aya 0.14 refuses such a call ("function not
//! found while relocating"). A kfunc call is a call instruction with `src_reg =
//! BPF_PSEUDO_KFUNC_CALL` and the function's id in the kernel's BTF as `imm`, so the object is
//! patched to exactly that. A kfunc this kernel lacks becomes `r0 = -EOPNOTSUPP`, so the rest of
//! the object still loads; the programs that call it are then never loaded.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

const BPF_JMP_CALL: u8 = 0x85;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const BPF_MOV64_IMM: u8 = 0xb7;
const INSN_SIZE: usize = 8;

/// The object with its kfunc calls resolved, in 8-byte aligned memory (the ELF parser wants
/// aligned data).
pub struct Patched {
    words: Vec<u64>,
    len: usize,
    /// Kfuncs found in the kernel's BTF.
    pub resolved: BTreeSet<String>,
    /// Kfuncs this kernel does not have (their calls now return -EOPNOTSUPP).
    pub missing: BTreeSet<String>,
}

impl Patched {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn has(&self, kfunc: &str) -> bool {
        self.resolved.contains(kfunc)
    }
}

/// Rewrites every call to an undefined symbol in `elf`; `btf_id` looks a function up in the
/// kernel's BTF.
pub fn resolve(elf: &[u8], btf_id: impl Fn(&str) -> Option<u32>) -> Result<Patched> {
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..elf.len()].copy_from_slice(elf);
    let mut patches = Vec::new();
    {
        let file = object::File::parse(&bytes[..elf.len()]).context("parsing the eBPF object")?;
        for section in file.sections() {
            let Some((start, size)) = section.file_range() else {
                continue;
            };
            for (offset, rel) in section.relocations() {
                let RelocationTarget::Symbol(index) = rel.target() else {
                    continue;
                };
                let symbol = file
                    .symbol_by_index(index)
                    .context("a relocation names a missing symbol")?;
                if !symbol.is_undefined() {
                    continue;
                }
                let name = symbol.name().context("a symbol name is not UTF-8")?;
                if offset + INSN_SIZE as u64 > size {
                    bail!("relocation for {name} past the end of its section");
                }
                patches.push(((start + offset) as usize, name.to_string()));
            }
        }
    }
    let mut resolved = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for (at, name) in patches {
        let insn = &mut bytes[at..at + INSN_SIZE];
        if insn[0] != BPF_JMP_CALL {
            bail!("{name} is referenced by a non-call instruction; only kfunc calls are resolved");
        }
        match btf_id(&name) {
            Some(id) => {
                insn[1] = BPF_PSEUDO_KFUNC_CALL << 4; // dst_reg 0
                insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                insn[4..8].copy_from_slice(&(id as i32).to_le_bytes());
                resolved.insert(name);
            }
            None => {
                insn[0] = BPF_MOV64_IMM;
                insn[1] = 0; // r0
                insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                insn[4..8].copy_from_slice(&(-libc::EOPNOTSUPP).to_le_bytes());
                missing.insert(name);
            }
        }
    }
    Ok(Patched {
        words,
        len: elf.len(),
        resolved,
        missing,
    })
}

/// Resolves against the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
pub fn resolve_for_kernel(elf: &[u8]) -> Result<Patched> {
    let btf = aya::Btf::from_sys_fs();
    resolve(elf, |name| {
        btf.as_ref()
            .ok()?
            .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kfunc_calls(p: &Patched) -> Vec<(u8, i32)> {
        let file = object::File::parse(p.bytes()).unwrap();
        let mut out = Vec::new();
        for section in file.sections() {
            let Some((start, _)) = section.file_range() else {
                continue;
            };
            for (offset, rel) in section.relocations() {
                let RelocationTarget::Symbol(i) = rel.target() else {
                    continue;
                };
                if file.symbol_by_index(i).unwrap().is_undefined() {
                    let at = (start + offset) as usize;
                    let insn = &p.bytes()[at..at + 8];
                    out.push((
                        insn[1] >> 4,
                        i32::from_le_bytes(insn[4..8].try_into().unwrap()),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn the_sock_destroy_calls_become_kfunc_calls_by_btf_id() {
        let p = resolve(crate::datapath::EBPF_OBJECT, |n| {
            (n == "bpf_sock_destroy").then_some(4242)
        })
        .unwrap();
        assert!(p.has("bpf_sock_destroy"));
        assert!(p.missing.is_empty());
        let calls = kfunc_calls(&p);
        // One call in each of the two iterators.
        assert_eq!(calls, vec![(BPF_PSEUDO_KFUNC_CALL, 4242); 2]);
        assert_eq!(p.bytes().len(), crate::datapath::EBPF_OBJECT.len());
    }

    #[test]
    fn a_kfunc_the_kernel_lacks_becomes_an_error_return() {
        let p = resolve(crate::datapath::EBPF_OBJECT, |_| None).unwrap();
        assert!(!p.has("bpf_sock_destroy"));
        assert!(p.missing.contains("bpf_sock_destroy"));
        let file = object::File::parse(p.bytes()).unwrap();
        for section in file.sections() {
            let Some((start, _)) = section.file_range() else {
                continue;
            };
            for (offset, rel) in section.relocations() {
                let RelocationTarget::Symbol(i) = rel.target() else {
                    continue;
                };
                if file.symbol_by_index(i).unwrap().is_undefined() {
                    let at = (start + offset) as usize;
                    assert_eq!(p.bytes()[at], BPF_MOV64_IMM);
                }
            }
        }
    }
}
