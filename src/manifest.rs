//! The patch manifest (YAML, version 1): which functions of which ELF object a patch
//! replaces, with what module, and how the patch is applied and trialled.
//!
//! Every problem found while reading a manifest is reported as a bad-input error that
//! names the file, the line (and column when known) and the offending key, for example
//! `patches/invite.yaml:7:3: functions[1].replacement: missing`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest accepted patch id, in characters.
pub const MAX_PATCH_ID_LEN: usize = 64;
/// Trial length used when the manifest does not set `trial.duration`.
pub const DEFAULT_TRIAL: Duration = Duration::from_secs(5 * 60);
/// Longest accepted trial.
pub const MAX_TRIAL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Safety-check attempts used when the manifest does not set `safety.retries`.
pub const DEFAULT_RETRIES: u32 = 100;
/// Pause between safety-check attempts when the manifest does not set `safety.retry_interval`.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// Longest accepted pause between safety-check attempts.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);

const ID_RULES: &str = "a patch id is 1 to 64 characters of a-z, 0-9, '.', '_' and '-', \
                        starting with a letter or digit";
const DURATION_EXAMPLES: &str = "write a duration such as 30s, 5m, 1h 30m or 250ms";

/// A validated patch manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// The patch id, unique within a process.
    pub patch: String,
    /// The patch version, as written.
    pub version: String,
    /// Free-text description.
    pub description: Option<String>,
    /// The ELF object whose functions are replaced.
    pub target: TargetSpec,
    /// The module holding the replacement functions.
    pub module: ModuleSpec,
    /// The functions replaced, in manifest order; at least one.
    pub functions: Vec<FunctionSpec>,
    /// Ids of patches that must already be applied.
    pub requires: Vec<String>,
    /// How long the patch stays on trial and what happens then.
    pub trial: TrialSpec,
    /// How the safe moment to switch functions is found.
    pub safety: SafetySpec,
    /// The manifest file, as given.
    pub source: PathBuf,
    /// SHA-256 (lowercase hex) of the manifest file's bytes.
    pub digest: String,
}

/// The ELF object holding the functions to replace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetSpec {
    /// Path of the object (executable or shared library).
    pub object: PathBuf,
    /// Its GNU build-id, lowercase hex.
    pub build_id: String,
}

/// The module holding the replacement functions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleSpec {
    /// Absolute path of the module (relative paths are taken from the manifest's folder).
    pub path: PathBuf,
    /// SHA-256 of the module file, lowercase hex.
    pub sha256: String,
    /// How the module is brought into the process.
    pub load: LoadMethod,
}

/// One replaced function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionSpec {
    /// Symbol in the target object (mangled names accepted; `NAME@VERSION` or `NAME@@VERSION`
    /// for one version; an indirect function stands for every implementation of it).
    pub target: String,
    /// Symbol defined by the module that takes over.
    pub replacement: String,
}

/// The trial period after applying a patch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialSpec {
    /// Length of the trial.
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,
    /// What happens when the trial ends without an operator decision.
    pub on_expiry: OnExpiry,
    /// Run during the trial; rolls the patch back when it keeps failing.
    pub health_check: Option<HealthCheck>,
}

/// A command run during the trial to tell whether the service is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HealthCheck {
    /// Shell command; exit status 0 means healthy.
    pub command: String,
    /// Milliseconds between two runs.
    pub interval_ms: u64,
    /// Milliseconds a run may take before it counts as failed.
    pub timeout_ms: u64,
    /// Failures in a row that roll the patch back.
    pub failures: u32,
}

/// How the safe moment to switch functions is found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SafetySpec {
    /// Which safety check is used.
    pub consistency: Consistency,
    /// Attempts before giving up.
    pub retries: u32,
    /// Pause between attempts.
    #[serde(serialize_with = "serialize_duration")]
    pub retry_interval: Duration,
}

/// How the module is brought into the target process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(extend("enum" = ["mmap", "dlopen"]))]
pub enum LoadMethod {
    /// Mapped by pannus itself, without the process's dynamic loader.
    #[default]
    Mmap,
    /// Loaded through the process's own `dlopen`.
    Dlopen,
}

/// What happens when a trial ends without an operator decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(extend("enum" = ["commit", "rollback"]))]
pub enum OnExpiry {
    /// The patch stays applied.
    #[default]
    Commit,
    /// The patch is removed.
    Rollback,
}

