#!/usr/bin/env bash
# Rebuilds the seed corpora in fuzz/corpus/<target>/ (files named seed-*): the manifests of the
# test corpus and the example, small real ELF objects built by gcc with truncated and corrupted
# variants, and real function entries for the entry planner. Needs gcc, objcopy, nm, dd.
set -euo pipefail
cd "$(dirname "$0")"
root=..
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rm -f corpus/manifest/seed-* corpus/elf_object/seed-* corpus/entry_plan/seed-* corpus/relocate/seed-* corpus/registry/seed-*
mkdir -p corpus/manifest corpus/elf_object corpus/entry_plan corpus/relocate corpus/registry

# manifest
for f in "$root"/tests/corpus/manifests/*.yaml "$root"/manifests/example.yaml; do
  cp "$f" "corpus/manifest/seed-$(basename "$f")"
done

# elf_object: real objects, kept small (-Os, stripped or not, no separate code pages).
small=(-Os -Wl,-z,noseparate-code -Wl,-z,max-page-size=4096)
gcc "${small[@]}" -shared -fPIC -s -Wl,--version-script=seeds/lib.map -o "$tmp/lib.so" seeds/lib.c
gcc "${small[@]}" -shared -fPIC -Wl,--version-script=seeds/lib.map -o "$tmp/lib-symtab.so" seeds/lib.c
gcc "${small[@]}" -shared -fPIC -s -Wl,-z,now -o "$tmp/lib-now.so" seeds/lib.c
gcc "${small[@]}" -s -o "$tmp/exe-pie" seeds/exe.c
gcc "${small[@]}" -o "$tmp/exe-pie-symtab" seeds/exe.c
gcc "${small[@]}" -s -fno-pie -no-pie -o "$tmp/exe-nopie" seeds/exe.c
gcc -Os -c -fPIC -o "$tmp/rel.o" seeds/lib.c
for f in lib.so lib-symtab.so lib-now.so exe-pie exe-pie-symtab exe-nopie rel.o; do
  cp "$tmp/$f" "corpus/elf_object/seed-$f"
done

patch_bytes() { # FILE OFFSET HEXBYTES...
  local f=$1 off=$2; shift 2
  local esc=""
  for b in "$@"; do esc+="\\x$b"; done
  printf "$esc" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
variant() { # NAME: copy of lib.so to corrupt
  cp "$tmp/lib.so" "corpus/elf_object/seed-$1"
  echo "corpus/elf_object/seed-$1"
}
size=$(stat -c %s "$tmp/lib.so")
head -c 40 "$tmp/lib.so" >corpus/elf_object/seed-trunc-header
head -c 120 "$tmp/lib.so" >corpus/elf_object/seed-trunc-phdrs
head -c $((size / 2)) "$tmp/lib.so" >corpus/elf_object/seed-trunc-half
head -c $((size - 64)) "$tmp/lib.so" >corpus/elf_object/seed-trunc-shdrs
patch_bytes "$(variant class32)" 4 01
patch_bytes "$(variant bigendian)" 5 02
patch_bytes "$(variant aarch64)" 18 b7 00
patch_bytes "$(variant huge-phnum)" 56 ff ff
patch_bytes "$(variant huge-shnum)" 60 ff ff
patch_bytes "$(variant bad-shoff)" 40 ff ff ff ff ff ff ff 7f
patch_bytes "$(variant bad-phoff)" 32 00 00 00 00 00 00 00 80
patch_bytes "$(variant bad-shstrndx)" 62 fe ff
patch_bytes "$(variant type-core)" 16 04 00

# entry_plan: one selector byte (low nibble: pad length, high nibble: where the replacement
# lies), then the pad, then the function's bytes.
gcc -O2 -c -ffunction-sections -o "$tmp/code.o" seeds/code.c
for fn in compute tiny padded early_call loop sys back_branch; do
  objcopy -O binary --only-section=".text.$fn" "$tmp/code.o" "$tmp/$fn.bin"
  pad=0
  [ "$fn" = padded ] && pad=5
  for sel in 0 c; do
    { printf "\\x$sel$pad"; cat "$tmp/$fn.bin"; } >"corpus/entry_plan/seed-$fn-$sel"
  done
done
# relocate: two header bytes (image pages, bias page), then relocations of 16 bytes each
# (offset, type, symbol, addend, spare; see fuzz_targets/relocate.rs): two of them.
printf '\x01\x00\x00\x10\x00\x00\x08\x00\x34\x12\x00\x00\x00\x00\x00\x00\x00\x00\x08\x10\x00\x00\x01\x01\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00' \
  >corpus/relocate/seed-two-relocs

# registry: a 40-byte header (magic, format 1, active slot 0 of 38 bytes), then the slot.
{ printf 'PANNUSRG\x01\x00\x00\x00\x00\x00\x00\x00'; printf '\x00%.0s' $(seq 8); printf '\x26'; printf '\x00%.0s' $(seq 15)
  printf '{"format":1,"next_seq":0,"patches":[]}'; } >corpus/registry/seed-empty
# And one holding an mmap patch on trial whose init ran, with its finalisers and unwind tables:
# the slot's length is the record's, as two little-endian bytes.
reg='{"format":1,"next_seq":1,"patches":[{"patch":"fix","version":"1","state":"trial","seq":1,"requires":[],"manifest":"/m.yaml","manifest_digest":"ab","module":"/m.so","module_sha256":"cd","target_object":"/t","build_id":"3f","module_base":4096,"module_size":8192,"functions":[{"target":"f","replacement":"g","address":64,"replacement_address":4160,"jump":"rel32","patch_address":64,"original":"5548","written":"e9c2"}],"applied_at":1,"on_expiry":"commit","module_mapped":true,"fini":[4200],"init_ran":true,"unwind_tables":[[8200,8300]]}]}'
n=${#reg}
{ printf 'PANNUSRG\x01\x00\x00\x00\x00\x00\x00\x00'; printf '\x00%.0s' $(seq 8)
  printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8)))"; printf '\x00%.0s' $(seq 14)
  printf '%s' "$reg"; } >corpus/registry/seed-patch

ls -l corpus/*/ | awk '$5 > 20480 { print "too large:", $0; bad=1 } END { exit bad }'
