use super::*;
use crate::error::Kind;

const SHA: &str = "9B1D4E7F00112233445566778899AABBCCDDEEFF00112233445566778899AABB";

fn full() -> String {
    format!(
        "\
# invite fix
patch: invite-fix
version: \"1.0.2\"
description: Fix crash on INVITE without Contact header
target:
  object: /usr/sbin/sipd
  build_id: 3F2A9C01
module:
  path: invite-fix.so
  sha256: {SHA}
  load: dlopen
functions:
  - target: handle_invite
    replacement: handle_invite_fixed
  - target: _ZN3sip6Parser5parseEv
    replacement: parse_fixed
requires: [base-fix, other.fix]
trial:
  duration: 1h 30m
  on_expiry: rollback
safety:
  consistency: function
  retries: 7
  retry_interval: 250ms
"
    )
}

fn minimal() -> String {
    format!(
        "\
patch: p
version: 1.2
target:
  object: /bin/x
  build_id: ab
module:
  path: /opt/m.so
  sha256: {SHA}
functions:
- target: f
  replacement: g
"
    )
}

fn parse(text: &str) -> Result<Manifest> {
    Manifest::parse(text, Path::new("manifests/x.yaml"))
}

/// Parses `text`, expecting an error; returns its message with the hint.
/// The message of the refusal of the minimal manifest followed by `extra`, which starts with
/// `prefix`.
fn fails_after(extra: &str, prefix: &str) -> String {
    fails_at(&format!("{}{extra}", minimal()), prefix)
}

/// The message of the refusal of `text`, which starts with `prefix`.
fn fails_at(text: &str, prefix: &str) -> String {
    let msg = fails(text);
    assert!(msg.starts_with(prefix), "{msg}");
    msg
}

fn fails(text: &str) -> String {
    match parse(text) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => {
            assert_eq!(e.kind, Kind::BadInput);
            e.to_string()
        }
    }
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in text");
    text.replacen(from, to, 1)
}

#[test]
fn full_manifest() {
    let text = full();
    let m = Manifest::parse(&text, Path::new("/etc/pannus/invite.yaml")).unwrap();
    assert_eq!(m.patch, "invite-fix");
    assert_eq!(m.version, "1.0.2");
    assert_eq!(m.description.as_deref(), Some("Fix crash on INVITE without Contact header"));
    assert_eq!(m.target.object, PathBuf::from("/usr/sbin/sipd"));
    assert_eq!(m.target.build_id, "3f2a9c01");
    assert_eq!(m.module.path, PathBuf::from("/etc/pannus/invite-fix.so"));
    assert_eq!(m.module.sha256, SHA.to_ascii_lowercase());
    assert_eq!(m.module.load, LoadMethod::Dlopen);
    assert_eq!(
        m.functions,
        vec![
            FunctionSpec { target: "handle_invite".into(), replacement: "handle_invite_fixed".into() },
            FunctionSpec { target: "_ZN3sip6Parser5parseEv".into(), replacement: "parse_fixed".into() },
        ]
    );
    assert_eq!(m.requires, vec!["base-fix".to_string(), "other.fix".to_string()]);
    assert_eq!(
        m.trial,
        TrialSpec { duration: Duration::from_secs(5400), on_expiry: OnExpiry::Rollback, health_check: None }
    );
    assert_eq!(
        m.safety,
        SafetySpec { consistency: Consistency::Function, retries: 7, retry_interval: Duration::from_millis(250) }
    );
    assert_eq!(m.source, PathBuf::from("/etc/pannus/invite.yaml"));
    assert_eq!(m.digest, hex::encode(Sha256::digest(text.as_bytes())));
    assert_eq!(m.digest.len(), 64);
}

#[test]
fn defaults() {
    let m = parse(&minimal()).unwrap();
    assert_eq!(m.version, "1.2");
    assert_eq!(m.description, None);
    assert_eq!(m.module.load, LoadMethod::Mmap);
    assert!(m.requires.is_empty());
    assert_eq!(
        m.trial,
        TrialSpec { duration: Duration::from_secs(300), on_expiry: OnExpiry::Commit, health_check: None }
    );
    assert_eq!(
        m.safety,
        SafetySpec { consistency: Consistency::Entry, retries: 100, retry_interval: Duration::from_millis(10) }
    );
    // Empty sections also take the defaults.
    let m = parse(&format!("{}trial: {{}}\nsafety:\n", minimal())).unwrap();
    assert_eq!(m.trial, TrialSpec::default());
    assert_eq!(m.safety, SafetySpec::default());
}

