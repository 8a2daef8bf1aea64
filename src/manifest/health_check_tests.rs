use super::*;

const BASE: &str = "patch: p\nversion: '1'\ntarget:\n  object: /bin/x\n  build_id: abcd\nmodule:\n  path: m.so\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000\nfunctions:\n  - target: f\n    replacement: g\n";

#[test]
fn health_check_defaults_and_errors() {
    let m = Manifest::parse(
        &format!("{BASE}trial:\n  health_check:\n    command: curl -sf localhost/health\n"),
        Path::new("h.yaml"),
    )
    .unwrap();
    let h = m.trial.health_check.unwrap();
    assert_eq!((h.interval_ms, h.timeout_ms, h.failures), (5000, 2000, 1));
    let e = Manifest::parse(&format!("{BASE}trial:\n  health_check:\n    interval: 1s\n"), Path::new("h.yaml"))
        .unwrap_err();
    assert!(e.message.contains("trial.health_check.command"), "{e}");
    let e = Manifest::parse(
        &format!("{BASE}trial:\n  health_check:\n    command: x\n    failures: 0\n"),
        Path::new("h.yaml"),
    )
    .unwrap_err();
    assert!(e.message.contains("h.yaml:15:") && e.message.contains("failures"), "{e}");
    let e = Manifest::parse(
        &format!("{BASE}trial:\n  health_check:\n    command: x\n    intervall: 1s\n"),
        Path::new("h.yaml"),
    )
    .unwrap_err();
    assert!(e.message.contains("unknown key `intervall`"), "{e}");
}
