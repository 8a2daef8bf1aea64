#!/usr/bin/env bash
# Regenerates screenshots/*.png: the real console (release build) in tmux, on the real demo
# service, patched through the apply wizard. Needs gcc, tmux, python3 with Pillow
# (pip install pillow) and fonts-dejavu-core.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/pannus
out=$PWD/screenshots
work=$(mktemp -d)
sock=pannus-shots-$$
export PANNUS_STATE_DIR=$work/state
cleanup() {
  tmux -L "$sock" kill-server 2>/dev/null || true
  [ -n "${svc:-}" ] && kill "$svc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The demo service and its two patches, with manifests written by pannus itself.
gcc -O2 -g -o "$work/greeter" manifests/demo/greeter.c
gcc -O2 -shared -fPIC -o "$work/greeting-fix.so" manifests/demo/greeting-fix.c
gcc -O2 -shared -fPIC -o "$work/greeting-polish.so" manifests/demo/greeting-polish.c
mkdir -p "$work/manifests" "$out"
"$bin" manifest new --target "$work/greeter" --module "$work/greeting-fix.so" --patch greeting-fix \
  --output "$work/manifests/greeting-fix.yaml" >/dev/null
"$bin" manifest new --target "$work/greeter" --module "$work/greeting-polish.so" --patch greeting-polish \
  --map greeting=greeting_polished --output "$work/manifests/greeting-polish.yaml" >/dev/null
printf 'requires: [greeting-fix]\n' >> "$work/manifests/greeting-polish.yaml"
"$work/greeter" > "$work/greeter.log" &
svc=$!

tmux -L "$sock" new-session -d -s c -x 100 -y 30 "$bin console --manifests $work/manifests"
keys() { for k in "$@"; do tmux -L "$sock" send-keys -t c "$k"; sleep 0.4; done; }
shot() { sleep "${2:-0.6}"; tmux -L "$sock" capture-pane -e -p -t c > "$work/$1.ansi"; python3 scripts/ansi2png.py "$work/$1.ansi" "$out/$1.png"; echo "screenshots/$1.png"; }

sleep 1.5
keys / g r e e t e r Enter
shot processes
keys Enter a
shot wizard-pick
keys Enter
shot wizard-preflight 1.5
keys Enter
shot wizard-confirm 1
keys Enter Enter Enter Enter
shot wizard-done 1.5
keys Enter
shot trial 2
keys Escape a Down Enter
sleep 1.5
keys Enter Enter Enter Enter Enter
sleep 1.5
keys Escape
shot detail 1
keys J
shot journal
keys '?'
shot help
keys Escape Escape q
