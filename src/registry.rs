//! The record of patches kept inside the target process: the source of truth for what is
//! applied. It lives in a small named mapping (`/memfd:pannus-registry`) that any later pannus
//! finds in `/proc/PID/maps` and reads through `/proc/PID/mem`, without stopping the process.
//!
//! Layout: a header page, then two slots. A write fills the inactive slot and then flips the
//! active slot number with one 8-byte write, so a pannus killed mid-write leaves the previous
//! record intact. The mapping is private and read-only in the target's address space, which
//! guards against accidents (a stray write), not against a compromised target, which can remap
//! it: what is read here is checked (ARCHITECTURE.md, *Trust*). A child the target forks keeps
//! its own copy.

use crate::error::{Error, Result};
use crate::manifest;
use pannus_kernel::{Hijack, Mapping, Mem};
use serde::{Deserialize, Deserializer, Serialize};

pub const MAPPING_NAME: &str = "pannus-registry";
const MAGIC: &[u8; 8] = b"PANNUSRG";
const FORMAT: u32 = 1;
const HEADER: u64 = 4096;
const SLOT: u64 = 4 << 20;
pub const SIZE: u64 = HEADER + 2 * SLOT;
/// How the registry is mapped: private, so that a child the target forks keeps its own copy.
pub const MAP: pannus_kernel::MapFlags = pannus_kernel::MapFlags::MAP_PRIVATE;

/// Where a patch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Loaded,
    Linked,
    Initialized,
    /// Jumps are being written (a pannus killed here leaves some written); rollback finishes it.
    Activating,
    Trial,
    Committed,
    RolledBack,
}

