//! Where each key of a manifest is written in its text (line and column), for errors that
//! point at it.

/// Position of a key (or sequence item) in the manifest text; 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spot {
    pub(super) line: usize,
    pub(super) col: usize,
    /// Column of the value when it starts on the same line.
    pub(super) value_col: Option<usize>,
}

enum Seg {
    Key(String),
    Item(usize),
}

struct Frame {
    indent: usize,
    seg: Seg,
}

/// A light scan of block-style YAML mapping each key path (`target.build_id`,
/// `functions[1].replacement`) to where it is written. Flow-style collections are not
/// looked into: errors inside them point at the key that holds them.
pub(super) struct Spots {
    entries: Vec<(String, Spot)>,
    pub(super) first_line: usize,
}

impl Spots {
    pub(super) fn scan(text: &str) -> Spots {
        let mut entries = Vec::new();
        let mut first_line = 0;
        let mut stack: Vec<Frame> = Vec::new();
        let mut block_scalar: Option<usize> = None;

        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let indent = raw.len() - raw.trim_start_matches([' ', '\t']).len();
            let content = &raw[indent..];
            let blank = content.trim().is_empty();
            if let Some(owner) = block_scalar {
                if blank || indent > owner {
                    continue;
                }
                block_scalar = None;
            }
            if blank || content.starts_with('#') || content.starts_with('%') {
                continue;
            }
            if indent == 0 && (is_marker(content, "---") || is_marker(content, "...")) {
                stack.clear();
                continue;
            }
            if first_line == 0 {
                first_line = line;
            }

            let mut pos = indent; // byte offset in `raw`
            loop {
                let rest = &raw[pos..];
                if rest == "-" || rest.starts_with("- ") {
                    let mut index = 0;
                    while let Some(top) = stack.last() {
                        let same_seq = top.indent == pos && matches!(top.seg, Seg::Item(_));
                        if top.indent > pos || same_seq {
                            if let (true, Seg::Item(i)) = (same_seq, &top.seg) {
                                index = i + 1;
                            }
                            stack.pop();
                        } else {
                            break;
                        }
                    }
                    let after = &rest[1..];
                    let gap = after.len() - after.trim_start_matches(' ').len();
                    let value_pos = pos + 1 + gap;
                    let has_value = value_pos < raw.len() && !raw[value_pos..].starts_with('#');
                    stack.push(Frame { indent: pos, seg: Seg::Item(index) });
                    let col = if has_value { value_pos } else { pos };
                    entries.push((
                        path_of(&stack),
                        Spot { line, col: char_col(raw, col), value_col: has_value.then(|| char_col(raw, value_pos)) },
                    ));
                    if !has_value {
                        break;
                    }
                    pos = value_pos;
                    continue;
                }
                if let Some((key, value_off)) = parse_key(rest) {
                    while stack.last().is_some_and(|top| top.indent >= pos) {
                        stack.pop();
                    }
                    stack.push(Frame { indent: pos, seg: Seg::Key(key) });
                    let value = &rest[value_off..];
                    let has_value = !value.is_empty() && !value.starts_with('#');
                    entries.push((
                        path_of(&stack),
                        Spot {
                            line,
                            col: char_col(raw, pos),
                            value_col: has_value.then(|| char_col(raw, pos + value_off)),
                        },
                    ));
                    if value.starts_with('|') || value.starts_with('>') {
                        block_scalar = Some(pos);
                    }
                }
                break;
            }
        }
        Spots { entries, first_line: first_line.max(1) }
    }

    /// The `nth` (0-based) place where `path` is written.
    pub(super) fn nth(&self, path: &str, nth: usize) -> Option<Spot> {
        self.entries.iter().filter(|(p, _)| p == path).nth(nth).map(|(_, s)| *s)
    }

    /// Where `path` is written, or else its closest written ancestor, or else the
    /// start of the document.
    pub(super) fn near(&self, path: &str) -> Spot {
        let mut p = path;
        loop {
            if let Some(s) = self.nth(p, 0) {
                return s;
            }
            match parent_path(p) {
                Some(parent) => p = parent,
                None => return Spot { line: self.first_line, col: 1, value_col: None },
            }
        }
    }

    /// Where the value of `path` is written (falling back as [`Spots::near`] does).
    pub(super) fn value(&self, path: &str) -> Spot {
        let s = self.near(path);
        Spot { col: s.value_col.unwrap_or(s.col), ..s }
    }

    /// A key written on `line`, if any (the deepest one).
    pub(super) fn key_on_line(&self, line: usize) -> Option<&str> {
        self.entries.iter().rev().find(|(_, s)| s.line == line).map(|(p, _)| p.as_str())
    }
}

pub(super) fn is_marker(content: &str, marker: &str) -> bool {
    content.strip_prefix(marker).is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
}

/// 1-based character column of byte offset `pos` in `line`.
fn char_col(line: &str, pos: usize) -> usize {
    line.get(..pos).map_or(pos, |s| s.chars().count()) + 1
}

fn path_of(stack: &[Frame]) -> String {
    let mut out = String::new();
    for f in stack {
        match &f.seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Item(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        return path.rfind('[').map(|i| &path[..i]);
    }
    Some(match path.rfind(['.', ']']) {
        Some(i) if path.as_bytes().get(i) == Some(&b'.') => &path[..i],
        Some(i) => &path[..=i],
        None => "",
    })
}

/// Splits `key: value` at the start of `rest`; returns the key and the byte offset of
/// the value (past the colon and spaces).
fn parse_key(rest: &str) -> Option<(String, usize)> {
    let (key, after_key) = match rest.chars().next()? {
        q @ ('"' | '\'') => {
            let end = rest[1..].find(q)? + 1;
            (rest[1..end].to_string(), end + 1)
        }
        '[' | '{' | '#' | '&' | '*' | '!' | '?' | '|' | '>' | '%' | '@' | '`' | '-' => return None,
        _ => {
            let mut found = None;
            for (i, _) in rest.match_indices(':') {
                let next = rest[i + 1..].chars().next();
                if matches!(next, None | Some(' ' | '\t')) {
                    found = Some(i);
                    break;
                }
            }
            let i = found?;
            (rest[..i].trim_end().to_string(), i)
        }
    };
    let tail = &rest[after_key..];
    let tail_trimmed = tail.trim_start_matches([' ', '\t']);
    let colon_at = after_key + (tail.len() - tail_trimmed.len());
    let after_colon = tail_trimmed.strip_prefix(':')?;
    if !(after_colon.is_empty() || after_colon.starts_with([' ', '\t'])) || key.is_empty() {
        return None;
    }
    let value = after_colon.trim_start_matches([' ', '\t']);
    Some((key, colon_at + 1 + (after_colon.len() - value.len())))
}

// ---------------------------------------------------------------------------
// Deserializing and validating, with located errors.
