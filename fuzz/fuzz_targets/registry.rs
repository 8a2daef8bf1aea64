//! The registry lives in the target's memory, which a compromised target can fill with
//! anything: reading it never panics, never reads out of the mapping, and what it accepts
//! writes back to a record that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pannus::registry;

fuzz_target!(|data: &[u8]| {
    let (header, payload) = data.split_at(data.len().min(40));
    if let Ok(Some((offset, len))) = registry::slot_of(header) {
        assert!(offset >= 4096 && len as u64 <= 4 << 20, "{offset} {len}");
    }
    if let Ok(reg) = registry::decode(payload) {
        if let Ok(again) = registry::encode(&reg) {
            assert_eq!(registry::decode(&again).ok(), Some(reg));
        }
    }
});
