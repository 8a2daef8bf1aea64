//! Symbol resolution and relocation math for the `mmap` method: pure functions, no process.
//!
//! Stage 2 binds each symbol the module refers to in the order ARCHITECTURE.md gives (the
//! module itself, the patches it requires, the target object with its file-local symbols, then
//! every other object the process has loaded, symbol versions respected), then computes every
//! relocation over an image of the module in pannus's own memory. Only the bytes that changed
//! are written to the target, one write per run of changed pages.

use crate::elf::{Reloc, SymKind, Symbol};
use crate::error::{Error, Result};
use crate::target::Loaded;
use std::ops::Range;

pub const R_NONE: u32 = 0;
pub const R_64: u32 = 1;
pub const R_PC32: u32 = 2;
pub const R_PLT32: u32 = 4;
pub const R_GLOB_DAT: u32 = 6;
pub const R_JUMP_SLOT: u32 = 7;
pub const R_RELATIVE: u32 = 8;
pub const R_32: u32 = 10;
pub const R_32S: u32 = 11;

/// The relocation types the `mmap` method applies; a module with any other is refused.
/// `R_32` and `R_32S` come only from a module's fixups (see [`crate::elf::FIXUPS`]).
pub const SUPPORTED: [u32; 9] = [R_NONE, R_64, R_PC32, R_PLT32, R_GLOB_DAT, R_JUMP_SLOT, R_RELATIVE, R_32, R_32S];

/// The ELF name of an x86-64 relocation type, for messages.
pub fn reloc_name(t: u32) -> String {
    let name = goblin::elf::reloc::r_to_str(t, goblin::elf::header::EM_X86_64);
    format!("R_X86_64_{}", name.trim_start_matches("R_").trim_start_matches("X86_64_"))
}

/// Where a symbol the module refers to comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Defined by the module itself at this virtual address.
    Module(u64),
    /// An absolute run-time address in the target.
    Abs(u64),
    /// A GNU indirect function: the resolver's address; the resolver is called in stage 2.
    Ifunc(u64),
    /// An undefined weak symbol.
    Zero,
}

/// What one place of lookup has for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// A definition: its kind and run-time address.
    Definition(SymKind, u64),
    /// Several file-local definitions, none global: which one is meant cannot be told.
    Ambiguous(usize),
}

/// One place symbols are looked up in (a required patch, the target object, a library).
pub trait Scope {
    /// What to call it in messages.
    fn origin(&self) -> String;
    /// Whether it counts as "a required patch" in messages about thread-local variables.
    fn role(&self) -> Role;
    /// Its definition of `name`, at `version` when the reference asks for one.
    fn find(&self, name: &str, version: Option<&str>) -> Found;
}

/// The part a scope plays in the lookup order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    RequiredPatch,
    TargetObject,
    Library,
}

/// Resolves one symbol the module refers to: the module's own definition (unless the target
/// has a global of that name, listed in `dropped`: then the target's wins), else the first
/// scope that defines it, in the order given. `target` names the target object for the message
/// when nothing defines it.
pub fn resolve(s: &Symbol, dropped: &[String], scopes: &[&dyn Scope], target: &str) -> Result<Value> {
    let tls = |from: &str| {
        Error::bad_input(format!(
            "`{}` is a thread-local variable of {from}, which load: mmap does not support",
            s.name
        ))
    };
    if s.defined && !dropped.contains(&s.name) {
        return match s.kind {
            SymKind::Tls => Err(tls("the module")),
            SymKind::Ifunc => Err(Error::bad_input(format!(
                "`{}` is an indirect function of the module, which load: mmap does not support",
                s.name
            ))),
            _ => Ok(Value::Module(s.value)),
        };
    }
    for scope in scopes {
        match scope.find(&s.name, s.version.as_deref()) {
            Found::Nothing => {}
            Found::Ambiguous(n) => {
                return Err(Error::precondition(format!(
                    "`{}` is ambiguous in {}: {n} file-local definitions",
                    s.name,
                    scope.origin()
                )))
            }
            Found::Definition(SymKind::Tls, _) => {
                return Err(tls(&match scope.role() {
                    Role::RequiredPatch => "a required patch".to_string(),
                    Role::TargetObject => "the target object".to_string(),
                    Role::Library => scope.origin(),
                }))
            }
            // A required patch is mapped by pannus: no resolver ran for it, its address is final.
            Found::Definition(SymKind::Ifunc, a) if scope.role() != Role::RequiredPatch => return Ok(Value::Ifunc(a)),
            Found::Definition(_, a) => return Ok(Value::Abs(a)),
        }
    }
    if s.weak {
        return Ok(Value::Zero);
    }
    let ver = s.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default();
    Err(Error::precondition(format!(
        "symbol `{}{ver}` needed by the module is defined nowhere: not in the module, the patches it requires, \
         {target}, nor any library the process has loaded",
        s.name
    ))
    .hint("add the missing patch to `requires`, or build the module against this program"))
}

