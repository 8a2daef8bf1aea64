//! `pannus manifest new|check|schema`, `pannus completions` and `pannus man`, against fixtures
//! built with gcc.

mod common;
use common::{bin, Proc, State};
use std::path::{Path, PathBuf};

/// `pannus manifest new --target target_pie --module MODULE ARGS... --output DIR/NAME`.
fn new_manifest(state: &State, module: &str, args: &[&str], name: &str) -> (common::Run, PathBuf) {
    let out = state.path().join(name);
    let target = bin("target_pie");
    let module = bin(module);
    let mut all = vec![
        "manifest",
        "new",
        "--target",
        target.to_str().unwrap(),
        "--module",
        module.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    (state.pannus(&all), out)
}

fn check(state: &State, manifest: &Path, json: bool) -> common::Run {
    let m = manifest.to_str().unwrap();
    if json {
        state.pannus(&["manifest", "check", m, "--json"])
    } else {
        state.pannus(&["manifest", "check", m])
    }
}

#[test]
fn new_pairs_by_name_and_the_engine_accepts_it() {
    let state = State::new();
    let (r, path) = new_manifest(&state, "patch_compute.so", &[], "compute.yaml");
    r.ok();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Written by `pannus manifest new"), "{text}");
    assert!(text.contains("  - target: compute\n    replacement: compute_v2\n"), "{text}");
    assert!(text.contains("trial:\n  duration: 5m"), "{text}");
    let m = pannus::Manifest::load(&path).unwrap();
    assert_eq!(m.patch, "patch_compute");
    assert_eq!(m.target.object, bin("target_pie"));
    assert_eq!(m.target.build_id, common::build_id(&bin("target_pie")));
    assert_eq!(m.module.path, bin("patch_compute.so"));
    assert_eq!(m.module.sha256, pannus::sha256_file(&bin("patch_compute.so")).unwrap());
    assert_eq!(m.functions.len(), 1);

    // The module is outside the manifest's folder: its path is absolute.
    assert!(text.contains(&format!("  path: {}\n", bin("patch_compute.so").display())));

    let r = check(&state, &path, false).ok();
    assert!(r.stdout.contains("is valid"), "{}", r.stdout);
    let v = check(&state, &path, true).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");

    // The real engine accepts it against a running target.
    let t = Proc::start("target_pie");
    let r = state.pannus(&["check", path.to_str().unwrap(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 0, "{r:?}");

    // Not overwritten without --force.
    let (r, _) = new_manifest(&state, "patch_compute.so", &["--version", "2.0"], "compute.yaml");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("file exists"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let (r, _) = new_manifest(
        &state,
        "patch_compute.so",
        &["--version", "2.0", "--force", "--patch", "compute-fix"],
        "compute.yaml",
    );
    r.ok();
    let m = pannus::Manifest::load(&path).unwrap();
    assert_eq!((m.patch.as_str(), m.version.as_str()), ("compute-fix", "2.0"));
}

#[test]
fn new_to_stdout_with_module_path_relative_to_the_output_folder() {
    let state = State::new();
    // Standard output: the module path is absolute.
    let target = bin("target_pie");
    let module = bin("patch_tiny.so");
    let r = state
        .pannus(&["manifest", "new", "--target", target.to_str().unwrap(), "--module", module.to_str().unwrap()])
        .ok();
    assert!(r.stdout.contains("  - target: tiny\n    replacement: tiny_v2\n"), "{}", r.stdout);
    pannus::Manifest::parse(&r.stdout, Path::new("x.yaml")).unwrap();

    // A manifest written next to the module names it relatively.
    let dir = state.path().join("patches");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::copy(&module, dir.join("lib/tiny fix.so")).unwrap();
    let out = dir.join("tiny.yaml");
    state
        .pannus(&[
            "manifest",
            "new",
            "--target",
            target.to_str().unwrap(),
            "--module",
            dir.join("lib/tiny fix.so").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .ok();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("  path: lib/tiny fix.so\n"), "{text}");
    assert!(text.contains("patch: tiny-fix\n"), "{text}");
    check(&state, &out, false).ok();
}

#[test]
fn new_with_map() {
    let state = State::new();
    let (r, path) = new_manifest(&state, "patch_libc.so", &["--map", "compute=compute_libc"], "libc.yaml");
    r.ok();
    let m = pannus::Manifest::load(&path).unwrap();
    assert_eq!(m.functions.len(), 1);
    assert_eq!(m.functions[0].target, "compute");
    assert_eq!(m.functions[0].replacement, "compute_libc");
    check(&state, &path, false).ok();
}

#[test]
fn new_refuses_unknown_symbols() {
    let state = State::new();
    let (r, path) = new_manifest(&state, "patch_compute.so", &["--map", "nope=compute_v2"], "a.yaml");
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("`nope`"), "{}", r.stderr);
    assert!(!path.exists());
    let (r, _) = new_manifest(&state, "patch_compute.so", &["--map", "compute=missing_fn"], "a.yaml");
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("`missing_fn`"), "{}", r.stderr);
    let (r, _) = new_manifest(&state, "patch_compute.so", &["--map", "compute"], "a.yaml");
    assert_eq!(r.code, 2, "{r:?}");
    let (r, _) = new_manifest(&state, "patch_compute.so", &["--patch", "Bad Id"], "a.yaml");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!path.exists());
}

#[test]
fn new_refuses_when_nothing_pairs() {
    let state = State::new();
    let (r, path) = new_manifest(&state, "patch_libc.so", &[], "a.yaml");
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("no function to replace"), "{}", r.stderr);
    assert!(r.stderr.contains("compute_libc"), "lists the module's functions: {}", r.stderr);
    assert!(!path.exists());
}

#[test]
fn check_refuses_wrong_checksum_and_build_id() {
    let state = State::new();
    let (r, path) = new_manifest(&state, "patch_compute.so", &[], "good.yaml");
    r.ok();
    let text = std::fs::read_to_string(&path).unwrap();
    let sha = pannus::sha256_file(&bin("patch_compute.so")).unwrap();
    let id = common::build_id(&bin("target_pie"));
    let flip = |s: &str| {
        let first = if s.starts_with('0') { "1" } else { "0" };
        format!("{first}{}", &s[1..])
    };

    let bad_sha = state.path().join("bad-sha.yaml");
    std::fs::write(&bad_sha, text.replace(&sha, &flip(&sha))).unwrap();
    let r = check(&state, &bad_sha, false);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    let r = check(&state, &bad_sha, true);
    assert_eq!(r.code, 2, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["manifest"], bad_sha.to_str().unwrap(), "{v}");
    assert_eq!(v["problems"][0]["kind"], "bad-input", "{v}");

    let bad_id = state.path().join("bad-id.yaml");
    std::fs::write(&bad_id, text.replace(&id, &flip(&id))).unwrap();
    let r = check(&state, &bad_id, false);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("build-id mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains(&id), "{}", r.stderr);

    let bad_fn = state.path().join("bad-fn.yaml");
    std::fs::write(&bad_fn, text.replace("target: compute", "target: no_such_fn")).unwrap();
    let r = check(&state, &bad_fn, true);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.json()["problems"][0]["message"].as_str().unwrap().contains("`no_such_fn`"));

    let r = check(&state, &state.path().join("none.yaml"), false);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn shipped_schema_is_generated() {
    let state = State::new();
    let r = state.pannus(&["manifest", "schema"]).ok();
    let shipped_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/pannus-manifest.schema.json");
    let shipped = std::fs::read_to_string(&shipped_path).unwrap();
    assert!(
        r.stdout == shipped,
        "{} is out of date: regenerate it with `pannus manifest schema > manifests/pannus-manifest.schema.json`",
        shipped_path.display()
    );

    let v = r.json();
    assert_eq!(v["additionalProperties"], false);
    assert_eq!(v["properties"]["patch"]["pattern"], "^[a-z0-9][a-z0-9._-]*$");
    assert_eq!(v["properties"]["target"]["additionalProperties"], false);
    assert_eq!(v["properties"]["module"]["properties"]["sha256"]["pattern"], "^[0-9a-fA-F]{64}$");
    let defs = &v["definitions"];
    assert_eq!(defs["OnExpiry"]["enum"], serde_json::json!(["commit", "rollback"]));
    assert_eq!(defs["LoadMethod"]["enum"], serde_json::json!(["mmap", "dlopen"]));
    assert_eq!(defs["Consistency"]["enum"], serde_json::json!(["entry", "function"]));
    for (name, def) in defs.as_object().unwrap() {
        if let Some(consts) = def["oneOf"].as_array() {
            let consts: Vec<_> = consts.iter().map(|c| c["const"].clone()).collect();
            assert_eq!(def["enum"], serde_json::json!(consts), "{name}");
        }
    }
    let required = v["required"].as_array().unwrap();
    for key in ["patch", "version", "target", "module", "functions"] {
        assert!(required.contains(&key.into()), "{key} required");
    }

    // Every key of the annotated example is in the schema.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/example.yaml");
    let example: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let props = |schema: &serde_json::Value| -> serde_json::Value {
        match schema["$ref"].as_str().or(schema["anyOf"][0]["$ref"].as_str()) {
            Some(r) => defs[r.trim_start_matches("#/definitions/")]["properties"].clone(),
            None => schema["properties"].clone(),
        }
    };
    for (key, value) in example.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        let prop = &v["properties"][key];
        assert!(prop.is_object(), "example key `{key}` missing from the schema");
        let nested = match value {
            serde_yaml::Value::Mapping(m) => Some((m.clone(), props(prop))),
            serde_yaml::Value::Sequence(s) => match s.first() {
                Some(serde_yaml::Value::Mapping(m)) => Some((m.clone(), props(&prop["items"]))),
                _ => None,
            },
            _ => None,
        };
        if let Some((m, inner)) = nested {
            for k in m.keys() {
                let k = k.as_str().unwrap();
                assert!(inner[k].is_object(), "example key `{key}.{k}` missing from the schema");
                assert!(inner[k]["description"].is_string(), "`{key}.{k}` has no description");
            }
        }
    }
}

#[test]
fn completions_and_man_page() {
    let state = State::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = state.pannus(&["completions", shell]).ok();
        assert!(r.stdout.contains("pannus"), "{shell}: {}", r.stdout);
    }
    let r = state.pannus(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = state.pannus(&["man"]).ok();
    assert!(r.stdout.contains(".TH"), "{}", r.stdout);
    assert!(r.stdout.contains("manifest"), "{}", r.stdout);
}
