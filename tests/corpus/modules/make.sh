#!/usr/bin/env bash
# Regenerates the malformed patch modules of this folder from a good module
# (tests/fixtures/patch_compute.c), each with `NAME.expect`: a text the refusal must contain.
# tests/corpus_modules.rs applies each against target_pie's `compute` (replacement
# `compute_v2`). Needs gcc and dd.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc=(gcc -Os -s -Wl,-z,noseparate-code -Wl,-z,max-page-size=4096)

find . -maxdepth 1 -type f ! -name make.sh -delete

expect() { printf '%s\n' "$2" >"$1.expect"; }
patch_bytes() { # FILE OFFSET HEXBYTES...
  local f=$1 off=$2; shift 2
  local esc=""
  for b in "$@"; do esc+="\\x$b"; done
  printf "$esc" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

"${cc[@]}" -shared -fPIC -o "$tmp/good.so" ../../fixtures/patch_compute.c

# Cut short.
head -c 40 "$tmp/good.so" >truncated-header.so
expect truncated-header.so "malformed ELF"
head -c 100 "$tmp/good.so" >truncated-phdrs.so
expect truncated-phdrs.so "malformed ELF"

# Header fields an x86-64 shared object never has.
cp "$tmp/good.so" class32.so
patch_bytes class32.so 4 01 # EI_CLASS = ELFCLASS32
expect class32.so "built for ELF32 x32"
cp "$tmp/good.so" big-endian.so
patch_bytes big-endian.so 5 02 # EI_DATA = ELFDATA2MSB
expect big-endian.so "big-endian"
cp "$tmp/good.so" aarch64.so
patch_bytes aarch64.so 18 b7 00 # e_machine = EM_AARCH64
expect aarch64.so "built for ELF64 AArch64"
cp "$tmp/good.so" huge-phnum.so
patch_bytes huge-phnum.so 56 ff ff # e_phnum = 65535
expect huge-phnum.so "malformed ELF"
cp "$tmp/good.so" huge-shnum.so
patch_bytes huge-shnum.so 60 ff ff # e_shnum = 65535
expect huge-shnum.so "malformed ELF"

# Well-formed ELF that is not a loadable patch module.
cat >"$tmp/exe.c" <<'C'
int compute_v2(int x) { return x * 100; }
int main(void) { return compute_v2(0); }
C
"${cc[@]}" -fno-pie -no-pie -rdynamic -o executable.so "$tmp/exe.c"
expect executable.so "not a shared object"

cat >"$tmp/tls.c" <<'C'
__thread int calls;
int compute_v2(int x) { calls++; return x * 100; }
C
"${cc[@]}" -shared -fPIC -o tls.so "$tmp/tls.c"
expect tls.so "thread-local storage"

cat >"$tmp/tpoff.c" <<'C'
extern __thread int outside __attribute__((tls_model("initial-exec")));
int compute_v2(int x) { return x * 100 + outside; }
C
"${cc[@]}" -shared -fPIC -o tls-initial-exec.so "$tmp/tpoff.c"
expect tls-initial-exec.so "_TPOFF64 at"

cat >"$tmp/ifunc.c" <<'C'
static int times100(int x) { return x * 100; }
static void *pick(void) { return (void *)times100; }
static int resolved(int x) __attribute__((ifunc("pick")));
int compute_v2(int x) { return resolved(x); }
C
"${cc[@]}" -shared -fPIC -o own-ifunc.so "$tmp/ifunc.c"
expect own-ifunc.so "_IRELATIVE at"

# Not ELF at all.
printf 'int compute_v2(int x) { return x * 100; }\n' >text-file.so
expect text-file.so "not an ELF file"
: >empty.so
expect empty.so "not an ELF file"