impl State {
    /// Whether the patch's code is (or may be) reachable in the process.
    pub fn is_applied(self) -> bool {
        !matches!(self, State::RolledBack)
    }
    /// Whether the patch is switched on (trial or committed).
    pub fn is_active(self) -> bool {
        matches!(self, State::Trial | State::Committed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Loaded => "loaded",
            State::Linked => "linked",
            State::Initialized => "initialized",
            State::Activating => "activating",
            State::Trial => "trial",
            State::Committed => "committed",
            State::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of jump written at a function's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JumpKind {
    /// `jmp rel32`, 5 bytes.
    Rel32,
    /// `jmp [rip+0]` followed by the 8-byte address, 14 bytes.
    Abs64,
    /// `jmp rel32` in the nop pad before the entry and a 2-byte `jmp rel8` at the entry.
    Pad,
}

impl FunctionRecord {
    /// `strlen → __strlen_avx2 → strlen_fixed` for an implementation of an indirect function
    /// (`(not in use)` after one the process was not using), `compute → compute_fixed` otherwise.
    pub fn route(&self) -> String {
        match (&self.implementation, self.in_use) {
            (Some(i), Some(false)) => format!("{} → {i} (not in use) → {}", self.target, self.replacement),
            (Some(i), _) => format!("{} → {i} → {}", self.target, self.replacement),
            (None, _) => format!("{} → {}", self.target, self.replacement),
        }
    }
}

impl JumpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JumpKind::Rel32 => "jmp rel32",
            JumpKind::Abs64 => "jmp abs64",
            JumpKind::Pad => "pad jmp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub target: String,
    pub replacement: String,
    /// For an indirect function (`strlen`): the implementation whose entry this is
    /// (`__strlen_avx2`, or `libc.so.6+0x156200` when unnamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// For an indirect function: whether the process was using this implementation when the
    /// patch was applied (the others are patched so that no later binding misses the fix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<bool>,
    /// Run-time address of the target function's entry.
    pub address: u64,
    pub replacement_address: u64,
    /// Size of the replacement function, when known.
    #[serde(default, deserialize_with = "zero_is_none", skip_serializing_if = "Option::is_none")]
    pub replacement_size: Option<u64>,
    /// The jump stub the entry jumps to, when the replacement is out of reach.
    #[serde(default, deserialize_with = "zero_is_none", skip_serializing_if = "Option::is_none")]
    pub via: Option<u64>,
    pub jump: JumpKind,
    /// Where the bytes are written (the entry, or the pad before it).
    pub patch_address: u64,
    /// The bytes found there before this patch, restored on rollback (hex).
    pub original: String,
    /// The bytes this patch writes there (hex).
    pub written: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchRecord {
    pub patch: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    pub state: State,
    /// Order of application in this process (increasing).
    pub seq: u64,
    pub requires: Vec<String>,
    pub manifest: String,
    pub manifest_digest: String,
    pub module: String,
    pub module_sha256: String,
    pub target_object: String,
    pub build_id: String,
    /// The address range reserved for the module's segments.
    pub module_base: u64,
    pub module_size: u64,
    pub functions: Vec<FunctionRecord>,
    /// Unix seconds.
    pub applied_at: u64,
    #[serde(default)]
    pub trial_deadline: Option<u64>,
    #[serde(default)]
    pub trial_seconds: u64,
    pub on_expiry: OnExpiry,
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// Why the patch left trial (commit by hand, by policy, rollback ...).
    #[serde(default)]
    pub note: Option<String>,
    /// Whether the module is still mapped (a rolled-back patch whose module could not be unloaded
    /// yet because a thread was inside it keeps it).
    #[serde(default)]
    pub module_mapped: bool,
    /// The manifest's safety budget, reused when rolling back.
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub retry_interval_ms: u64,
    #[serde(default)]
    pub consistency: Consistency,
    /// The manifest's trial health check, run by the trial watcher.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// What the health check found so far.
    #[serde(default)]
    pub health: Option<Health>,
    /// How the module was loaded.
    #[serde(default)]
    pub load: LoadMethod,
    /// The target's dlopen handle (load: dlopen), until the module is closed.
    #[serde(default, deserialize_with = "zero_is_none", skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The memfd holding the module (load: dlopen), kept open in the process until `dlclose`:
    /// its `/proc/self/fd/N` name is then unique among the modules loaded, which the loader
    /// matches by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_fd: Option<i32>,
    /// A page of jump stubs near the target object (when the module lies out of `jmp rel32`
    /// reach), unmapped with the module. Kept as the fields `trampoline` and `trampoline_size`.
    #[serde(flatten, with = "stubs_fields")]
    pub stubs: Option<Stubs>,
    /// The module's `.eh_frame` as registered with the target's unwinder (load: mmap), taken
    /// back before unmapping.
    #[serde(default, deserialize_with = "zero_is_none", skip_serializing_if = "Option::is_none")]
    pub eh_frame: Option<u64>,
    /// The module's finalisers (`DT_FINI_ARRAY` in the order they run, then `DT_FINI`; load:
    /// mmap), recorded before its init functions run and run before it is unmapped, as
    /// `dlclose` would: they take back what init registered (exit handlers, above all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fini: Vec<u64>,
    /// The module's code has run in the process (its init functions were called, even if one
    /// failed): before it is unmapped, nothing may point into it (load: mmap).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_ran: bool,
    /// Where the module's unwind tables are (`.eh_frame_hdr`, `.eh_frame`,
    /// `.gcc_except_table`; load: mmap), `[start, end)`: read only by the unwinder, which has
    /// let go of them before the unload, though stale copies of pointers into them linger in
    /// freed memory. A pointer there keeps no module mapped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unwind_tables: Vec<[u64; 2]>,
    /// The process the patch was applied to. A process whose record names another one is a
    /// child forked from it since (or from one of its descendants), carrying a copy of the
    /// record (see [`PatchRecord::forked_from`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_in: Option<i32>,
}

impl PatchRecord {
    /// The process this copy of the record was forked from, when process `pid` holds a copy it
    /// inherited rather than the record of a patch applied to it.
    pub fn forked_from(&self, pid: i32) -> Option<i32> {
        self.applied_in.filter(|&p| p != pid)
    }
}

/// A page of jump stubs mapped near the target object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stubs {
    pub addr: u64,
    pub size: u64,
}

/// What happens when a trial ends without an operator decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    #[default]
    Commit,
    Rollback,
}

