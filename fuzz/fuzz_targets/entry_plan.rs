//! Planning a function's entry jump never panics on any code bytes, and an accepted plan is
//! consistent: it covers whole instructions found there and writes within them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pannus::plan_entry;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks the pad length (before the entry) and where the replacement lies:
    // within reach of a rel32 jump, or far away.
    let pad_len = (sel & 0x0f) as usize % 17;
    let (pad, code) = rest.split_at(pad_len.min(rest.len()));
    let entry = 0x5555_5555_1000u64;
    let replacement = match sel >> 4 {
        0..=7 => entry + 0x10_0000,
        8..=11 => entry - 0x7fff_0000,
        _ => 0x7f00_0000_0000,
    };
    if let Ok(p) = plan_entry("fuzz", entry, code, pad, replacement) {
        assert!(p.patch_address <= entry);
        assert!(p.written.len() <= p.original.len(), "{p:?}");
        assert!(p.starts.contains(&p.patch_address));
        let before = (entry - p.patch_address) as usize;
        assert!(before <= pad.len());
        assert_eq!(&p.original[..before], &pad[pad.len() - before..]);
        assert_eq!(&p.original[before..], &code[..p.original.len() - before]);
    }
});
