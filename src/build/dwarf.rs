//! What `pannus build` reads from debug information: in the running binary, which functions
//! carry inlined copies of which (`DW_TAG_inlined_subroutine`) and how it was compiled; in a
//! compiled unit, the layout of each structure and the line each function starts at.

use crate::error::{Error, Result};
use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object as _, ObjectSection as _};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

type R<'a> = EndianSlice<'a, LittleEndian>;

/// The running binary's debug information, as far as a patch needs it.
#[derive(Debug, Default)]
pub struct Binary {
    /// `DW_AT_producer` of the first unit: the compiler and its flags.
    pub producer: Option<String>,
    /// Each compiled unit: its name and folder as the compiler recorded them.
    pub units: Vec<(String, String)>,
    /// For each out-of-line function (by its start address), the unit it is in (an index into
    /// `units`) and the functions inlined into it, nested ones included, by name.
    pub inlined: HashMap<u64, (usize, Vec<String>)>,
}

/// A structure's layout: its size, then (member, offset, type) for each member.
pub type Layout = (u64, Vec<(String, u64, String)>);

/// A compiled unit's debug information, as far as a patch needs it.
#[derive(Debug, Default)]
pub struct UnitInfo {
    /// Structure, union and class layouts by name: size, then (member, offset, type).
    pub layouts: BTreeMap<String, Layout>,
    /// (file, line, name) where each function is defined.
    pub functions: Vec<(String, u32, String)>,
    /// Static local variables: (name, the function that declares it).
    pub statics: Vec<(String, String)>,
}

fn load<'a>(sections: &'a HashMap<String, Vec<u8>>) -> gimli::Dwarf<R<'a>> {
    gimli::Dwarf::load(|id| -> std::result::Result<R<'a>, gimli::Error> {
        Ok(EndianSlice::new(sections.get(id.name()).map(|v| v.as_slice()).unwrap_or(&[]), LittleEndian))
    })
    .unwrap_or_default()
}

fn text(dwarf: &gimli::Dwarf<R<'_>>, unit: &gimli::Unit<R<'_>>, v: AttributeValue<R<'_>>) -> Option<String> {
    dwarf.attr_string(unit, v).ok().map(|s| s.to_string_lossy().into_owned())
}

/// The name of the entry at `offset`: its linkage name or name, through its abstract origin or
/// specification.
fn name_of(dwarf: &gimli::Dwarf<R<'_>>, unit: &gimli::Unit<R<'_>>, offset: gimli::UnitOffset) -> Option<String> {
    let mut at = offset;
    for _ in 0..8 {
        let e = unit.entry(at).ok()?;
        for attr in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name, gimli::DW_AT_name] {
            if let Some(v) = e.attr_value(attr) {
                return text(dwarf, unit, v);
            }
        }
        match e.attr_value(gimli::DW_AT_abstract_origin).or_else(|| e.attr_value(gimli::DW_AT_specification)) {
            Some(AttributeValue::UnitRef(o)) => at = o,
            _ => return None,
        }
    }
    None
}