#[test]
fn version_number_kept_as_text() {
    let m = parse(&replace(&minimal(), "version: 1.2", "version: 1.10")).unwrap();
    assert_eq!(m.version, "1.10");
    let m = parse(&replace(&minimal(), "version: 1.2", "version: 3")).unwrap();
    assert_eq!(m.version, "3");
}

#[test]
fn module_path_resolution() {
    let text = replace(&minimal(), "path: /opt/m.so", "path: sub/m.so");
    let m = Manifest::parse(&text, Path::new("/srv/patches/a.yaml")).unwrap();
    assert_eq!(m.module.path, PathBuf::from("/srv/patches/sub/m.so"));
    let m = Manifest::parse(&text, Path::new("a.yaml")).unwrap();
    assert!(m.module.path.is_absolute());
    assert_eq!(m.module.path, std::env::current_dir().unwrap().join("sub/m.so"));
    let m = Manifest::parse(&minimal(), Path::new("rel/a.yaml")).unwrap();
    assert_eq!(m.module.path, PathBuf::from("/opt/m.so"));
}

#[test]
fn serializes_durations_as_text() {
    let m = parse(&minimal()).unwrap();
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["trial"]["duration"], "5m");
    assert_eq!(v["trial"]["on_expiry"], "commit");
    assert_eq!(v["safety"]["retry_interval"], "10ms");
    assert_eq!(v["module"]["load"], "mmap");
    assert_eq!(OnExpiry::Rollback.to_string(), "rollback");
    assert_eq!(Consistency::Function.to_string(), "function");
}

#[test]
fn patch_ids() {
    for ok in ["a", "0", "invite-fix", "a.b_c-d", &"a".repeat(64)] {
        assert!(valid_patch_id(ok), "{ok}");
    }
    for bad in ["", "-a", ".a", "_a", "A", "a b", "a/b", "é", &"a".repeat(65)] {
        assert!(!valid_patch_id(bad), "{bad}");
    }
}

