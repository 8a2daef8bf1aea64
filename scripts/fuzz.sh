#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ and runs each for SECONDS (default 30):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # targets: manifest elf_object entry_plan relocate registry
#
# Each run starts from the committed seeds in fuzz/corpus/TARGET/ (rebuilt by
# fuzz/make-seeds.sh) and the inputs of past crashes in fuzz/regressions/TARGET/ (also replayed
# by tests/corpus_modules.rs), and keeps what it discovers in fuzz/work/TARGET/ (not committed).
# A crash, hang (> 5 s for one input) or memory blow-up (> 512 MiB) stops the run, leaves the
# input in fuzz/artifacts/TARGET/ and makes this script fail; reproduce it with
#   cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
#
# cargo-fuzz needs a nightly compiler (`cargo install cargo-fuzz` once). A `nightly` toolchain is
# used when rustup has one; otherwise the stable compiler is told to accept nightly flags with
# RUSTC_BOOTSTRAP=1, which works for this purpose.
# Builds are release builds with debug assertions and overflow checks; no sanitizer, since the
# code under test has no `unsafe`. Set FUZZ_JOBS=N to run N workers per target.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest elf_object entry_plan relocate registry)

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }

"${fuzz[@]}" build --sanitizer none
extra=()
[ -z "${FUZZ_JOBS:-}" ] || extra=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  echo "== $t for ${secs}s"
  dirs=("fuzz/work/$t" "fuzz/corpus/$t")
  [ ! -d "fuzz/regressions/$t" ] || dirs+=("fuzz/regressions/$t")
  if ! "${fuzz[@]}" run --sanitizer none "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=512 -timeout=5 -print_final_stats=1 \
      "${extra[@]}"; then
    echo "!! $t failed: see fuzz/artifacts/$t/" >&2
    status=1
  fi
done
exit $status
