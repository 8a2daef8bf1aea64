//! ELF parsing never panics, hangs or runs out of memory on any bytes, and neither do the
//! queries made on what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pannus::Object;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(o) = Object::parse(Path::new("fuzz.so"), data.to_vec()) else {
        return;
    };
    let (lo, hi) = o.span();
    assert!(lo <= hi);
    let names: Vec<String> = o
        .dynsyms
        .iter()
        .chain(&o.symtab)
        .take(16)
        .map(|s| s.name.clone())
        .chain(["compute".to_string(), String::new()])
        .collect();
    for name in &names {
        let _ = o.definitions(name);
        if let Ok(Some(s)) = o.lookup(name) {
            let _ = o.bytes_at(s.value, s.size);
        }
        let _ = o.lookup_dynamic(name, None);
        let _ = o.lookup_dynamic(name, Some("GLIBC_2.2.5"));
    }
    for s in o.dynsyms.iter().chain(&o.symtab).take(64) {
        let _ = o.bytes_at(s.value, s.size);
        if let Some(v) = &s.version {
            let _ = o.lookup_dynamic(&s.name, Some(v));
        }
    }
    for seg in &o.segments {
        let _ = o.bytes_at(seg.vaddr, seg.filesz);
    }
});