/// Which safety check decides that functions may be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(extend("enum" = ["entry", "function"]))]
pub enum Consistency {
    /// No thread may be inside the first bytes of a replaced function.
    #[default]
    Entry,
    /// No thread may be anywhere inside a replaced function.
    Function,
}

impl LoadMethod {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMethod::Mmap => "mmap",
            LoadMethod::Dlopen => "dlopen",
        }
    }
}

impl OnExpiry {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Commit => "commit",
            OnExpiry::Rollback => "rollback",
        }
    }
}

impl Consistency {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Entry => "entry",
            Consistency::Function => "function",
        }
    }
}

impl fmt::Display for LoadMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OnExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for TrialSpec {
    fn default() -> Self {
        TrialSpec { duration: DEFAULT_TRIAL, on_expiry: OnExpiry::default(), health_check: None }
    }
}

impl Default for SafetySpec {
    fn default() -> Self {
        SafetySpec {
            consistency: Consistency::default(),
            retries: DEFAULT_RETRIES,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Whether `id` is a valid patch id: 1 to 64 characters of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn valid_patch_id(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {}
        _ => return false,
    }
    id.len() <= MAX_PATCH_ID_LEN
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| {
            let err = Error::bad_input(format!("{}: cannot read manifest: {e}", path.display()));
            match e.kind() {
                std::io::ErrorKind::NotFound => err.hint("check the manifest path"),
                std::io::ErrorKind::PermissionDenied => {
                    err.hint("check the file permissions, or run pannus as a user who can read it")
                }
                _ => err,
            }
        })?;
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(e) => {
                let before = &bytes[..e.valid_up_to()];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(Error::bad_input(format!("{}:{line}: manifest is not valid UTF-8 text", path.display()))
                    .hint("save the manifest as UTF-8"));
            }
        };
        Manifest::parse(text, path)
    }

    /// Validates manifest `text`; `path` names the file in messages, and relative
    /// module paths are taken from its folder.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let cx = Cx { file: path, spots: Spots::scan(text) };
        let raw = cx.deserialize(text)?;
        let mut m = cx.validate(raw)?;
        m.digest = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(m)
    }
}

// ---------------------------------------------------------------------------
// Raw form, as written in the file.

/// A pannus patch manifest: which functions of which ELF object a patch replaces, with
/// what module, and how the patch is applied and trialled. Unknown keys are errors.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(title = "pannus patch manifest")]
pub(crate) struct RawManifest {
    /// The patch id, unique within a process: 1 to 64 characters of a-z, 0-9, '.', '_'
    /// and '-', starting with a letter or digit.
    #[schemars(required, regex(pattern = r"^[a-z0-9][a-z0-9._-]*$"), length(max = 64))]
    patch: Option<String>,
    /// The patch version, free text shown in status.
    #[schemars(required, length(min = 1), extend("type" = ["string", "number"]))]
    version: Option<String>,
    /// What the patch fixes, free text.
    description: Option<String>,
    /// The ELF object whose functions are replaced.
    #[schemars(required)]
    target: Option<RawTarget>,
    /// The module holding the replacement functions.
    #[schemars(required)]
    module: Option<RawModule>,
    /// The functions replaced, each target at most once.
    #[schemars(required, length(min = 1))]
    functions: Option<Vec<RawFunction>>,
    /// Ids of patches that must be active (trial or committed) in the process first.
    #[schemars(
        inner(regex(pattern = r"^[a-z0-9][a-z0-9._-]*$"), length(max = 64)),
        extend("uniqueItems" = true)
    )]
    requires: Option<Vec<String>>,
    /// How long the patch stays on trial after activation, and what happens then.
    trial: Option<RawTrial>,
    /// How the safe moment to switch functions is found.
    safety: Option<RawSafety>,
}

/// The ELF object holding the functions to replace.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "Target")]
struct RawTarget {
    /// Path of the executable or shared library the process maps (matched by device and
    /// inode).
    #[schemars(required, length(min = 1))]
    object: Option<String>,
    /// Its GNU build-id in hex, as shown by `readelf -n`; the patch is refused for any other
    /// build.
    #[schemars(required, regex(pattern = r"^([0-9a-fA-F]{2}){1,64}$"))]
    build_id: Option<String>,
}

/// The module holding the replacement functions.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "Module")]
struct RawModule {
    /// Path of the patch module (a `gcc -shared -fPIC` object), absolute or relative to the
    /// manifest's folder.
    #[schemars(required, length(min = 1))]
    path: Option<String>,
    /// SHA-256 of the module file in hex, as printed by `sha256sum`; checked before
    /// anything else is done.
    #[schemars(required, regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    sha256: Option<String>,
    /// How the module is brought into the process (default `mmap`).
    load: Option<LoadMethod>,
}