impl OnExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Commit => "commit",
            OnExpiry::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for OnExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which safety check decides that functions may be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// No thread may be inside the first bytes of a replaced function.
    #[default]
    Entry,
    /// No thread may be anywhere inside a replaced function.
    Function,
}

/// How the module was brought into the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMethod {
    /// Mapped by pannus itself.
    #[default]
    Mmap,
    /// Loaded through the process's own `dlopen`.
    Dlopen,
}

impl LoadMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMethod::Mmap => "mmap",
            LoadMethod::Dlopen => "dlopen",
        }
    }
}

/// A command run during the trial to tell whether the service is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl From<manifest::OnExpiry> for OnExpiry {
    fn from(e: manifest::OnExpiry) -> OnExpiry {
        match e {
            manifest::OnExpiry::Commit => OnExpiry::Commit,
            manifest::OnExpiry::Rollback => OnExpiry::Rollback,
        }
    }
}

impl From<manifest::Consistency> for Consistency {
    fn from(c: manifest::Consistency) -> Consistency {
        match c {
            manifest::Consistency::Entry => Consistency::Entry,
            manifest::Consistency::Function => Consistency::Function,
        }
    }
}

impl From<manifest::LoadMethod> for LoadMethod {
    fn from(l: manifest::LoadMethod) -> LoadMethod {
        match l {
            manifest::LoadMethod::Mmap => LoadMethod::Mmap,
            manifest::LoadMethod::Dlopen => LoadMethod::Dlopen,
        }
    }
}

impl From<&manifest::HealthCheck> for HealthCheck {
    fn from(h: &manifest::HealthCheck) -> HealthCheck {
        let manifest::HealthCheck { command, interval_ms, timeout_ms, failures } = h.clone();
        HealthCheck { command, interval_ms, timeout_ms, failures }
    }
}

/// An address or size that an earlier pannus wrote as 0 for none.
fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.filter(|&v| v != 0))
}

/// [`Stubs`] as the fields `trampoline` and `trampoline_size` of a record: absent when there
/// are none, and read as none when 0.
mod stubs_fields {
    use super::Stubs;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Fields {
        #[serde(default)]
        trampoline: u64,
        #[serde(default)]
        trampoline_size: u64,
    }

    pub fn serialize<S: Serializer>(stubs: &Option<Stubs>, s: S) -> Result<S::Ok, S::Error> {
        stubs.map(|st| Fields { trampoline: st.addr, trampoline_size: st.size }).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Stubs>, D::Error> {
        let f = Fields::deserialize(d)?;
        Ok((f.trampoline != 0).then_some(Stubs { addr: f.trampoline, size: f.trampoline_size }))
    }
}

/// The results of a patch's health check during its trial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub runs: u64,
    /// Failures in a row (0 after a success).
    pub failing: u32,
    /// The last run: `ok`, or why it failed.
    pub last: String,
    /// Unix seconds of the last run.
    pub last_at: u64,
}

