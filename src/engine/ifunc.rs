//! Targets that are GNU indirect functions (`STT_GNU_IFUNC`: glibc's `strlen`, `memcpy`,
//! `strcmp`, ...). The symbol's address is its resolver, which the dynamic linker called once to
//! choose an implementation (`__strlen_avx2`, `__strlen_sse2`, ...) for this machine; the code to
//! patch is the implementation, not the resolver.
//!
//! Which implementations there are is read from the object on disk: every address the
//! resolver's own code computes with a RIP-relative `lea` (how a resolver names what it returns)
//! that is the start of a function the object's tables know (a `.dynsym` or `.symtab` function,
//! one of the debug file's, or a frame description entry of `.eh_frame`) inside an executable
//! segment. A 32-bit (i386) resolver has no RIP-relative addressing: it finds its own address
//! with `call __x86.get_pc_thunk.REG`, adds the distance to its GOT, and computes each
//! implementation with a `lea` from that register (see [`lea_targets_i386`]). Which one the
//! process uses is read from the process, as a hint: the value the object's own `IRELATIVE`
//! slots hold (libc's internal calls go through these), and the values the `GLOB_DAT` and
//! `JUMP_SLOT` slots naming the symbol hold in every object it maps. Such a value must be one of the implementations found on disk, else the target is
//! refused. The resolver is never run, here or in the process.
//!
//! Every implementation found is patched, with the same replacement (each implements the same
//! function, so the replacement is right for any of them): a later `dlopen` or lazy binding that
//! asks the resolver again cannot reach unpatched code, whatever it answers. The one in use is
//! recorded as such (`strlen → __strlen_avx2 → strlen_fixed`).

use crate::elf::extent::{unwind_extent, DebugSymbols};
use crate::elf::versions;
use crate::elf::{Object, SymKind, Symbol};
use crate::error::{Error, Result};
use crate::target::{Loaded, Target};
use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};
use pannus_kernel::Arch;
use std::collections::HashMap;

/// `R_X86_64_GLOB_DAT` and `R_386_GLOB_DAT`.
const R_GLOB_DAT: u32 = 6;
/// `R_X86_64_JUMP_SLOT` and `R_386_JMP_SLOT`.
const R_JUMP_SLOT: u32 = 7;
/// `R_X86_64_IRELATIVE`.
const R_IRELATIVE: u32 = 37;
/// `R_386_IRELATIVE`.
const R_386_IRELATIVE: u32 = 42;

/// How much of a resolver is decoded at most.
const MAX_RESOLVER: u64 = 4096;

/// One implementation an indirect function's resolver can return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Implementation {
    /// Its virtual address in the object.
    pub vaddr: u64,
    pub size: u64,
    /// Its names in the object's tables or its debug file, global ones first; empty when only
    /// `.eh_frame` knows it.
    pub names: Vec<String>,
    /// A slot of the process holds it: the process calls it.
    pub in_use: bool,
}

impl Implementation {
    /// Its other names (the functions that share its code), for messages.
    pub fn aliases(&self) -> &[String] {
        self.names.get(1..).unwrap_or_default()
    }

    /// Its name, or where it is in the object (`libc.so.6+0x156200`) when unnamed.
    pub fn label(&self, object: &Object) -> String {
        match self.names.first() {
            Some(n) => n.clone(),
            None => {
                let file = object.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                format!("{file}+{:#x}", self.vaddr)
            }
        }
    }
}