/// The module's loadable bytes laid out as they are mapped, from virtual address `lo` on:
/// what the relocations are applied to.
pub fn image(span: Range<u64>, segments: &[(u64, &[u8])]) -> Vec<u8> {
    let mut image = vec![0u8; (span.end - span.start) as usize];
    for &(vaddr, bytes) in segments {
        let at = vaddr.saturating_sub(span.start) as usize;
        if let Some(dst) = at.checked_add(bytes.len()).and_then(|end| image.get_mut(at..end)) {
            dst.copy_from_slice(bytes);
        }
    }
    image
}

/// Applies `relocs` to `image` (the module's bytes from virtual address `lo`, loaded at
/// `bias`), with `value(i)` the run-time address of symbol `i`. Returns the byte ranges of the
/// image that changed, as runs of whole pages clipped to the image. `name(i)` names symbol `i`
/// for messages.
pub fn relocate(
    relocs: &[Reloc],
    image: &mut [u8],
    lo: u64,
    bias: u64,
    value: impl Fn(usize) -> u64,
    name: impl Fn(usize) -> String,
) -> Result<Vec<Range<usize>>> {
    let width = |r: &Reloc| match r.rtype {
        R_NONE => None,
        R_PC32 | R_PLT32 | R_32 | R_32S => Some(4),
        _ => Some(8),
    };
    write_fields(relocs, image, lo, width, |r| {
        let s = match r.sym {
            Some(i) => value(i),
            // A module fixup for a place in the module itself (see [`crate::elf::Fixup`]).
            None if matches!(r.rtype, R_32 | R_32S) => bias,
            None => 0,
        };
        let place = bias.wrapping_add(r.offset);
        Ok(match r.rtype {
            R_RELATIVE => bias.wrapping_add_signed(r.addend).to_le_bytes().to_vec(),
            R_64 | R_GLOB_DAT | R_JUMP_SLOT => s.wrapping_add_signed(r.addend).to_le_bytes().to_vec(),
            R_PC32 | R_PLT32 => {
                let v = s.wrapping_add_signed(r.addend).wrapping_sub(place) as i64;
                let v = i32::try_from(v).map_err(|_| {
                    Error::precondition(format!(
                        "`{}` is out of the ±2 GiB reach of a {} relocation",
                        r.sym.map(&name).unwrap_or_default(),
                        reloc_name(r.rtype)
                    ))
                })?;
                v.to_le_bytes().to_vec()
            }
            R_32 | R_32S => {
                let v = s.wrapping_add_signed(r.addend);
                let fits = if r.rtype == R_32 { u32::try_from(v).is_ok() } else { i32::try_from(v as i64).is_ok() };
                if !fits {
                    return Err(Error::precondition(format!(
                        "`{}` at {v:#x} does not fit the 32-bit field of a {} relocation",
                        r.sym.map(&name).unwrap_or_default(),
                        reloc_name(r.rtype)
                    )));
                }
                (v as u32).to_le_bytes().to_vec()
            }
            t => return Err(Error::bad_input(format!("relocation {} is not supported by load: mmap", reloc_name(t)))),
        })
    })
}