/// One replaced function.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "Function")]
struct RawFunction {
    /// Symbol of the function in the target object (file-local and mangled names accepted;
    /// `NAME@VERSION` or `NAME@@VERSION` selects one version; an indirect function such as
    /// glibc's `strlen` stands for every implementation its resolver can return).
    #[schemars(required, regex(pattern = r"^\S+$"))]
    target: Option<String>,
    /// Function defined by the module that takes over.
    #[schemars(required, regex(pattern = r"^\S+$"))]
    replacement: Option<String>,
}

/// The trial period after activation.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "Trial")]
struct RawTrial {
    /// Length of the trial, more than 0s and at most 30days, such as `30s`, `5m` or
    /// `1h 30m` (default `5m`).
    duration: Option<String>,
    /// What happens when the trial ends without an operator decision (default `commit`).
    on_expiry: Option<OnExpiry>,
    /// A command run during the trial; when it fails `failures` times in a row, the patch is
    /// rolled back automatically.
    health_check: Option<RawHealthCheck>,
}

/// A health check run during the trial.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "HealthCheck")]
struct RawHealthCheck {
    /// Shell command (`sh -c`); exit status 0 means healthy. `PANNUS_PID` and `PANNUS_PATCH` are
    /// set in its environment.
    command: Option<String>,
    /// Time between two runs, at least 100ms (default `5s`).
    interval: Option<String>,
    /// A run taking longer fails, at least 10ms (default `2s`).
    timeout: Option<String>,
    /// Failures in a row that roll the patch back, at least 1 (default 1).
    failures: Option<u32>,
}

/// How the safe moment to switch functions is found.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
#[schemars(rename = "Safety")]
struct RawSafety {
    /// Which safety check decides that functions may be switched (default `entry`).
    consistency: Option<Consistency>,
    /// Attempts at a busy switch before giving up (default 100).
    retries: Option<u32>,
    /// Pause between attempts, at most 10s, such as `10ms` (default `10ms`).
    retry_interval: Option<String>,
}

// ---------------------------------------------------------------------------
// Where keys are in the text.

/// Position of a key (or sequence item) in the manifest text; 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spot {
    line: usize,
    col: usize,
    /// Column of the value when it starts on the same line.
    value_col: Option<usize>,
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
struct Spots {
    entries: Vec<(String, Spot)>,
    first_line: usize,
}

impl Spots {
    fn scan(text: &str) -> Spots {
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
    fn nth(&self, path: &str, nth: usize) -> Option<Spot> {
        self.entries.iter().filter(|(p, _)| p == path).nth(nth).map(|(_, s)| *s)
    }

    /// Where `path` is written, or else its closest written ancestor, or else the
    /// start of the document.
    fn near(&self, path: &str) -> Spot {
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
    fn value(&self, path: &str) -> Spot {
        let s = self.near(path);
        Spot { col: s.value_col.unwrap_or(s.col), ..s }
    }

    /// A key written on `line`, if any (the deepest one).
    fn key_on_line(&self, line: usize) -> Option<&str> {
        self.entries.iter().rev().find(|(_, s)| s.line == line).map(|(p, _)| p.as_str())
    }
}

fn is_marker(content: &str, marker: &str) -> bool {
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

struct Cx<'a> {
    file: &'a Path,
    spots: Spots,
}

impl Cx<'_> {
    fn at(&self, line: usize, col: Option<usize>, msg: impl fmt::Display) -> Error {
        let file = self.file.display();
        match col {
            Some(col) => Error::bad_input(format!("{file}:{line}:{col}: {msg}")),
            None => Error::bad_input(format!("{file}:{line}: {msg}")),
        }
    }

    fn at_spot(&self, spot: Spot, msg: impl fmt::Display) -> Error {
        self.at(spot.line, Some(spot.col), msg)
    }

    /// An error about the value of the key at `path`.
    fn bad_value(&self, path: &str, msg: impl fmt::Display) -> Error {
        self.at_spot(self.spots.value(path), format_args!("{path}: {msg}"))
    }

    /// An error about the key at `path` not being set.
    fn missing(&self, path: &str) -> Error {
        let spot = self.spots.near(path);
        let spot = Spot { col: spot.value_col.unwrap_or(spot.col), ..spot };
        self.at_spot(spot, format_args!("{path}: missing"))
    }

    fn deserialize(&self, text: &str) -> Result<RawManifest> {
        // The document's shape first: serde would read an empty document as an empty mapping.
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(serde_yaml::Value::Mapping(_)) | Err(_) => {}
            Ok(serde_yaml::Value::Null) => {
                return Err(self
                    .at(self.spots.first_line, None, "manifest is empty")
                    .hint("a manifest needs at least patch, version, target, module and functions"));
            }
            Ok(other) => {
                let found = match other {
                    serde_yaml::Value::Sequence(_) => "a list",
                    serde_yaml::Value::Tagged(_) => "a tagged value",
                    _ => "a single value",
                };
                return Err(self
                    .at(
                        self.spots.first_line,
                        Some(1),
                        format_args!("top level: expected a mapping of keys, found {found}"),
                    )
                    .hint("start the manifest with `patch: <id>` and the other keys, one per line"));
            }
        }
        serde_yaml::from_str::<RawManifest>(text).map_err(|e| self.yaml_error(&e, text))
    }