/// A function start `vaddr` of `object`: its names and size, from its own tables, then the
/// debug file's, then `.eh_frame`; `None` when nothing there starts a function at `vaddr`
/// inside an executable segment. The names come file-local ones first (an implementation's own
/// name, `__strlen_avx2`), then the exported ones that share its code, with their versions
/// (`memcpy@GLIBC_2.2.5`).
fn function_at(object: &Object, debug: Option<&DebugSymbols>, vaddr: u64) -> Option<(Vec<String>, u64)> {
    let mut local: Vec<String> = Vec::new();
    let mut global: Vec<String> = Vec::new();
    let mut size = 0;
    let mut add = |name: String, is_global: bool| {
        let bare = |n: &str| n.split('@').next().unwrap_or_default().to_string();
        let taken = local.iter().chain(&global).any(|n| n == &name || (bare(n) == bare(&name) && !name.contains('@')));
        if !taken {
            // A versioned name replaces the same name written without its version.
            global.retain(|n| n != &bare(&name));
            if is_global {
                global.push(name)
            } else {
                local.push(name)
            }
        }
    };
    for (dynamic, table) in [(true, &object.dynsyms), (false, &object.symtab)] {
        for s in table.iter().filter(|s| s.defined && s.kind == SymKind::Func && s.value == vaddr && s.size > 0) {
            size = size.max(s.size);
            let name = match (&s.version, dynamic) {
                (Some(v), true) if s.default_version => format!("{}@@{v}", s.name),
                (Some(v), true) => format!("{}@{v}", s.name),
                _ => s.name.clone(),
            };
            add(name, s.global);
        }
    }
    if let Some(d) = debug {
        for s in d.functions_at(vaddr) {
            size = size.max(s.size);
            // The debug file's `.symtab` writes versions into the names (`memcpy@GLIBC_2.2.5`).
            add(s.name.clone(), s.global);
        }
    }
    if size == 0 {
        size = unwind_extent(object, vaddr)?;
    }
    let end = vaddr.checked_add(size)?;
    local.extend(global);
    object.segments.iter().any(|s| s.exec && s.vaddr <= vaddr && end <= s.vaddr + s.memsz).then_some((local, size))
}