/// Writes each relocation of `relocs` into `image` (the module's bytes from virtual address
/// `lo`): `width(r)` bytes (`None`: nothing to write), checked to lie inside the image before
/// `field(r)` computes them. Returns the byte ranges that changed, as runs of whole pages
/// clipped to the image. The one loop of the x86-64 and i386 relocators, which differ only in
/// what each field holds.
pub(super) fn write_fields(
    relocs: &[Reloc],
    image: &mut [u8],
    lo: u64,
    width: impl Fn(&Reloc) -> Option<usize>,
    mut field: impl FnMut(&Reloc) -> Result<Vec<u8>>,
) -> Result<Vec<Range<usize>>> {
    const PAGE: usize = 4096;
    let size = image.len();
    let mut dirty = vec![false; size.div_ceil(PAGE)];
    for r in relocs {
        let Some(width) = width(r) else { continue };
        let at = r.offset.wrapping_sub(lo) as usize;
        if at.checked_add(width).is_none_or(|e| e > size) {
            return Err(Error::bad_input(format!("relocation at {:#x} lies outside the module", r.offset)));
        }
        let bytes = field(r)?;
        image[at..at + width].copy_from_slice(&bytes[..width]);
        dirty[at / PAGE..=(at + width - 1) / PAGE].fill(true);
    }
    Ok(dirty_runs(&dirty, size))
}

/// The byte ranges, whole pages (the last cut at `size`), of the runs of pages marked in `dirty`.
fn dirty_runs(dirty: &[bool], size: usize) -> Vec<std::ops::Range<usize>> {
    const PAGE: usize = 4096;
    let mut runs = Vec::new();
    let mut pg = 0;
    while pg < dirty.len() {
        if !dirty[pg] {
            pg += 1;
            continue;
        }
        let start = pg;
        while pg < dirty.len() && dirty[pg] {
            pg += 1;
        }
        runs.push(start * PAGE..(pg * PAGE).min(size));
    }
    runs
}

/// A patch the module requires, mapped by pannus at `bias`: its exported definitions.
pub struct RequiredPatch {
    pub object: std::sync::Arc<crate::elf::Object>,
    pub bias: u64,
}

impl Scope for RequiredPatch {
    fn origin(&self) -> String {
        self.object.path.display().to_string()
    }
    fn role(&self) -> Role {
        Role::RequiredPatch
    }
    fn find(&self, name: &str, _version: Option<&str>) -> Found {
        match self.object.lookup_dynamic(name, None) {
            Some(d) => Found::Definition(d.kind, self.bias.wrapping_add(d.value)),
            None => Found::Nothing,
        }
    }
}

/// An object the process has loaded, as a place of lookup: the target object gives every
/// definition, file-local ones included (its `.symtab`); another library its exported
/// definitions, as ld.so binds them, symbol versions respected.
pub struct InProcess<'a> {
    pub object: &'a Loaded,
    /// [`Role::TargetObject`] or [`Role::Library`].
    pub role: Role,
}

impl Scope for InProcess<'_> {
    fn origin(&self) -> String {
        self.object.mapped_path.clone()
    }
    fn role(&self) -> Role {
        self.role
    }
    fn find(&self, name: &str, version: Option<&str>) -> Found {
        let o = self.object;
        let found = match self.role {
            Role::TargetObject => o.object.lookup(name),
            _ => Ok(o.object.lookup_dynamic(name, version)),
        };
        match found {
            Ok(Some(d)) => Found::Definition(d.kind, o.addr(d.value)),
            Ok(None) => Found::Nothing,
            Err(addrs) => Found::Ambiguous(addrs.len()),
        }
    }
}

