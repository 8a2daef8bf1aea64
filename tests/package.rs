//! The Debian package: built by `packaging/build-deb` (release build, in a target folder of its
//! own under Cargo's test folder, kept between runs), installed with `dpkg -i` into a scratch
//! root (`--root` with `--force-script-chrootless`, so that nothing of this machine changes),
//! and run from there. Needs cargo-deb, dpkg and man-db (`.ci/run` installs them).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `packaging/build-deb`; the package's path.
fn build() -> PathBuf {
    let found = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: cargo install cargo-deb --locked (.ci/run does)"
    );
    // A target folder of its own: the one `cargo test` runs from is locked by it.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
    let out = Command::new(repo().join("packaging/build-deb"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("packaging/build-deb runs");
    assert!(out.status.success(), "packaging/build-deb failed:\n{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.extension().is_some_and(|e| e == "deb") && deb.is_file(), "no package: {stdout}");
    deb
}

/// `dpkg ARGS` on the scratch root `root`, its log there too.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .arg("--force-script-chrootless")
        .args(args)
        .output()
        .expect("dpkg runs");
    assert!(out.status.success(), "dpkg {args:?}:\n{}", text(&out));
    out
}

#[test]
fn the_debian_package_installs_the_binary_man_page_completions_unit_and_state_folder() {
    let deb = build();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The scratch root has no C library package: the dependency is this machine's.
    // A machine whose dpkg leaves out man pages (path-exclude, as in slim images) still
    // installs this one: the option comes after the configuration's.
    dpkg(root, &["--force-depends", "--path-include=/usr/share/man/*", "-i", deb.to_str().unwrap()]);

    let out = Command::new(root.join("usr/bin/pannus")).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("pannus {}", env!("CARGO_PKG_VERSION")));

    let man = root.join("usr/share/man");
    let out = Command::new("man").args(["-w", "pannus"]).env("MANPATH", &man).output();
    let out = out.unwrap_or_else(|e| panic!("man: {e}: install man-db (.ci/run does)"));
    assert!(out.status.success(), "man -w pannus: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), man.join("man1/pannus.1.gz").to_str().unwrap());
    let out = Command::new("man").args(["-P", "cat", "pannus"]).env("MANPATH", &man).env("MANWIDTH", "80").output();
    let page = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert!(page.contains("Live patching of running Linux x86-64 processes"), "the man page:\n{page}");

    for f in [
        "usr/share/bash-completion/completions/pannus",
        "usr/share/zsh/vendor-completions/_pannus",
        "usr/share/fish/vendor_completions.d/pannus.fish",
    ] {
        let body = std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(body.contains("rollback"), "{f} completes pannus's commands");
    }

    // The systemd unit, installed and not enabled.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/pannus-daemon.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pannus daemon"), "{unit}");
    assert!(!root.join("etc/systemd/system/multi-user.target.wants/pannus-daemon.service").exists());

    // The state folder: root's, 0700, as pannus requires.
    let meta = std::fs::metadata(root.join("var/lib/pannus")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "mode {:o}", meta.mode() & 0o7777);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    // The installed binary accepts it.
    let out = Command::new(root.join("usr/bin/pannus"))
        .args(["installed", "--json", "--state-dir"])
        .arg(root.join("var/lib/pannus"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let listed = String::from_utf8_lossy(&dpkg(root, &["-L", "pannus"]).stdout).into_owned();
    assert!(listed.contains("/usr/bin/pannus"), "{listed}");

    // Purge: the files and the state folder go.
    dpkg(root, &["--purge", "pannus"]);
    assert!(!root.join("usr/bin/pannus").exists());
    assert!(!root.join("var/lib/pannus").exists());
}