/// Reads the debug information of the linked program or library at `path`.
pub fn binary(path: &Path) -> Result<Binary> {
    let data = std::fs::read(path).map_err(|e| Error::bad_input(format!("cannot read {}: {e}", path.display())))?;
    let file = object::File::parse(&*data)
        .map_err(|e| Error::bad_input(format!("{} is not an ELF object: {e}", path.display())))?;
    let mut sections = HashMap::new();
    for s in file.sections() {
        let Ok(name) = s.name() else { continue };
        if name.starts_with(".debug_") {
            let bytes = s.uncompressed_data().map_err(|e| {
                Error::bad_input(format!("{}: its debug section {name} cannot be read: {e}", path.display()))
                    .hint("rebuild it with -g (uncompressed debug information)")
            })?;
            sections.insert(name.to_string(), bytes.into_owned());
        }
    }
    if !sections.contains_key(".debug_info") {
        return Err(Error::bad_input(format!("{} has no debug information (DWARF)", path.display())));
    }
    let dwarf = load(&sections);
    let mut out = Binary::default();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else { continue };
        let mut first = unit.entries();
        let Some(root) = first.next_dfs().ok().flatten().cloned() else { continue };
        let name = root.attr_value(gimli::DW_AT_name).and_then(|v| text(&dwarf, &unit, v)).unwrap_or_default();
        let dir = root.attr_value(gimli::DW_AT_comp_dir).and_then(|v| text(&dwarf, &unit, v)).unwrap_or_default();
        if out.producer.is_none() {
            out.producer = root.attr_value(gimli::DW_AT_producer).and_then(|v| text(&dwarf, &unit, v));
        }
        out.units.push((name, dir));
        // Walk the tree: the innermost enclosing concrete function owns each inlined copy.
        let mut stack: Vec<(isize, Option<u64>)> = Vec::new();
        let mut cursor = unit.entries();
        while let Ok(Some(e)) = cursor.next_dfs() {
            let depth = e.depth();
            while stack.last().is_some_and(|(d, _)| *d >= depth) {
                stack.pop();
            }
            let owner = stack.iter().rev().find_map(|(_, a)| *a);
            match e.tag() {
                gimli::DW_TAG_subprogram => {
                    let low =
                        e.attr_value(gimli::DW_AT_low_pc).and_then(|v| dwarf.attr_address(&unit, v).ok().flatten());
                    stack.push((depth, low.filter(|&a| a != 0)));
                }
                gimli::DW_TAG_inlined_subroutine => {
                    if let (Some(owner), Some(AttributeValue::UnitRef(o))) =
                        (owner, e.attr_value(gimli::DW_AT_abstract_origin))
                    {
                        if let Some(n) = name_of(&dwarf, &unit, o) {
                            let cu = out.units.len() - 1;
                            let (_, list) = out.inlined.entry(owner).or_insert((cu, Vec::new()));
                            if !list.contains(&n) {
                                list.push(n);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The debug sections of compiled unit `unit`, with its relocations applied (each section at
/// address 0, as the relocations of a relocatable object are relative to).
fn unit_sections(unit: &super::objfile::Unit) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for s in unit.sections.iter().filter(|s| s.name.starts_with(".debug_")) {
        let mut data = s.data.clone();
        for r in &s.relocs {
            let value = unit.symbols.get(r.sym).map_or(0, |t| t.value).wrapping_add_signed(r.addend);
            let at = r.offset as usize;
            match r.rtype {
                1 => {
                    if let Some(d) = data.get_mut(at..at + 8) {
                        d.copy_from_slice(&value.to_le_bytes());
                    }
                }
                10 | 2 => {
                    if let Some(d) = data.get_mut(at..at + 4) {
                        d.copy_from_slice(&(value as u32).to_le_bytes());
                    }
                }
                _ => {}
            }
        }
        out.insert(s.name.clone(), data);
    }
    out
}

fn type_name(dwarf: &gimli::Dwarf<R<'_>>, unit: &gimli::Unit<R<'_>>, v: Option<AttributeValue<R<'_>>>) -> String {
    let mut suffix = String::new();
    let mut at = match v {
        Some(AttributeValue::UnitRef(o)) => o,
        _ => return "void".into(),
    };
    for _ in 0..8 {
        let Ok(e) = unit.entry(at) else { break };
        let size = e.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value());
        if let Some(n) = e.attr_value(gimli::DW_AT_name).and_then(|v| text(dwarf, unit, v)) {
            return format!("{n}{suffix}{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default());
        }
        match e.tag() {
            gimli::DW_TAG_pointer_type => suffix.insert(0, '*'),
            gimli::DW_TAG_array_type => suffix.push_str("[]"),
            _ => {}
        }
        match e.attr_value(gimli::DW_AT_type) {
            Some(AttributeValue::UnitRef(o)) => at = o,
            _ => return format!("void{suffix}"),
        }
    }
    format!("?{suffix}")
}

/// Reads the debug information of a compiled unit.
pub fn unit(u: &super::objfile::Unit) -> UnitInfo {
    let sections = unit_sections(u);
    let dwarf = load(&sections);
    let mut out = UnitInfo::default();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else { continue };
        let files: Vec<String> = unit
            .line_program
            .as_ref()
            .map(|p| {
                let h = p.header();
                let mut names = Vec::new();
                for f in h.file_names() {
                    names.push(text(&dwarf, &unit, f.path_name()).unwrap_or_default());
                }
                names
            })
            .unwrap_or_default();
        let version = unit.header.version();
        let mut cursor = unit.entries();
        #[allow(clippy::type_complexity)] // (name, size, members, depth)
        let mut layout: Option<(String, u64, Vec<(String, u64, String)>, isize)> = None;
        // The functions enclosing the current entry: (depth, name).
        let mut functions: Vec<(isize, String)> = Vec::new();
        while let Ok(Some(e)) = cursor.next_dfs() {
            let depth = e.depth();
            while functions.last().is_some_and(|(d, _)| *d >= depth) {
                functions.pop();
            }
            if let Some((_, _, _, d)) = &layout {
                if depth <= *d {
                    let (n, size, members, _) = layout.take().unwrap_or_default();
                    out.layouts.entry(n).or_insert((size, members));
                }
            }
            match e.tag() {
                gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => {
                    let name = e.attr_value(gimli::DW_AT_name).and_then(|v| text(&dwarf, &unit, v));
                    let declaration = e.attr_value(gimli::DW_AT_declaration).is_some();
                    if let (Some(name), false, None) = (name, declaration, &layout) {
                        let kind = match e.tag() {
                            gimli::DW_TAG_union_type => "union",
                            gimli::DW_TAG_class_type => "class",
                            _ => "struct",
                        };
                        let size = e.attr_value(gimli::DW_AT_byte_size).and_then(|v| v.udata_value()).unwrap_or(0);
                        layout = Some((format!("{kind} {name}"), size, Vec::new(), depth));
                    }
                }
                gimli::DW_TAG_member => {
                    if let Some((_, _, members, d)) = &mut layout {
                        if depth == *d + 1 {
                            let name = e
                                .attr_value(gimli::DW_AT_name)
                                .and_then(|v| text(&dwarf, &unit, v))
                                .unwrap_or_default();
                            let offset = e
                                .attr_value(gimli::DW_AT_data_member_location)
                                .and_then(|v| v.udata_value())
                                .unwrap_or(0);
                            let ty = type_name(&dwarf, &unit, e.attr_value(gimli::DW_AT_type));
                            members.push((name, offset, ty));
                        }
                    }
                }
                gimli::DW_TAG_variable => {
                    // A static local: declared in a function, at a fixed address.
                    let fixed = matches!(e.attr_value(gimli::DW_AT_location),
                        Some(AttributeValue::Exprloc(x)) if x.0.slice().first() == Some(&gimli::DW_OP_addr.0));
                    let name = e.attr_value(gimli::DW_AT_name).and_then(|v| text(&dwarf, &unit, v));
                    if let (true, Some(name), Some((_, owner))) = (fixed, name, functions.last()) {
                        out.statics.push((name, owner.clone()));
                    }
                }
                gimli::DW_TAG_subprogram => {
                    let name = name_of(&dwarf, &unit, e.offset());
                    functions.push((depth, name.clone().unwrap_or_default()));
                    let line = e.attr_value(gimli::DW_AT_decl_line).and_then(|v| v.udata_value());
                    let file = e.attr_value(gimli::DW_AT_decl_file).and_then(|v| match v {
                        AttributeValue::FileIndex(i) => Some(i),
                        v => v.udata_value(),
                    });
                    if let (Some(name), Some(line), Some(file)) = (name, line, file) {
                        // DWARF 5 numbers files from 0, earlier versions from 1.
                        let index = if version >= 5 { file as usize } else { (file as usize).wrapping_sub(1) };
                        let f = files.get(index).cloned().unwrap_or_default();
                        out.functions.push((f, line as u32, name));
                    }
                }
                _ => {}
            }
        }
        if let Some((n, size, members, _)) = layout.take() {
            out.layouts.entry(n).or_insert((size, members));
        }
    }
    out
}