/// The addresses the resolver at `resolver` (`size` bytes) computes with a RIP-relative `lea`,
/// in the order its code computes them, read from the object's file.
pub fn lea_targets(object: &Object, resolver: u64, size: u64) -> Vec<u64> {
    let len = if size == 0 { 256 } else { size.min(MAX_RESOLVER) };
    // Within the segment's bytes in the file (a resolver without a size near its end).
    let Some(seg) = object.segments.iter().find(|s| s.vaddr <= resolver && resolver < s.vaddr + s.filesz) else {
        return Vec::new();
    };
    let len = len.min(seg.vaddr + seg.filesz - resolver);
    let Some(code) = object.bytes_at(resolver, len) else { return Vec::new() };
    if object.arch == Arch::I386 {
        return lea_targets_i386(object, code, resolver);
    }
    let mut out = Vec::new();
    for i in Decoder::with_ip(64, code, resolver, DecoderOptions::NONE).iter() {
        if i.mnemonic() == Mnemonic::Lea && i.is_ip_rel_memory_operand() {
            let a = i.ip_rel_memory_address();
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// [`lea_targets`] for a 32-bit resolver (`code`, at `resolver`), which computes addresses from
/// its own: `call __x86.get_pc_thunk.REG` (a function that is `mov (%esp), REG; ret`) leaves
/// the call's return address in REG, an `add $imm, REG` moves it (to the GOT), and each
/// `lea disp(REG), DEST` computes one address. The code is read straight through, branches and
/// returns included (a resolver computes its base once, at its start); every other write to a
/// register, as iced-x86 reports the instruction's writes, makes it unknown, and a `call`
/// elsewhere forgets `eax`, `ecx` and `edx`, which the callee may change.
fn lea_targets_i386(object: &Object, code: &[u8], resolver: u64) -> Vec<u64> {
    let mut known: HashMap<Register, u32> = HashMap::new();
    let mut info = InstructionInfoFactory::new();
    let mut out = Vec::new();
    for i in Decoder::with_ip(32, code, resolver, DecoderOptions::NONE).iter() {
        // The 32-bit general register operand 0 names, if it is one.
        let dest = (i.op_count() > 0 && i.op0_kind() == OpKind::Register && i.op0_register().is_gpr32())
            .then(|| i.op0_register());
        match (i.mnemonic(), dest) {
            (Mnemonic::Call, _) => {
                let thunk =
                    matches!(i.op0_kind(), OpKind::NearBranch32).then(|| pc_thunk(object, i.near_branch_target()));
                for r in [Register::EAX, Register::ECX, Register::EDX] {
                    known.remove(&r);
                }
                if let Some(Some(reg)) = thunk {
                    known.insert(reg, i.next_ip() as u32);
                }
                continue;
            }
            (Mnemonic::Add, Some(r)) if matches!(i.op1_kind(), OpKind::Immediate32 | OpKind::Immediate8to32) => {
                // `immediate` sign-extends an 8-bit immediate, as the CPU does.
                if let Some(v) = known.get_mut(&r) {
                    *v = v.wrapping_add(i.immediate(1) as u32);
                }
                continue;
            }
            (Mnemonic::Lea, Some(r)) => {
                let base = known.get(&i.memory_base()).copied().filter(|_| i.memory_index() == Register::None);
                if let Some(b) = base {
                    let a = b.wrapping_add(i.memory_displacement32());
                    if !out.contains(&u64::from(a)) {
                        out.push(u64::from(a));
                    }
                    known.insert(r, a);
                    continue;
                }
            }
            _ => {}
        }
        for used in info.info(&i).used_registers() {
            let written = matches!(
                used.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            );
            if written {
                known.remove(&used.register().full_register32());
            }
        }
    }
    out
}

/// The register `__x86.get_pc_thunk.*` at `at` returns its caller's address in, when the code
/// there is `mov (%esp), REG; ret`.
fn pc_thunk(object: &Object, at: u64) -> Option<Register> {
    let code = object.bytes_at(at, 4)?;
    let mut d = Decoder::with_ip(32, code, at, DecoderOptions::NONE);
    let (mov, ret): (Instruction, Instruction) = (d.decode(), d.decode());
    let plain = mov.mnemonic() == Mnemonic::Mov
        && mov.op0_kind() == OpKind::Register
        && mov.op1_kind() == OpKind::Memory
        && mov.memory_base() == Register::ESP
        && mov.memory_index() == Register::None
        && mov.memory_displacement32() == 0
        && ret.mnemonic() == Mnemonic::Ret
        && ret.op_count() == 0;
    plain.then(|| mov.op0_register())
}

/// The implementations of the indirect function `sym` of `object` (named `target` in the
/// manifest), the ones the process uses first: see the module's documentation.
pub fn implementations(
    target: &mut Target,
    object: &Loaded,
    sym: &Symbol,
    name: &str,
    debug: Option<&DebugSymbols>,
) -> Result<Vec<Implementation>> {
    let o = &object.object;
    let path = o.path.display().to_string();
    let mut found: Vec<Implementation> = Vec::new();
    for vaddr in lea_targets(o, sym.value, sym.size) {
        if let Some((names, size)) = function_at(o, debug, vaddr) {
            found.push(Implementation { vaddr, size, names, in_use: false });
        }
    }
    for (slot, holder, value) in bound_values(target, object, sym, name) {
        if (holder.lo..holder.hi).contains(&value) && !(object.lo..object.hi).contains(&value) {
            // Not bound yet: a lazy binding's slot points back into its own object's PLT.
            continue;
        }
        let Some(vaddr) = value.checked_sub(object.bias).filter(|_| (object.lo..object.hi).contains(&value)) else {
            // Bound elsewhere (the vDSO for `time`, or another object's definition found first):
            // calls through this slot would never reach the object's code, fixed or not.
            let elsewhere = target.maps.iter().find(|m| m.contains(value)).map_or("no mapping".to_string(), |m| {
                if m.path.is_empty() {
                    "anonymous memory".into()
                } else {
                    m.path.clone()
                }
            });
            return Err(Error::precondition(format!(
                "process {}: the slot of `{name}` at {slot:#x} (in {}) holds {value:#x}, in {elsewhere}: calls through it \
                 do not reach {path}, so replacing `{name}` there would not fix them",
                target.pid, holder.mapped_path
            ))
            .hint("nothing was done; replace the function where the process binds it"));
        };
        if let Some(k) = found.iter().position(|f| f.vaddr == vaddr) {
            found[k].in_use = true;
            continue;
        }
        match function_at(o, debug, vaddr) {
            Some((names, size)) => found.push(Implementation { vaddr, size, names, in_use: true }),
            None => {
                return Err(Error::precondition(format!(
                    "process {}: the slot of `{name}` at {slot:#x} (in {}) holds {value:#x}, which is no \
                     implementation of `{name}` in {path}: not a function start its tables know",
                    target.pid, holder.mapped_path
                ))
                .hint("nothing was done; the process's binding does not match the file on disk"))
            }
        }
    }
    if found.is_empty() {
        return Err(Error::precondition(format!(
            "`{name}` in {path} is an indirect function whose implementations pannus cannot find (its resolver \
             names no function start the object's tables or .eh_frame know)"
        ))
        .hint("install the object's debug file (for the C library: libc6-dbg), or name the implementation in functions[].target"));
    }
    found.sort_by_key(|f| (!f.in_use, f.vaddr));
    Ok(found)
}

/// Every relocated slot of the process that binds `sym` (`name`, maybe versioned) of `object`:
/// `(slot address, the object holding it, the value it holds)`. The object's own
/// `R_X86_64_IRELATIVE` slots whose addend is the resolver, and the `GLOB_DAT` and `JUMP_SLOT`
/// slots importing the symbol in every object the process maps. (Data a relocation initialised,
/// `R_X86_64_64`, is the program's to change: no binding.)
fn bound_values(target: &mut Target, object: &Loaded, sym: &Symbol, name: &str) -> Vec<(u64, Loaded, u64)> {
    let wanted = versions::split(name);
    let i386 = object.object.arch == Arch::I386;
    let irelative = if i386 { R_386_IRELATIVE } else { R_IRELATIVE };
    let mut slots: Vec<(u64, Loaded)> = Vec::new();
    // An i386 addend is the 32-bit word in place, read sign-extended.
    let addend = |a: i64| if i386 { a as u64 & 0xffff_ffff } else { a as u64 };
    for r in object.object.relocs.iter().filter(|r| r.rtype == irelative && addend(r.addend) == sym.value) {
        slots.push((object.addr(r.offset), object.clone()));
    }
    for l in target.loaded_objects() {
        for r in &l.object.relocs {
            if !matches!(r.rtype, R_GLOB_DAT | R_JUMP_SLOT) {
                continue;
            }
            let Some(s) = r.sym.and_then(|i| l.object.dynsyms.get(i)) else { continue };
            let version_ok = match (wanted.version, s.version.as_deref()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            };
            // An i386 `REL` slot's word in place is no addend for these two types (it is the
            // lazy binding's way back into the PLT).
            if s.name == wanted.name && !s.defined && (i386 || r.addend == 0) && version_ok {
                slots.push((l.addr(r.offset), l.clone()));
            }
        }
    }
    slots.into_iter().filter_map(|(slot, holder)| target.read_word(slot).ok().map(|v| (slot, holder, v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolver_of_strlen_names_its_implementations() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap();
        let o = Object::load_tables(std::path::Path::new(path), "libc").unwrap();
        let strlen = o.lookup_dynamic("strlen", None).unwrap();
        assert_eq!(strlen.kind, SymKind::Ifunc);
        let debug = DebugSymbols::for_object(&o);
        let found: Vec<_> = lea_targets(&o, strlen.value, strlen.size)
            .into_iter()
            .filter_map(|a| function_at(&o, debug.as_ref(), a).map(|f| (a, f)))
            .collect();
        assert!(found.len() >= 2, "{found:?}");
        if debug.is_some() {
            assert!(
                found.iter().any(|(_, (names, _))| names.first().is_some_and(|n| n == "__strlen_sse2")),
                "{found:?}"
            );
        }
        // Without the debug file, `.eh_frame` alone finds the same functions, unnamed, with the
        // same sizes.
        let bare: Vec<_> = lea_targets(&o, strlen.value, strlen.size)
            .into_iter()
            .filter_map(|a| function_at(&o, None, a).map(|f| (a, f)))
            .collect();
        assert_eq!(bare.len(), found.len(), "{bare:?}");
        for ((a, (names, size)), (b, (_, full))) in bare.iter().zip(&found) {
            assert_eq!((a, size), (b, full));
            assert!(names.is_empty(), "{names:?}");
            let i = Implementation { vaddr: *a, size: *size, names: names.clone(), in_use: false };
            assert!(i.label(&o).starts_with("libc.so.6+0x"), "{}", i.label(&o));
        }
        // What the resolver computes that starts no function is no implementation.
        assert!(function_at(&o, None, strlen.value + 1).is_none());
    }
}