    fn yaml_error(&self, e: &serde_yaml::Error, text: &str) -> Error {
        let full = e.to_string();
        let (line, col) = match e.location() {
            Some(l) => (l.line(), Some(l.column())),
            None => (self.fallback_line(&full, text), None),
        };
        let mark = col.map(|c| format!(" at line {line} column {c}")).unwrap_or_default();
        let body = match full.find(mark.as_str()) {
            Some(i) if !mark.is_empty() => format!("{}{}", &full[..i], &full[i + mark.len()..]),
            _ => full.clone(),
        };
        let (path, msg) = split_path(&body);
        let within = if path.is_empty() { "at top level".to_string() } else { format!("in {path}") };
        let join = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };

        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (name, expected) = match rest.split_once("`, ") {
                Some((name, tail)) => (name, backticked(tail)),
                None => (rest.trim_end_matches('`'), Vec::new()),
            };
            let mut text = format!("unknown key `{name}` {within}");
            if !expected.is_empty() {
                text.push_str(&format!(" (expected one of: {})", expected.join(", ")));
            }
            let err = self.at(line, col, text);
            return match closest(name, &expected) {
                Some(s) => err.hint(format!("did you mean `{s}`?")),
                None => err,
            };
        }
        if let Some(rest) = msg.strip_prefix("unknown variant `") {
            let (value, expected) = match rest.split_once("`, ") {
                Some((value, tail)) => (value, backticked(tail)),
                None => (rest.trim_end_matches('`'), Vec::new()),
            };
            let err = self.at(line, col, format_args!("{path}: invalid value `{value}`"));
            return if expected.is_empty() { err } else { err.hint(format!("valid values: {}", expected.join(", "))) };
        }
        if let Some(rest) = msg.strip_prefix("duplicate field `") {
            let key = join(rest.trim_end_matches('`'));
            let first = self.spots.nth(&key, 0);
            return match (self.spots.nth(&key, 1), first) {
                (Some(again), Some(first)) => {
                    self.at_spot(again, format_args!("{key}: duplicate key (first set on line {})", first.line))
                }
                _ => self.at(line, col, format_args!("{key}: duplicate key")),
            }
            .hint("set each key once");
        }
        if msg.starts_with("invalid type") || msg.starts_with("invalid value") || msg.starts_with("invalid length") {
            let what = if path.is_empty() { "top level" } else { path };
            return self.at(line, col, format_args!("{what}: {msg}"));
        }
        // Syntax errors and anything else the YAML reader reports.
        let mut err = match self.spots.key_on_line(line) {
            Some(key) if !key.is_empty() => self.at(line, col, format_args!("YAML syntax error near `{key}`: {body}")),
            _ => self.at(line, col, format_args!("YAML syntax error: {body}")),
        };
        if body.contains("tab character") {
            err = err.hint("indent with spaces; YAML does not allow tabs for indentation");
        } else if body.contains("more than one document") {
            err = err.hint("a manifest is a single YAML document; remove the extra `---`");
        }
        err
    }

    /// A line for errors the YAML reader reports without a position.
    fn fallback_line(&self, msg: &str, text: &str) -> usize {
        if msg.contains("more than one document") {
            let mut seen_content = false;
            for (n, l) in text.lines().enumerate() {
                let t = l.trim();
                if is_marker(l, "---") && seen_content {
                    return n + 1;
                }
                if !t.is_empty() && !t.starts_with('#') && !is_marker(l, "---") && !t.starts_with('%') {
                    seen_content = true;
                }
            }
        }
        self.spots.first_line
    }

    fn required_str(&self, value: Option<String>, path: &str) -> Result<String> {
        match value {
            None => Err(self.missing(path)),
            Some(v) if v.trim().is_empty() => Err(self.bad_value(path, "must not be empty")),
            Some(v) => Ok(v),
        }
    }

    fn id(&self, value: &str, path: &str) -> Result<()> {
        if valid_patch_id(value) {
            Ok(())
        } else {
            Err(self.bad_value(path, format_args!("invalid patch id `{value}`")).hint(ID_RULES))
        }
    }

    fn symbol(&self, value: Option<String>, path: &str) -> Result<String> {
        let value = self.required_str(value, path)?;
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self
                .bad_value(path, format_args!("invalid symbol name `{}`", value.escape_debug()))
                .hint("write the symbol as it appears in the symbol table (mangled names are fine), without spaces"));
        }
        Ok(value)
    }

    fn duration(&self, value: Option<String>, path: &str, default: Duration) -> Result<Duration> {
        let Some(text) = value else {
            return Ok(default);
        };
        humantime::parse_duration(text.trim())
            .map_err(|e| self.bad_value(path, format_args!("invalid duration `{text}`: {e}")).hint(DURATION_EXAMPLES))
    }

    fn validate(&self, raw: RawManifest) -> Result<Manifest> {
        let patch = self.required_str(raw.patch, "patch")?;
        self.id(&patch, "patch")?;
        let version = self.required_str(raw.version, "version")?;
        let description = raw.description.filter(|d| !d.trim().is_empty());

        let target = raw.target.ok_or_else(|| self.missing("target"))?;
        let object = self.required_str(target.object, "target.object")?;
        let build_id = self.required_str(target.build_id, "target.build_id")?;
        let build_id_ok = build_id.len() % 2 == 0
            && (2..=128).contains(&build_id.len())
            && build_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !build_id_ok {
            return Err(self
                .bad_value("target.build_id", format_args!("invalid build-id `{build_id}`"))
                .hint("expected an even number (2 to 128) of hex digits, as shown by `readelf -n` or `file`"));
        }

        let module = raw.module.ok_or_else(|| self.missing("module"))?;
        let module_path = self.required_str(module.path, "module.path")?;
        let base = self.file.parent().unwrap_or(Path::new(""));
        let module_path = std::path::absolute(base.join(&module_path))
            .map_err(|e| self.bad_value("module.path", format_args!("cannot make `{module_path}` absolute: {e}")))?;
        let sha256 = self.required_str(module.sha256, "module.sha256")?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            let what = if sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                format!("expected 64 hex digits, found {}", sha256.chars().count())
            } else {
                format!("`{sha256}` is not hex")
            };
            return Err(self.bad_value("module.sha256", what).hint("use the output of `sha256sum <module>`"));
        }

        let raw_functions = raw.functions.ok_or_else(|| self.missing("functions"))?;
        if raw_functions.is_empty() {
            return Err(self
                .bad_value("functions", "must list at least one function")
                .hint("add `- target: <symbol>` and `replacement: <symbol>` entries"));
        }
        let mut functions: Vec<FunctionSpec> = Vec::with_capacity(raw_functions.len());
        for (i, f) in raw_functions.into_iter().enumerate() {
            let target = self.symbol(f.target, &format!("functions[{i}].target"))?;
            let replacement = self.symbol(f.replacement, &format!("functions[{i}].replacement"))?;
            if let Some(j) = functions.iter().position(|g| g.target == target) {
                return Err(self
                    .bad_value(
                        &format!("functions[{i}].target"),
                        format_args!(
                            "duplicate target `{target}` (already replaced by functions[{j}], line {})",
                            self.spots.near(&format!("functions[{j}].target")).line
                        ),
                    )
                    .hint("replace each function once"));
            }
            functions.push(FunctionSpec { target, replacement });
        }

        let requires = raw.requires.unwrap_or_default();
        for (i, r) in requires.iter().enumerate() {
            let path = format!("requires[{i}]");
            self.id(r, &path)?;
            if *r == patch {
                return Err(self
                    .bad_value(&path, format_args!("patch `{patch}` cannot require itself"))
                    .hint("list only other patches under requires"));
            }
            if requires[..i].contains(r) {
                return Err(self.bad_value(&path, format_args!("`{r}` is listed twice")));
            }
        }

        let trial = match raw.trial {
            None => TrialSpec::default(),
            Some(t) => {
                let duration = self.duration(t.duration, "trial.duration", DEFAULT_TRIAL)?;
                if duration.is_zero() || duration > MAX_TRIAL {
                    return Err(self
                        .bad_value(
                            "trial.duration",
                            format_args!("{} is out of range", humantime::format_duration(duration)),
                        )
                        .hint("a trial lasts more than 0s and at most 30days"));
                }
                let health_check = match t.health_check {
                    None => None,
                    Some(h) => {
                        let command = self.required_str(h.command, "trial.health_check.command")?;
                        let interval =
                            self.duration(h.interval, "trial.health_check.interval", Duration::from_secs(5))?;
                        let timeout = self.duration(h.timeout, "trial.health_check.timeout", Duration::from_secs(2))?;
                        if interval < Duration::from_millis(100) {
                            return Err(self
                                .bad_value("trial.health_check.interval", "is shorter than 100ms")
                                .hint("run the check at most ten times a second"));
                        }
                        if timeout < Duration::from_millis(10) {
                            return Err(self.bad_value("trial.health_check.timeout", "is shorter than 10ms"));
                        }
                        let failures = h.failures.unwrap_or(1);
                        if failures == 0 {
                            return Err(self
                                .bad_value("trial.health_check.failures", "must be at least 1")
                                .hint("the number of failures in a row that rolls the patch back"));
                        }
                        Some(HealthCheck {
                            command,
                            interval_ms: interval.as_millis() as u64,
                            timeout_ms: timeout.as_millis() as u64,
                            failures,
                        })
                    }
                };
                TrialSpec { duration, on_expiry: t.on_expiry.unwrap_or_default(), health_check }
            }
        };

        let safety = match raw.safety {
            None => SafetySpec::default(),
            Some(s) => {
                let retry_interval =
                    self.duration(s.retry_interval, "safety.retry_interval", DEFAULT_RETRY_INTERVAL)?;
                if retry_interval > MAX_RETRY_INTERVAL {
                    return Err(self
                        .bad_value(
                            "safety.retry_interval",
                            format_args!("{} is too long", humantime::format_duration(retry_interval)),
                        )
                        .hint("the pause between attempts is at most 10s"));
                }
                SafetySpec {
                    consistency: s.consistency.unwrap_or_default(),
                    retries: s.retries.unwrap_or(DEFAULT_RETRIES),
                    retry_interval,
                }
            }
        };

        Ok(Manifest {
            patch,
            version,
            description,
            target: TargetSpec { object: PathBuf::from(object), build_id: build_id.to_ascii_lowercase() },
            module: ModuleSpec {
                path: module_path,
                sha256: sha256.to_ascii_lowercase(),
                load: module.load.unwrap_or_default(),
            },
            functions,
            requires,
            trial,
            safety,
            source: self.file.to_path_buf(),
            digest: String::new(),
        })
    }
}

