//! 7. `pannus build`: a one-file diff against the project's clean build.

use crate::util::Pannus;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Units of the generated project, and functions in each.
pub const FILES: usize = 24;
pub const FUNCTIONS: usize = 60;

#[derive(Default)]
pub struct BuildRow {
    pub runs: usize,
    /// Seconds: the project's clean build (`make`), and `pannus build` of a one-file diff.
    pub clean: Vec<f64>,
    pub pannus: Vec<f64>,
    pub replaced: usize,
    pub failures: Vec<String>,
}

/// Writes the project: `FILES` units of `FUNCTIONS` functions, each calling a static helper
/// gcc inlines, and a `main`; a Makefile as a project would have.
fn write_project(dir: &Path, fixed: bool) {
    std::fs::create_dir_all(dir).expect("project folder");
    let mut main = String::from("#include <stdio.h>\n");
    for f in 0..FILES {
        let mut c = String::new();
        for j in 0..FUNCTIONS {
            let k = if fixed && f == 7 && j == 3 { 4 } else { 3 };
            let _ = writeln!(
                c,
                "static inline int h{f}_{j}(int x) {{ return x * {k} + {j}; }}\n\
                 int f{f}_{j}(int x) {{ int s = 0; for (int i = 0; i < x; i++) s += h{f}_{j}(i) ^ (s >> 3); return s; }}"
            );
        }
        std::fs::write(dir.join(format!("u{f}.c")), c).expect("unit");
        let _ = writeln!(main, "int f{f}_0(int);");
    }
    main.push_str("int main(void) { int s = 0;\n");
    for f in 0..FILES {
        let _ = writeln!(main, "  s += f{f}_0(10);");
    }
    main.push_str("  printf(\"%d\\n\", s); return 0; }\n");
    std::fs::write(dir.join("main.c"), main).expect("main");
    let objs: Vec<String> = (0..FILES).map(|f| format!("u{f}.o")).chain(["main.o".into()]).collect();
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "CFLAGS ?= -O2 -g\nOBJS = {}\nprog: $(OBJS)\n\t$(CC) $(CFLAGS) -o $@ $(OBJS)\n%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            objs.join(" ")
        ),
    )
    .expect("Makefile");
}

fn make(dir: &Path) -> f64 {
    let t = Instant::now();
    let ok = Command::new("make").arg("-s").current_dir(dir).status().is_ok_and(|s| s.success());
    assert!(ok, "make in {} failed", dir.display());
    t.elapsed().as_secs_f64()
}

pub fn bench_build(pannus: &Pannus, tmp: &Path, runs: usize) -> BuildRow {
    let mut row = BuildRow { runs, ..Default::default() };
    let (src, fixed) = (tmp.join("build-src"), tmp.join("build-fixed"));
    write_project(&src, false);
    write_project(&fixed, true);
    let diff = tmp.join("build.patch");
    let out = Command::new("diff")
        .args(["-u", "--label", "a/u7.c", "--label", "b/u7.c"])
        .arg(src.join("u7.c"))
        .arg(fixed.join("u7.c"))
        .output()
        .expect("diff runs");
    std::fs::write(&diff, out.stdout).expect("diff");
    let running = tmp.join("build-running");
    write_project(&running, false);
    make(&running);
    for _ in 0..runs {
        let clean = tmp.join("build-clean");
        let _ = std::fs::remove_dir_all(&clean);
        write_project(&clean, false);
        row.clean.push(make(&clean));
        let output = tmp.join("build-out");
        let r = pannus.run(&[
            "build",
            "--object",
            &running.join("prog").to_string_lossy(),
            "--source",
            &src.to_string_lossy(),
            "--diff",
            &diff.to_string_lossy(),
            "--build",
            "make -s",
            "--output",
            &output.to_string_lossy(),
            "--json",
        ]);
        if r.code != 0 {
            row.failures.push(format!("pannus build exit {}: {}", r.code, r.stderr.trim()));
            continue;
        }
        row.pannus.push(r.wall.as_secs_f64());
        row.replaced = r.json()["functions"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|d| d["decision"] != "unchanged" && d["decision"] != "new").count());
    }
    row
}
