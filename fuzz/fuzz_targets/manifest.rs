//! Manifest parsing never panics or hangs on any text, and every refusal is bad input naming
//! the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pannus::Kind;
use pannus::Manifest;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Manifest::parse(&text, Path::new("fuzz.yaml")) {
        assert_eq!(e.kind, Kind::BadInput, "{e}");
        assert!(e.message.contains("fuzz.yaml"), "the message names the file: {e}");
    }
});
