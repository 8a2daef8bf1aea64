//! Under load: 64 threads call a function flat out while it is patched and rolled back over and
//! over. Every answer must be the original's or the replacement's, never anything else, and the
//! process must survive.

mod common;
use common::{fixtures_src, Proc, State};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds tests/fixtures/stress_target.c next to the other fixtures, once.
fn stress_target() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("gcc")
            .args(["-O2", "-g", "-pthread", "-o"])
            .arg(common::bin("stress_target"))
            .arg(fixtures_src().join("stress_target.c"))
            .output()
            .expect("gcc runs");
        assert!(out.status.success(), "gcc stress_target.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    "stress_target"
}

/// The target's counters: calls, old answers, new answers, wrong answers.
fn counts(t: &mut Proc) -> [u64; 4] {
    let line = t.ask("r");
    let v: Vec<u64> = line.split_whitespace().map(|n| n.parse().unwrap()).collect();
    v.try_into().unwrap_or_else(|v| panic!("bad report {v:?}"))
}

#[derive(Debug, Default)]
struct Outcome {
    cycles: usize,
    busy_apply: usize,
    busy_rollback: usize,
    /// Rollbacks that restored the entry but left the module mapped (a thread was in it).
    kept_mapped: usize,
    /// Module mappings left in the process at the end.
    mappings_left: usize,
    elapsed: Duration,
    counts: [u64; 4],
}

/// `cycles` apply/rollback cycles of patch_stress.so on a fresh stress target.
fn cycle(cycles: usize) -> Outcome {
    let state = State::new();
    let mut t = Proc::start(stress_target());
    let m = state.manifest("stress", "stress_target", "patch_stress.so", &[("stress", "stress_v2")], "");
    let mut out = Outcome { cycles, ..Outcome::default() };
    let start = Instant::now();
    for i in 0..cycles {
        // A busy refusal (a thread not stopped in time, or standing in the bytes) leaves the
        // process as it was; the cycle tries again. On a loaded machine that is frequent.
        loop {
            let r = state.apply(&m, t.pid);
            match r.code {
                0 => break,
                3 if out.busy_apply < 10 * cycles => {
                    out.busy_apply += 1;
                    assert!(t.alive(), "cycle {i}: the target died: {r:?}");
                    assert_eq!(t.ask("c 7"), "22", "cycle {i}: a busy apply changed nothing");
                }
                _ => panic!("cycle {i}: apply failed: {r:?}"),
            }
        }
        assert_eq!(t.ask("c 7"), "37", "cycle {i}: patched");
        loop {
            let r = state.rollback(t.pid, Some("stress"));
            match r.code {
                0 => {
                    if r.stdout.contains("kept mapped") || r.stderr.contains("kept mapped") {
                        out.kept_mapped += 1;
                    }
                    break;
                }
                3 if out.busy_rollback < 10 * cycles => out.busy_rollback += 1,
                _ => panic!("cycle {i}: rollback failed: {r:?}"),
            }
        }
        assert_eq!(t.ask("c 7"), "22", "cycle {i}: rolled back");
        assert!(t.alive(), "cycle {i}: the target died");
    }
    out.elapsed = start.elapsed();
    out.counts = counts(&mut t);
    out.mappings_left = t.maps().lines().filter(|l| l.contains("patch_stress.so")).count();
    assert!(t.alive(), "the target survived");
    let st = state.status(t.pid);
    assert!(
        st["patches"].as_array().unwrap().iter().all(|p| p["state"] == "rolled-back"),
        "nothing left applied: {st}"
    );
    eprintln!(
        "stress: {} cycles in {:.1?} ({} busy applies, {} busy rollbacks, {} modules kept mapped, {} module mappings left); calls {}, old {}, new {}, wrong {}",
        out.cycles,
        out.elapsed,
        out.busy_apply,
        out.busy_rollback,
        out.kept_mapped,
        out.mappings_left,
        out.counts[0],
        out.counts[1],
        out.counts[2],
        out.counts[3]
    );
    out
}

fn check(out: &Outcome) {
    let [calls, old, new, wrong] = out.counts;
    assert_eq!(wrong, 0, "wrong answers: {out:?}");
    assert!(old > 0 && new > 0, "both answers seen: {out:?}");
    // The counters are read one after the other while the workers run: close, not equal.
    assert!(calls.abs_diff(old + new + wrong) < 1 << 20, "{out:?}");
    // Every cycle went through (busy refusals retried, bounded above); how often a stop was
    // busy depends on the machine's load, and is reported, not asserted.
    assert!(new > 0, "{out:?}");
}

#[test]
fn two_hundred_cycles_under_64_threads() {
    check(&cycle(200));
}

/// A long soak: `PANNUS_SOAK_CYCLES` cycles (default 2000).
#[test]
#[ignore = "long soak; run with --ignored"]
fn soak() {
    let cycles = std::env::var("PANNUS_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    check(&cycle(cycles));
}
