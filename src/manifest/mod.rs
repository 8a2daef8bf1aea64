//! The patch manifest (YAML, version 1): which functions of which ELF object a patch
//! replaces, with what module, and how the patch is applied and trialled.
//!
//! Every problem found while reading a manifest is reported as a bad-input error that
//! names the file, the line (and column when known) and the offending key, for example
//! `patches/invite.yaml:7:3: functions[1].replacement: missing`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod spots;
use spots::{is_marker, Spot, Spots};

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
mod tests;

#[cfg(test)]
mod health_check_tests;