#[test]
fn unknown_key_top_level() {
    let msg = fails(&format!("{}\ntrail:\n  duration: 5m\n", minimal()));
    assert!(
        msg.starts_with("manifests/x.yaml:13:1: unknown key `trail` at top level (expected one of: patch,"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `trial`?"), "{msg}");
}

#[test]
fn unknown_key_nested() {
    let msg = fails(&replace(&minimal(), "  build_id: ab", "  buildid: ab"));
    assert!(
        msg.starts_with("manifests/x.yaml:5:3: unknown key `buildid` in target (expected one of: object, build_id)"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `build_id`?"), "{msg}");
    fails_at(
        &replace(&minimal(), "  replacement: g", "  replacement: g\n  extra: 1"),
        "manifests/x.yaml:12:3: unknown key `extra` in functions[0]",
    );
}

#[test]
fn missing_keys() {
    let msg = fails(&format!("{}- target: h\n  replacement: i\n- target: j\n", minimal()));
    assert_eq!(msg, "manifests/x.yaml:14:3: functions[2].replacement: missing");
    let msg = fails(&replace(&minimal(), "  build_id: ab\n", ""));
    assert_eq!(msg, "manifests/x.yaml:3:1: target.build_id: missing");
    let msg = fails(&replace(&minimal(), "version: 1.2\n", ""));
    assert_eq!(msg, "manifests/x.yaml:1:1: version: missing");
    let text = minimal();
    let msg = fails(&text[..text.find("functions:").unwrap()]);
    assert_eq!(msg, "manifests/x.yaml:1:1: functions: missing");
    fails_at(&replace(&minimal(), "version: 1.2", "version: ''"), "manifests/x.yaml:2:10: version: must not be empty");
}

#[test]
fn bad_patch_id() {
    let msg = fails_at(
        &replace(&minimal(), "patch: p", "patch: Invite_Fix"),
        "manifests/x.yaml:1:8: patch: invalid patch id `Invite_Fix`",
    );
    assert!(msg.contains("hint: a patch id is"), "{msg}");
    fails_after("requires:\n  - ok\n  - Bad\n", "manifests/x.yaml:14:5: requires[1]: invalid patch id `Bad`");
}

#[test]
fn bad_build_id() {
    for bad in ["abc", "xyz0", "0x12"] {
        let msg = fails(&replace(&minimal(), "build_id: ab", &format!("build_id: {bad}")));
        assert!(msg.starts_with(&format!("manifests/x.yaml:5:13: target.build_id: invalid build-id `{bad}`")), "{msg}");
    }
    let long = "a".repeat(130);
    let msg = fails(&replace(&minimal(), "build_id: ab", &format!("build_id: {long}")));
    assert!(msg.contains("target.build_id"), "{msg}");
    let m = parse(&replace(&minimal(), "build_id: ab", &format!("build_id: {}", "A".repeat(128)))).unwrap();
    assert_eq!(m.target.build_id, "a".repeat(128));
}

#[test]
fn bad_sha256() {
    fails_at(
        &replace(&minimal(), SHA, &SHA[..63]),
        "manifests/x.yaml:8:11: module.sha256: expected 64 hex digits, found 63",
    );
    let msg =
        fails_at(&replace(&minimal(), SHA, &format!("{}zz", &SHA[..62])), "manifests/x.yaml:8:11: module.sha256:");
    assert!(msg.contains("is not hex"), "{msg}");
}

#[test]
fn bad_duration() {
    fails_after(
        "trial:\n  duration: 5 parsecs\n",
        "manifests/x.yaml:13:13: trial.duration: invalid duration `5 parsecs`",
    );
    fails_after("trial:\n  duration: 0s\n", "manifests/x.yaml:13:13: trial.duration: 0s is out of range");
    fails_after("trial:\n  duration: 31days\n", "manifests/x.yaml:13:13: trial.duration:");
    fails_after("safety:\n  retry_interval: 11s\n", "manifests/x.yaml:13:19: safety.retry_interval: 11s is too long");
    fails_after("safety:\n  retries: -1\n", "manifests/x.yaml:13:12: safety.retries: invalid");
    let m = parse(&format!("{}trial:\n  duration: 30days\n", minimal())).unwrap();
    assert_eq!(m.trial.duration, MAX_TRIAL);
}

#[test]
fn bad_enum_values() {
    let msg =
        fails_after("trial:\n  on_expiry: keep\n", "manifests/x.yaml:13:14: trial.on_expiry: invalid value `keep`");
    assert!(msg.contains("hint: valid values: commit, rollback"), "{msg}");
    let msg = fails_at(
        &replace(&minimal(), "sha256:", "load: preload\n  sha256:"),
        "manifests/x.yaml:8:9: module.load: invalid value `preload`",
    );
    assert!(msg.contains("valid values: mmap, dlopen"), "{msg}");
    let msg = fails(&format!("{}safety:\n  consistency: none\n", minimal()));
    assert!(msg.contains("valid values: entry, function"), "{msg}");
}

#[test]
fn duplicate_function_target() {
    let msg = fails_after(
        "- target: other\n  replacement: o\n- target: f\n  replacement: g2\n",
        "manifests/x.yaml:14:11: functions[2].target: duplicate target `f`",
    );
    assert!(msg.contains("functions[0], line 10"), "{msg}");
}

#[test]
fn duplicate_key() {
    fails_after("patch: q\n", "manifests/x.yaml:12:1: patch: duplicate key (first set on line 1)");
}

#[test]
fn requires_rules() {
    fails_after("requires:\n- base\n- p\n", "manifests/x.yaml:14:3: requires[1]: patch `p` cannot require itself");
    fails_after("requires: [p]\n", "manifests/x.yaml:12:11: requires[0]: patch `p` cannot require itself");
    fails_after("requires: [a, a]\n", "manifests/x.yaml:12:11: requires[1]: `a` is listed twice");
}

#[test]
fn empty_functions() {
    let text = minimal();
    let cut = &text[..text.find("functions:").unwrap()];
    fails_at(&format!("{cut}functions: []\n"), "manifests/x.yaml:9:12: functions: must list at least one function");
    fails_at(
        &replace(&minimal(), "  replacement: g", "  replacement: has space"),
        "manifests/x.yaml:11:16: functions[0].replacement: invalid symbol name",
    );
}

#[test]
fn empty_file() {
    for text in ["", "\n\n", "# only a comment\n", "---\n"] {
        fails_at(text, "manifests/x.yaml:1: manifest is empty");
    }
}

#[test]
fn not_a_mapping() {
    fails_at("# c\n- patch: a\n", "manifests/x.yaml:2:1: top level: expected a mapping of keys, found a list");
    fails_at("just text\n", "manifests/x.yaml:1:1: top level: expected a mapping");
    let msg = fails(&replace(&minimal(), "target:\n  object: /bin/x\n  build_id: ab", "target: /bin/x"));
    assert!(
        msg.starts_with("manifests/x.yaml:3:9: target: invalid type: string \"/bin/x\", expected a mapping"),
        "{msg}"
    );
}

#[test]
fn syntax_errors() {
    let msg =
        fails_at(&replace(&minimal(), "  build_id: ab", "\tbuild_id: ab"), "manifests/x.yaml:5:1: YAML syntax error");
    assert!(msg.contains("tab"), "{msg}");
    let msg = fails_at("patch: 'a\nversion: 1\n", "manifests/x.yaml:");
    assert!(msg.contains("YAML syntax error"), "{msg}");
    fails_after("---\npatch: q\n", "manifests/x.yaml:12: YAML syntax error");
}

#[test]
fn key_scan() {
    let text = "\
a: 1
b:
  c: |
    d: not a key
    - neither
  e: 'x: y'
list:
- f: 1
  g:
    - h: 2
    - 3
- 'i': 4
nested:
  - - 5
k: v
";
    let s = Spots::scan(text);
    let at = |p: &str| s.nth(p, 0).map(|x| (x.line, x.col, x.value_col));
    assert_eq!(at("a"), Some((1, 1, Some(4))));
    assert_eq!(at("b.c"), Some((3, 3, Some(6))));
    assert_eq!(at("b.c.d"), None);
    assert_eq!(at("b.e"), Some((6, 3, Some(6))));
    assert_eq!(at("list[0]"), Some((8, 3, Some(3))));
    assert_eq!(at("list[0].g"), Some((9, 3, None)));
    assert_eq!(at("list[0].g[0].h"), Some((10, 7, Some(10))));
    assert_eq!(at("list[0].g[1]"), Some((11, 7, Some(7))));
    assert_eq!(at("list[1].i"), Some((12, 3, Some(8))));
    assert_eq!(at("nested[0]"), Some((14, 5, Some(5))));
    assert_eq!(at("nested[0][0]"), Some((14, 7, Some(7))));
    assert_eq!(at("k"), Some((15, 1, Some(4))));
    assert_eq!(s.near("list[0].g[1].zz").line, 11);
    assert_eq!(s.near("nope").line, 1);
}

#[test]
fn no_panic_on_odd_input() {
    for text in [
        "patch: é\n",
        "é: 1\n",
        ":\n",
        "- \n",
        "'\n",
        "\"a\n",
        "? [a]\n: 1\n",
        "patch: *x\n",
        "a: &x [*x]\n",
        "\u{feff}patch: p\n",
        "patch:\n  - é\n",
        "functions:\n- \"é\": 1\n",
    ] {
        let _ = parse(text);
    }
}

#[test]
fn load_reports_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let err = Manifest::load(&missing).unwrap_err();
    assert_eq!(err.kind, Kind::BadInput);
    assert!(err.message.contains("nope.yaml: cannot read manifest"), "{}", err.message);
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, minimal().replace("path: /opt/m.so", "path: m.so")).unwrap();
    let m = Manifest::load(&file).unwrap();
    assert_eq!(m.module.path, dir.path().join("m.so"));
    assert_eq!(m.digest, hex::encode(Sha256::digest(std::fs::read(&file).unwrap())));
}

#[test]
fn corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 14, "corpus has {} files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", file.display()))
            .trim();
        let err = match Manifest::load(&file) {
            Ok(_) => panic!("{}: accepted", file.display()),
            Err(e) => e,
        };
        assert_eq!(err.kind, Kind::BadInput);
        let msg = err.to_string();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(msg.contains(expect), "{name}: {msg:?} lacks {expect:?}");
        assert!(msg.contains(name), "{name}: {msg:?} lacks the file name");
    }
}
