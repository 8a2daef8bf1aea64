//! Stage 2's relocation pass never panics on any relocations a module can hold, writes only
//! inside the image, and reports as changed every byte it changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pannus::symbols::relocate;
use pannus::Reloc;

fuzz_target!(|data: &[u8]| {
    // 2 bytes: the image's size in pages (1..=4) and the load bias's page; then 16 bytes per
    // relocation: offset (4), type (1), symbol (1), addend (8, signed), 2 spare.
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let pages = 1 + (head[0] % 4) as usize;
    let lo = 0x1000u64;
    let bias = (head[1] as u64) << 32;
    let relocs: Vec<Reloc> = rest
        .chunks_exact(16)
        .map(|c| Reloc {
            offset: lo.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64 % (pages as u64 * 4096 + 64)),
            rtype: (c[4] % 12) as u32,
            sym: (c[5] < 200).then_some((c[5] % 4) as usize),
            addend: i64::from_le_bytes([c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13]]),
        })
        .collect();
    let values = [0u64, bias + 0x2000, 0x7f00_0000_0000, u64::MAX];
    let before = vec![0xa5u8; pages * 4096];
    let mut image = before.clone();
    if let Ok(runs) = relocate(&relocs, &mut image, lo, bias, |i| values[i % values.len()], |i| format!("s{i}")) {
        assert_eq!(image.len(), before.len());
        for (at, (a, b)) in before.iter().zip(&image).enumerate() {
            if a != b {
                assert!(runs.iter().any(|r| r.contains(&at)), "byte {at} changed outside the runs {runs:?}");
            }
        }
        for r in &runs {
            assert!(r.start < r.end && r.end <= image.len() && r.start % 4096 == 0, "{runs:?}");
        }
    }
});