impl Health {
    /// Counts one run of the check that gave `result`.
    pub fn record(&mut self, result: std::result::Result<(), String>) {
        self.runs += 1;
        self.last_at = crate::engine::now_secs();
        match result {
            Ok(()) => {
                self.failing = 0;
                self.last = "ok".into();
            }
            Err(why) => {
                self.failing += 1;
                self.last = why;
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub format: u32,
    pub next_seq: u64,
    pub patches: Vec<PatchRecord>,
    /// Where the code pannus points a borrowed thread at was found (`syscall; ret`, `ret`,
    /// restorer), so that a later pannus checks three addresses instead of searching again.
    #[serde(default)]
    pub gadgets: Option<[u64; 3]>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<&PatchRecord> {
        self.patches.iter().find(|p| p.patch == id)
    }
    pub fn get_mut(&mut self, id: &str) -> Option<&mut PatchRecord> {
        self.patches.iter_mut().find(|p| p.patch == id)
    }
    /// Patches not rolled back, in application order.
    pub fn applied(&self) -> impl Iterator<Item = &PatchRecord> {
        self.patches.iter().filter(|p| p.state.is_applied())
    }
    /// The applied patches that require `id`, directly or not: what a rollback of `id` with
    /// `--cascade` rolls back with it.
    pub fn dependents(&self, id: &str) -> Vec<String> {
        let mut order = vec![id.to_string()];
        let mut k = 0;
        while k < order.len() {
            let cur = order[k].clone();
            for p in self.applied() {
                if p.requires.contains(&cur) && !order.contains(&p.patch) {
                    order.push(p.patch.clone());
                }
            }
            k += 1;
        }
        order.split_off(1)
    }
}

/// The patches of `patches` that `patch` requires, directly or not, that are still in trial,
/// those applied first first: what a commit of `patch` has to commit with it (their rollback at
/// their deadline would take `patch` along).
pub fn required_in_trial(patches: &[PatchRecord], patch: &str) -> Vec<String> {
    let get = |id: &str| patches.iter().find(|p| p.patch == id);
    let mut seen: Vec<&PatchRecord> = Vec::new();
    let mut todo: Vec<&str> = vec![patch];
    while let Some(id) = todo.pop() {
        for req in get(id).map(|r| r.requires.as_slice()).unwrap_or_default() {
            if let Some(r) = get(req).filter(|r| r.state.is_applied() && !seen.iter().any(|s| s.patch == r.patch)) {
                seen.push(r);
                todo.push(&r.patch);
            }
        }
    }
    seen.retain(|r| r.state == State::Trial);
    seen.sort_by_key(|r| r.seq);
    seen.into_iter().map(|r| r.patch.clone()).collect()
}

/// Where the registry lives in a process.
#[derive(Debug, Clone, Copy)]
pub struct Location {
    pub addr: u64,
}

/// Finds the registry mapping in a process's address space.
pub fn locate(maps: &[Mapping]) -> Option<Location> {
    let want = format!("/memfd:{MAPPING_NAME}");
    maps.iter().find(|m| m.path.starts_with(&want) && m.len() >= SIZE).map(|m| Location { addr: m.start })
}

/// Reads the registry at `loc`.
pub fn read(mem: &Mem, loc: Location) -> Result<Registry> {
    let pid = mem.pid();
    let in_process = |e: Error| e.context(format!("process {pid}: the pannus registry mapping at {:#x}", loc.addr));
    let header = mem.read_vec(loc.addr, HEADER_LEN)?;
    match slot_of(&header).map_err(in_process)? {
        None => Ok(Registry { format: FORMAT, ..Default::default() }),
        Some((offset, len)) => {
            let payload = mem.read_vec(loc.addr + offset, len)?;
            decode(&payload).map_err(in_process)
        }
    }
}

/// Bytes of the header that say which slot is active and how long it is.
const HEADER_LEN: usize = 40;

/// Where the active slot's record lies in the mapping (offset, length), from the header's
/// bytes; `None` when the registry is empty. The header is the target's memory: every value is
/// checked, and a corrupt one is an error, never a panic or an out-of-bounds read.
pub fn slot_of(header: &[u8]) -> Result<Option<(u64, usize)>> {
    let Some(header) = header.get(..HEADER_LEN) else {
        return Err(Error::other(format!("the header is {} bytes, not {HEADER_LEN}", header.len())));
    };
    if &header[..8] != MAGIC {
        return Err(Error::other("no valid header"));
    }
    let word = |i: usize| header.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
    let format = word(8) as u32;
    if format != FORMAT {
        return Err(Error::other(format!(
            "registry format {format} is not understood by this pannus (format {FORMAT})"
        ))
        .hint("use the pannus release that applied these patches"));
    }
    let active = word(16) & 1;
    let len = word(24 + 8 * active as usize);
    if len == 0 {
        return Ok(None);
    }
    if len > SLOT {
        return Err(Error::other(format!("registry slot length {len} is corrupt")));
    }
    Ok(Some((HEADER + active * SLOT, len as usize)))
}

/// The bytes of a slot holding `reg`; refused when they would not fit in one.
pub fn encode(reg: &Registry) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(reg).map_err(|e| Error::other(format!("registry encoding: {e}")))?;
    if payload.len() as u64 > SLOT {
        return Err(Error::other("the registry is full: roll back or remove old patches first"));
    }
    Ok(payload)
}

/// The record of a slot, from its bytes (the target's memory: read with suspicion).
pub fn decode(payload: &[u8]) -> Result<Registry> {
    serde_json::from_slice(payload).map_err(|e| Error::other(format!("registry is unreadable: {e}")))
}

/// Reads the registry of a process without touching it; an empty one if it has none.
pub fn read_from(mem: &Mem, maps: &[Mapping]) -> Result<Registry> {
    match locate(maps) {
        Some(loc) => read(mem, loc),
        None => Ok(Registry { format: FORMAT, ..Default::default() }),
    }
}

/// The patches recorded in process `pid`, read without stopping it; `None` when it has no
/// registry (decided from the raw text of `/proc/PID/maps`, so that scanning every process of
/// a machine stays cheap).
pub fn read_process(pid: i32) -> Option<Vec<PatchRecord>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if !text.contains(MAPPING_NAME) {
        return None;
    }
    let maps = pannus_kernel::maps::read(pid).ok()?;
    let mem = Mem::open(pid).ok()?;
    read(&mem, locate(&maps)?).ok().map(|r| r.patches)
}

/// Writes `reg` into the inactive slot, then makes it the active one.
pub fn write(mem: &Mem, loc: Location, reg: &Registry) -> Result<()> {
    let payload = encode(reg)?;
    let header = mem.read_vec(loc.addr, HEADER_LEN)?;
    let active = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default()) & 1;
    let next = 1 - active;
    mem.write(loc.addr + HEADER + next * SLOT, &payload)?;
    mem.write(loc.addr + 24 + 8 * next, &(payload.len() as u64).to_le_bytes())?;
    mem.write(loc.addr + 16, &next.to_le_bytes())?;
    Ok(())
}

