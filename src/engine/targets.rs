//! The functions a manifest replaces, as pre-flight resolves them in the target object: each
//! `functions[].target` named as the manifest writes it (`NAME`, `FILE::NAME`, `NAME@VERSION`,
//! `NAME@@VERSION`, or a hidden name only the object's debug file has), then the entries to
//! patch: the function's own, or for an indirect function every implementation its resolver
//! can return ([`super::ifunc`]).

use super::ifunc;
use super::preflight::{ok, replacement_symbol, PreparedFn};
use super::CheckLine;
use crate::elf::extent::DebugSymbols;
use crate::elf::versions::{self, Choice};
use crate::elf::{Object, SymKind, Symbol};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::target::{Loaded, Target};
use std::path::Path;

/// The function `name` of the target object, as a function to replace: defined once, a
/// function with a size or an indirect function (whose implementations are patched, see
/// [`super::ifunc`]). `NAME@VERSION` and `NAME@@VERSION` select a version; a plain name the
/// object defines in several versions is refused, naming them. A name the object's own tables
/// lack (a hidden alias such as glibc's `__GI_strlen`) is looked for in its debug file.
pub fn target_symbol(object: &Object, path: &Path, name: &str) -> Result<Symbol> {
    let debug = std::cell::OnceCell::new();
    find_target(object, path, name, &|| debug.get_or_init(|| DebugSymbols::for_object(object)).as_ref())
}

/// [`target_symbol`], the debug file read once for all the functions of a manifest.
fn find_target<'d>(
    object: &Object,
    path: &Path,
    name: &str,
    debug: &dyn Fn() -> Option<&'d DebugSymbols>,
) -> Result<Symbol> {
    let path = path.display();
    let sym = match object.lookup_target(name) {
        Ok(Some(s)) => s.clone(),
        Ok(None) => match debug().and_then(|d| d.lookup(name)) {
            Some(s) => s.clone(),
            None => {
                let split = versions::split(name);
                let versions = object.versions_of(split.name);
                let hint = if split.version.is_some() && !versions.is_empty() {
                    format!("{path} defines `{}` in these versions: {}", split.name, versions.join(", "))
                } else {
                    "check functions[].target; the object must keep its symbol table (not stripped) for file-local \
                     functions, or have its debug file installed (/usr/lib/debug/.build-id/)"
                        .to_string()
                };
                return Err(Error::precondition(format!("symbol `{name}` not found in {path}")).hint(hint));
            }
        },
        Err(Choice::Ambiguous(addrs)) => {
            return Err(Error::precondition(format!(
                "symbol `{name}` is ambiguous in {path}: {} file-local definitions at {}",
                addrs.len(),
                addrs.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", ")
            )))
        }
        Err(Choice::Versions(versions)) => {
            let default = versions.iter().find(|v| v.contains("@@")).cloned().unwrap_or_else(|| versions[0].clone());
            return Err(Error::precondition(format!(
                "symbol `{name}` is defined in {} versions in {path}: {}",
                versions.len(),
                versions.join(", ")
            ))
            .hint(format!(
                "write the version to replace in functions[].target, e.g. `{default}` (the default: what programs linked \
                 today call)"
            )));
        }
        Err(Choice::NotDefault(plain)) => {
            return Err(Error::precondition(format!(
                "`{name}`: that version of the symbol is not the default one in {path}"
            ))
            .hint(format!("write `{plain}` (one `@`) for a version that is not the default")))
        }
    };
    match sym.kind {
        SymKind::Ifunc => Ok(sym),
        SymKind::Func if sym.size == 0 => {
            Err(Error::precondition(format!("function `{name}` in {path} has no size in the symbol table")))
        }
        SymKind::Func => Ok(sym),
        kind => Err(Error::precondition(format!("symbol `{name}` in {path} is not a function ({kind:?})"))),
    }
}

/// The functions: each target a sized function of the target object (or every implementation
/// of an indirect function), each replacement a function of the module; no entry patched twice.
pub(super) fn function_checks(
    target: &mut Target,
    m: &Manifest,
    module: &Object,
    object: &Loaded,
    lines: &mut Vec<CheckLine>,
) -> Result<Vec<PreparedFn>> {
    let debug = std::cell::OnceCell::new();
    let debug_of = || debug.get_or_init(|| DebugSymbols::for_object(&object.object)).as_ref();
    let mut functions: Vec<PreparedFn> = Vec::new();
    for f in &m.functions {
        let sym = find_target(&object.object, &m.target.object, &f.target, &debug_of)?;
        let rep = replacement_symbol(module, &f.replacement, m.module.load)?;
        let prepared = |implementation: Option<String>, in_use: Option<bool>, address: u64, size: u64| PreparedFn {
            target: f.target.clone(),
            replacement: f.replacement.clone(),
            implementation,
            in_use,
            address,
            size,
            replacement_vaddr: rep.value,
            replacement_size: rep.size,
        };
        if sym.kind != SymKind::Ifunc {
            let address = object.addr(sym.value);
            lines.push(ok(
                "function",
                format!("{} at {address:#x} ({} bytes) -> {}", f.target, sym.size, f.replacement),
            ));
            functions.push(prepared(None, None, address, sym.size));
            continue;
        }
        let found = ifunc::implementations(target, object, &sym, &f.target, debug_of())?;
        // Each with the other names of its code: patching it changes them all.
        let labels: Vec<String> = found.iter().map(|i| i.label(&object.object)).collect();
        let shown: Vec<String> = found
            .iter()
            .zip(&labels)
            .map(|(i, l)| match i.aliases() {
                [] => l.clone(),
                more => format!("{l} (also {})", more.join(", ")),
            })
            .collect();
        let (used, others): (Vec<_>, Vec<_>) = found.iter().zip(&shown).partition(|(i, _)| i.in_use);
        let others: Vec<&str> = others.iter().map(|(_, l)| l.as_str()).collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!("; also patched, as the resolver can return them: {}", others.join(", "))
        };
        let unnamed = if found.iter().any(|i| i.names.is_empty()) {
            " (unnamed implementations are named by address: install the debug file to see their names)"
        } else {
            ""
        };
        let detail = match used.as_slice() {
            [] => format!(
                "{} is an indirect function not bound in this process yet: every implementation its resolver can \
                 return -> {}: {}{unnamed}",
                f.target,
                f.replacement,
                shown.join(", ")
            ),
            used => {
                used.iter()
                    .map(|(i, l)| {
                        format!(
                            "{} → {l} → {} (in use, at {:#x}, {} bytes)",
                            f.target,
                            f.replacement,
                            object.addr(i.vaddr),
                            i.size
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
                    + &also
                    + unnamed
            }
        };
        lines.push(ok("function", detail));
        for (i, label) in found.iter().zip(labels) {
            functions.push(prepared(Some(label), Some(i.in_use), object.addr(i.vaddr), i.size));
        }
    }
    for (k, f) in functions.iter().enumerate() {
        if let Some(g) = functions[..k].iter().find(|g| g.address == f.address) {
            return Err(Error::precondition(format!(
                "`{}` and `{}` are the same code (at {:#x}): an entry can be replaced once per patch",
                g.label(),
                f.label(),
                f.address
            ))
            .hint("keep one of them in functions[]: the entry patched serves every name that reaches it"));
        }
    }
    Ok(functions)
}