/// The run-time address of the first function among `names` that a loaded object exports.
pub fn exported_function(objects: &[Loaded], names: &[&str]) -> Option<u64> {
    objects.iter().find_map(|o| {
        names.iter().find_map(|n| {
            o.object.lookup_dynamic(n, None).filter(|s| s.defined && s.kind == SymKind::Func).map(|s| o.addr(s.value))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    struct Fake {
        origin: &'static str,
        role: Role,
        defs: HashMap<(&'static str, Option<&'static str>), Found>,
    }

    impl Scope for Fake {
        fn origin(&self) -> String {
            self.origin.into()
        }
        fn role(&self) -> Role {
            self.role
        }
        fn find(&self, name: &str, version: Option<&str>) -> Found {
            let key = self.defs.keys().find(|(n, v)| *n == name && (v.is_none() || *v == version));
            key.map(|k| self.defs[k]).unwrap_or(Found::Nothing)
        }
    }

    fn fake(origin: &'static str, role: Role, defs: &[(&'static str, Option<&'static str>, Found)]) -> Fake {
        Fake { origin, role, defs: defs.iter().map(|&(n, v, f)| ((n, v), f)).collect() }
    }

    fn sym(name: &str, defined: bool) -> Symbol {
        Symbol {
            name: name.into(),
            value: 0x1100,
            size: 16,
            kind: SymKind::Func,
            global: true,
            weak: false,
            defined,
            version: None,
            default_version: true,
            file: None,
        }
    }

    fn scopes() -> (Fake, Fake, Fake) {
        let required =
            fake("base.so", Role::RequiredPatch, &[("helper", None, Found::Definition(SymKind::Func, 0x7000))]);
        let target = fake(
            "/usr/sbin/svc",
            Role::TargetObject,
            &[
                ("counter", None, Found::Definition(SymKind::Object, 0x5000)),
                ("helper", None, Found::Definition(SymKind::Func, 0x5100)),
                ("step", None, Found::Ambiguous(2)),
                ("pick", None, Found::Definition(SymKind::Ifunc, 0x5200)),
            ],
        );
        let libc = fake(
            "/lib/libc.so.6",
            Role::Library,
            &[
                ("memcpy", Some("GLIBC_2.14"), Found::Definition(SymKind::Func, 0x9000)),
                ("strlen", None, Found::Definition(SymKind::Ifunc, 0x9100)),
                ("errno_tls", None, Found::Definition(SymKind::Tls, 0x10)),
            ],
        );
        (required, target, libc)
    }

    fn resolve_in(s: &Symbol, dropped: &[String]) -> Result<Value> {
        let (a, b, c) = scopes();
        resolve(s, dropped, &[&a, &b, &c], "/usr/sbin/svc")
    }

    #[test]
    fn the_module_binds_to_itself_first_unless_the_target_has_the_global() {
        assert_eq!(resolve_in(&sym("counter", true), &[]).unwrap(), Value::Module(0x1100));
        assert_eq!(resolve_in(&sym("counter", true), &["counter".into()]).unwrap(), Value::Abs(0x5000));
    }

    #[test]
    fn lookup_order_is_required_patches_then_target_then_libraries() {
        assert_eq!(resolve_in(&sym("helper", false), &[]).unwrap(), Value::Abs(0x7000), "the required patch wins");
        let mut memcpy = sym("memcpy", false);
        memcpy.version = Some(Arc::from("GLIBC_2.14"));
        assert_eq!(resolve_in(&memcpy, &[]).unwrap(), Value::Abs(0x9000));
        memcpy.version = Some(Arc::from("GLIBC_2.2.5"));
        let e = resolve_in(&memcpy, &[]).unwrap_err();
        assert!(e.message.contains("`memcpy@GLIBC_2.2.5`") && e.message.contains("defined nowhere"), "{e}");
    }

    #[test]
    fn indirect_functions_are_resolved_in_the_target_and_refused_in_the_module() {
        assert_eq!(resolve_in(&sym("strlen", false), &[]).unwrap(), Value::Ifunc(0x9100));
        assert_eq!(resolve_in(&sym("pick", false), &[]).unwrap(), Value::Ifunc(0x5200));
        let mut own = sym("own", true);
        own.kind = SymKind::Ifunc;
        assert!(resolve_in(&own, &[]).unwrap_err().message.contains("indirect function of the module"));
    }

    #[test]
    fn refusals_name_the_symbol_and_where_it_is() {
        let e = resolve_in(&sym("step", false), &[]).unwrap_err();
        assert!(e.message.contains("`step` is ambiguous in /usr/sbin/svc: 2"), "{e}");
        let e = resolve_in(&sym("errno_tls", false), &[]).unwrap_err();
        assert!(e.message.contains("thread-local variable of /lib/libc.so.6"), "{e}");
        let mut weak = sym("maybe", false);
        weak.weak = true;
        assert_eq!(resolve_in(&weak, &[]).unwrap(), Value::Zero);
    }

    fn reloc(offset: u64, rtype: u32, sym: Option<usize>, addend: i64) -> Reloc {
        Reloc { offset, rtype, sym, addend }
    }

    #[test]
    fn relocations_compute_as_ld_so_does() {
        let lo = 0x1000;
        let bias = 0x7f00_0000_0000;
        let mut img = image(lo..lo + 0x3000, &[(0x1000, &[0xaa; 16])]);
        assert_eq!(&img[..16], &[0xaa; 16]);
        let relocs = [
            reloc(0x1000, R_RELATIVE, None, 0x1234),
            reloc(0x1008, R_64, Some(0), 8),
            reloc(0x2ff8, R_GLOB_DAT, Some(0), 0),
            reloc(0x3000, R_PC32, Some(1), -4),
            reloc(0x3004, R_NONE, None, 0),
        ];
        let values = [0x7f00_1000_0000u64, bias + 0x3100];
        let runs = relocate(&relocs, &mut img, lo, bias, |i| values[i], |_| String::new()).unwrap();
        let word = |at: usize| u64::from_le_bytes(img[at..at + 8].try_into().unwrap());
        assert_eq!(word(0), bias + 0x1234);
        assert_eq!(word(8), values[0] + 8);
        assert_eq!(word(0x1ff8), values[0]);
        let pc = i32::from_le_bytes(img[0x2000..0x2004].try_into().unwrap());
        assert_eq!(pc as i64, 0x3100 - 4 - 0x3000);
        assert_eq!(runs, vec![0..0x3000], "three dirty pages in one run");
    }

    #[test]
    fn relocations_outside_the_module_or_out_of_reach_are_refused() {
        let mut img = vec![0u8; 0x1000];
        let out = [reloc(0x1ffc, R_64, None, 0)];
        let e = relocate(&out, &mut img, 0x1000, 0, |_| 0, |_| String::new()).unwrap_err();
        assert!(e.message.contains("outside the module"), "{e}");
        let far = [reloc(0x1000, R_PC32, Some(0), 0)];
        let e = relocate(&far, &mut img, 0x1000, 0x1000_0000, |_| 0x7f00_0000_0000, |_| "puts".into()).unwrap_err();
        assert!(e.message.contains("`puts` is out of the ±2 GiB reach of a R_X86_64_PC32"), "{e}");
        let odd = [reloc(0x1000, 37, None, 0)];
        assert!(relocate(&odd, &mut img, 0x1000, 0, |_| 0, |_| String::new()).is_err());
    }

    #[test]
    fn only_changed_pages_are_written() {
        let mut img = vec![0u8; 0x5000];
        let relocs = [reloc(0x0ffc, R_64, None, 1), reloc(0x4000, R_RELATIVE, None, 0)];
        let runs = relocate(&relocs, &mut img, 0, 0x10000, |_| 0, |_| String::new()).unwrap();
        assert_eq!(runs, vec![0..0x2000, 0x4000..0x5000], "a word across a page boundary dirties both pages");
    }
}