/// Creates the registry mapping in the process through a borrowed thread. `scratch` is an
/// address of at least 64 writable-by-pannus bytes in the target for the mapping's name.
pub fn create(h: &mut Hijack, mem: &Mem, scratch: u64) -> Result<Location> {
    use pannus_kernel::{MemFdCreateFlag, ProtFlags};
    let mut name = MAPPING_NAME.as_bytes().to_vec();
    name.push(0);
    mem.write(scratch, &name)?;
    let fd = h.memfd_create(scratch, MemFdCreateFlag::MFD_CLOEXEC)?;
    let result = (|| {
        h.ftruncate(fd, SIZE)?;
        h.mmap(0, SIZE, ProtFlags::PROT_READ, MAP, Some(fd), 0)
    })();
    let _ = h.close(fd);
    let addr = result?;
    let mut header = Vec::with_capacity(40);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]);
    header.extend_from_slice(&[0u8; 24]);
    mem.write(addr, &header)?;
    Ok(Location { addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry as the previous pannus wrote it (format 1): every field present, 0 for none.
    /// `compute-fix` is an mmap patch in trial whose replacement is reached through a jump stub;
    /// `dl-fix` a dlopen patch rolled back, its module closed.
    const WRITTEN_BEFORE: &str = concat!(
        r#"{"format":1,"next_seq":2,"patches":[{"patch":"compute-fix","version":"1.0","#,
        r#""description":"d","state":"trial","seq":1,"requires":[],"manifest":"/srv/compute.yaml","#,
        r#""manifest_digest":"ab","module":"/srv/compute.so","module_sha256":"cd","#,
        r#""target_object":"/usr/bin/target","build_id":"3f2a","module_base":139716164190208,"#,
        r#""module_size":20480,"functions":[{"target":"compute","replacement":"compute_v2","#,
        r#""address":93824992219449,"replacement_address":139716164194560,"replacement_size":42,"#,
        r#""via":93824992280576,"jump":"rel32","patch_address":93824992219449,"original":"554889e589","#,
        r#""written":"e9c2ee0a00"}],"applied_at":1800000000,"trial_deadline":1800000300,"#,
        r#""trial_seconds":300,"on_expiry":"rollback","ended_at":null,"note":null,"module_mapped":true,"#,
        r#""retries":100,"retry_interval_ms":10,"consistency":"function","#,
        r#""health_check":{"command":"true","interval_ms":1000,"timeout_ms":500,"failures":3},"#,
        r#""health":{"runs":2,"failing":0,"last":"ok","last_at":1800000100},"load":"mmap","handle":0,"#,
        r#""trampoline":93824992280576,"trampoline_size":4096,"eh_frame":139716164202496},"#,
        r#"{"patch":"dl-fix","version":"1.0","description":null,"state":"rolled-back","seq":2,"#,
        r#""requires":[],"manifest":"/srv/compute.yaml","manifest_digest":"ab","#,
        r#""module":"/srv/compute.so","module_sha256":"cd","target_object":"/usr/bin/target","#,
        r#""build_id":"3f2a","module_base":139716164190208,"module_size":20480,"#,
        r#""functions":[{"target":"compute","replacement":"compute_v2","address":93824992219449,"#,
        r#""replacement_address":139716164194560,"replacement_size":0,"via":0,"jump":"abs64","#,
        r#""patch_address":93824992219449,"original":"554889e589","written":"e9c2ee0a00"}],"#,
        r#""applied_at":1800000000,"trial_deadline":null,"trial_seconds":300,"on_expiry":"commit","#,
        r#""ended_at":1800000200,"note":"rolled back by hand","module_mapped":false,"retries":100,"#,
        r#""retry_interval_ms":10,"consistency":"entry","health_check":null,"health":null,"#,
        r#""load":"dlopen","handle":0,"trampoline":0,"trampoline_size":0,"eh_frame":0}],"#,
        r#""gadgets":[1,2,3]}"#,
    );

    fn header(format: u32, active: u64, lens: [u64; 2]) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&format.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        for w in [active, lens[0], lens[1]] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    }

    #[test]
    fn a_header_from_the_target_is_checked_before_it_is_used() {
        assert_eq!(slot_of(&header(1, 0, [0, 0])).unwrap(), None, "empty");
        assert_eq!(slot_of(&header(1, 1, [7, 120])).unwrap(), Some((HEADER + SLOT, 120)), "the active slot");
        assert_eq!(slot_of(&header(1, 3, [7, 120])).unwrap(), Some((HEADER + SLOT, 120)), "one bit says which");
        let corrupt = slot_of(&header(1, 0, [SLOT + 1, 0])).unwrap_err();
        assert!(corrupt.message.contains("is corrupt"), "{corrupt}");
        assert!(slot_of(&header(2, 0, [0, 0])).unwrap_err().message.contains("format 2"));
        assert!(slot_of(&header(1, 0, [0, 0])[..39]).is_err(), "short");
        let mut bad = header(1, 0, [0, 0]);
        bad[0] = b'X';
        assert!(slot_of(&bad).unwrap_err().message.contains("no valid header"));
        assert!(decode(b"{not json").unwrap_err().message.contains("unreadable"));
    }

    #[test]
    fn reads_a_registry_written_by_the_previous_pannus() {
        let reg: Registry = serde_json::from_str(WRITTEN_BEFORE).unwrap();
        assert_eq!((reg.format, reg.next_seq, reg.gadgets), (1, 2, Some([1, 2, 3])));
        let mmap = reg.get("compute-fix").unwrap();
        assert_eq!(mmap.state, State::Trial);
        assert_eq!(mmap.load, LoadMethod::Mmap);
        assert_eq!(mmap.on_expiry, OnExpiry::Rollback);
        assert_eq!(mmap.consistency, Consistency::Function);
        let check = HealthCheck { command: "true".into(), interval_ms: 1000, timeout_ms: 500, failures: 3 };
        assert_eq!(mmap.health_check, Some(check));
        assert_eq!(mmap.handle, None);
        assert_eq!(mmap.stubs, Some(Stubs { addr: 0x5555_5556_0000, size: 4096 }));
        assert_eq!(mmap.eh_frame, Some(0x7f12_3456_3000));
        let f = &mmap.functions[0];
        assert_eq!((f.replacement_size, f.via), (Some(42), Some(0x5555_5556_0000)));
        assert_eq!(f.replacement_address, 0x7f12_3456_1100);

        let dl = reg.get("dl-fix").unwrap();
        assert_eq!((dl.state, dl.load, dl.on_expiry), (State::RolledBack, LoadMethod::Dlopen, OnExpiry::Commit));
        assert_eq!((dl.handle, dl.stubs, dl.eh_frame), (None, None, None));
        assert_eq!((dl.functions[0].replacement_size, dl.functions[0].via), (None, None));
    }

    /// What the unload needs to look for pointers into a module (its code ran, its unwind
    /// tables): absent from an older record, kept through a write and a read.
    #[test]
    fn what_the_unload_looks_for_reads_back() {
        let mut reg: Registry = serde_json::from_str(WRITTEN_BEFORE).unwrap();
        let rec = reg.get_mut("compute-fix").unwrap();
        assert_eq!((rec.init_ran, rec.unwind_tables.len()), (false, 0), "absent from an older record");
        rec.init_ran = true;
        rec.unwind_tables = vec![[0x7f12_3456_2008, 0x7f12_3456_20f0]];
        let again = decode(&encode(&reg).unwrap()).unwrap();
        assert_eq!(again, reg);
        // The fuzz target's seed holding them is a registry this pannus reads.
        let seed = include_bytes!("../fuzz/corpus/registry/seed-patch");
        assert_eq!(slot_of(&seed[..HEADER_LEN]).unwrap(), Some((HEADER, seed.len() - HEADER_LEN)));
        let rec = decode(&seed[HEADER_LEN..]).unwrap().patches.remove(0);
        assert_eq!((rec.init_ran, rec.unwind_tables, rec.fini), (true, vec![[8200, 8300]], vec![4200]));
    }

    #[test]
    fn writes_what_the_previous_pannus_reads() {
        let reg: Registry = serde_json::from_str(WRITTEN_BEFORE).unwrap();
        // The same bytes, without the fields that said none with a 0: the previous pannus
        // reads each of them as 0 when absent.
        let mut want = WRITTEN_BEFORE.to_string();
        for zero in [
            r#","handle":0,"trampoline":0,"trampoline_size":0,"eh_frame":0"#,
            r#""handle":0,"#,
            r#""replacement_size":0,"via":0,"#,
        ] {
            assert!(want.contains(zero), "{zero}");
            want = want.replace(zero, "");
        }
        assert_eq!(serde_json::to_string(&reg).unwrap(), want);
        assert_eq!(serde_json::from_str::<Registry>(&want).unwrap(), reg);
    }

    #[test]
    fn zero_reads_as_none() {
        #[derive(Deserialize)]
        struct Field {
            #[serde(default, deserialize_with = "zero_is_none")]
            v: Option<u64>,
        }
        let read = |s: &str| serde_json::from_str::<Field>(s).unwrap().v;
        assert_eq!(read(r#"{"v":0}"#), None);
        assert_eq!(read(r#"{"v":null}"#), None);
        assert_eq!(read("{}"), None);
        assert_eq!(read(r#"{"v":140737488347136}"#), Some(0x7fff_ffff_e000));
    }

    #[test]
    fn manifest_types_convert() {
        assert_eq!(OnExpiry::from(manifest::OnExpiry::Rollback), OnExpiry::Rollback);
        assert_eq!(Consistency::from(manifest::Consistency::Function), Consistency::Function);
        assert_eq!(LoadMethod::from(manifest::LoadMethod::Dlopen), LoadMethod::Dlopen);
        let h =
            manifest::HealthCheck { command: "curl -f localhost".into(), interval_ms: 1, timeout_ms: 2, failures: 3 };
        let recorded = HealthCheck::from(&h);
        assert_eq!(serde_json::to_value(&recorded).unwrap(), serde_json::to_value(&h).unwrap());
    }
}