/// Splits a YAML reader message `path: message` into its parts (path empty at top level).
fn split_path(msg: &str) -> (&str, &str) {
    if let Some((head, tail)) = msg.split_once(": ") {
        let path_like = !head.is_empty()
            && head.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if path_like {
            return (head, tail);
        }
    }
    ("", msg)
}

/// The names quoted in backticks in `s`, in order.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The candidate nearest to `name`, if it is a plausible misspelling.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    candidates
        .iter()
        .map(|c| (edit_distance(&norm(name), &norm(c)), *c))
        .filter(|(d, c)| *d <= 2.min(c.len() / 3 + 1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
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
            msg.starts_with(
                "manifests/x.yaml:5:3: unknown key `buildid` in target (expected one of: object, build_id)"
            ),
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
        fails_at(
            &replace(&minimal(), "version: 1.2", "version: ''"),
            "manifests/x.yaml:2:10: version: must not be empty",
        );
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
            assert!(
                msg.starts_with(&format!("manifests/x.yaml:5:13: target.build_id: invalid build-id `{bad}`")),
                "{msg}"
            );
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
        fails_after(
            "safety:\n  retry_interval: 11s\n",
            "manifests/x.yaml:13:19: safety.retry_interval: 11s is too long",
        );
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
        let msg = fails_at(
            &replace(&minimal(), "  build_id: ab", "\tbuild_id: ab"),
            "manifests/x.yaml:5:1: YAML syntax error",
        );
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
}

#[cfg(test)]
mod health_check_tests {
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
}
