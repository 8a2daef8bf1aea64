//! The fix as a unified diff: which files it touches, which of their lines, and where every
//! untouched line moves. The diff is applied by `patch -p1`; this reads only the file headers
//! and hunk headers and counts the hunks' lines, which is all the format asks of a reader.

use crate::error::{Error, Result};
use std::path::Path;

/// One file the diff changes.
#[derive(Debug, Clone, Default)]
pub struct FileChange {
    /// The path inside the tree (`patch -p1`'s).
    pub path: String,
    /// Lines of the original file removed or replaced, and the original line before which
    /// lines were added: the lines the fix touches, numbered as in the original.
    pub touched: Vec<u32>,
    /// Lines of the original file removed or replaced.
    removed: Vec<u32>,
    /// (original line, new line) at the start of each run of untouched lines, in order: where
    /// `__LINE__` values move.
    shifts: Vec<(u32, i64)>,
}

impl FileChange {
    /// Where untouched original line `line` is in the patched file.
    pub fn moved(&self, line: u32) -> Option<u32> {
        if self.removed.binary_search(&line).is_ok() {
            return None;
        }
        let k = self.shifts.partition_point(|s| s.0 <= line);
        let delta = if k == 0 { 0 } else { self.shifts[k - 1].1 };
        u32::try_from(line as i64 + delta).ok()
    }
}

fn strip(path: &str) -> Option<String> {
    let path = path.split('\t').next()?.trim_end();
    if path == "/dev/null" {
        return None;
    }
    Some(path.split_once('/').map_or(path, |(_, rest)| rest).to_string())
}

fn hunk_header(line: &str) -> Option<(u32, u32, u32, u32)> {
    let body = line.strip_prefix("@@ -")?;
    let (ranges, _) = body.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |r: &str| -> Option<(u32, u32)> {
        match r.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (a, b) = range(old)?;
    let (c, d) = range(new)?;
    Some((a, b, c, d))
}

/// Reads the diff at `path`.
pub fn read(path: &Path) -> Result<Vec<FileChange>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::bad_input(format!("cannot read the diff {}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::bad_input(format!("the diff {}: {e}", path.display())))
}

pub fn parse(text: &str) -> std::result::Result<Vec<FileChange>, String> {
    let mut files: Vec<FileChange> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut old_name: Option<Option<String>> = None;
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("--- ") {
            old_name = Some(strip(rest));
            continue;
        }
        if let Some(rest) = line.strip_prefix("+++ ") {
            let old = old_name.take().ok_or_else(|| format!("line {}: `+++` without `---`", n + 1))?;
            let new = strip(rest);
            let path = new.clone().or(old.clone()).ok_or_else(|| format!("line {}: no file name", n + 1))?;
            files.push(FileChange { path, ..FileChange::default() });
            continue;
        }
        if line.starts_with("@@ ") {
            let (a, b, c, _) = hunk_header(line).ok_or_else(|| format!("line {}: malformed hunk header", n + 1))?;
            let file = files.last_mut().ok_or_else(|| format!("line {}: a hunk before any file header", n + 1))?;
            let (mut old, mut new) = (a.max(1), c.max(1));
            let mut left = b;
            let mut added = 0u32;
            // Lines added right after removed ones replace them: the removed lines are the
            // touched ones. Lines added alone touch the line they come before.
            let mut replacing = false;
            while let Some((_, l)) = lines.peek() {
                let l = *l;
                let op = l.chars().next().unwrap_or(' ');
                if !matches!(op, ' ' | '-' | '+' | '\\') || (left == 0 && op != '+' && op != '\\') {
                    break;
                }
                lines.next();
                match op {
                    ' ' => {
                        if added > 0 && !replacing {
                            file.touched.push(old);
                        }
                        added = 0;
                        replacing = false;
                        file.shifts.push((old, new as i64 - old as i64));
                        old += 1;
                        new += 1;
                        left = left.saturating_sub(1);
                    }
                    '-' => {
                        file.touched.push(old);
                        file.removed.push(old);
                        replacing = true;
                        old += 1;
                        left = left.saturating_sub(1);
                    }
                    '+' => {
                        added += 1;
                        new += 1;
                    }
                    _ => {}
                }
            }
            if added > 0 && !replacing {
                file.touched.push(old);
            }
            file.shifts.push((old, new as i64 - old as i64));
        }
    }
    if files.is_empty() {
        return Err("no file changes in it (is it a unified diff, as `git diff` writes?)".into());
    }
    for f in &mut files {
        f.touched.sort_unstable();
        f.touched.dedup();
        f.removed.sort_unstable();
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/util.c b/util.c
--- a/util.c
+++ b/util.c
@@ -1,3 +1,5 @@
+/* one */
+/* two */
 #include <assert.h>
 #include \"kvd.h\"
 
@@ -10,7 +12,7 @@ static int clamp(int v, int lo, int hi)
     if (v < lo)
         return lo;
     if (v > hi)
-        return hi - 1;
+        return hi;
     return v;
 }
 
";

    #[test]
    fn lines_touched_and_moved() {
        let f = &parse(DIFF).unwrap()[0];
        assert_eq!(f.path, "util.c");
        assert_eq!(f.touched, vec![1, 13]);
        assert_eq!(f.moved(1), Some(3));
        assert_eq!(f.moved(2), Some(4));
        assert_eq!(f.moved(12), Some(14));
        assert_eq!(f.moved(13), None);
        assert_eq!(f.moved(14), Some(16));
        assert_eq!(f.moved(100), Some(102));
    }

    #[test]
    fn not_a_diff() {
        assert!(parse("hello\n").is_err());
        assert!(parse("@@ -1 +1 @@\n").is_err());
    }
}
