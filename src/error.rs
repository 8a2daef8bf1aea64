//! Errors as the operator needs them: what went wrong, naming the culprit, and what to do next.
//! Each error has a kind that maps to the CLI's documented exit code.

use std::fmt;

/// The class of a failure; decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Arguments, manifest, or module unusable (exit 2).
    BadInput,
    /// The safety check kept failing for the whole retry budget (exit 3).
    Busy,
    /// A precondition about the target is not met (exit 4).
    Precondition,
    /// Anything else (exit 1).
    Other,
    /// Cancelled by the operator: "no" at a prompt, or Ctrl-C, SIGTERM or SIGHUP (exit 1).
    Cancelled,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Other | Kind::Cancelled => 1,
            Kind::BadInput => 2,
            Kind::Busy => 3,
            Kind::Precondition => 4,
        }
    }
}

/// A failure with its kind, a message naming the culprit, and an optional next step.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), hint: None }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Kind::Precondition, message)
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(Kind::Busy, message)
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Kind::Other, message)
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(Kind::Cancelled, message)
    }
    /// Adds what the operator should do next.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Prefixes the message with context (e.g. "stage 2 (link)").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<pannus_kernel::Error> for Error {
    fn from(e: pannus_kernel::Error) -> Self {
        let kind = match e {
            pannus_kernel::Error::NoProcess { .. } => Kind::Precondition,
            pannus_kernel::Error::Permission { .. } => Kind::Precondition,
            // Like a thread in the way: every thread runs again, and a later attempt may succeed.
            pannus_kernel::Error::NotStopped { .. } => Kind::Busy,
            // The thread has moved on by a later attempt, most often.
            pannus_kernel::Error::NoRoom { .. } => Kind::Busy,
            // A system call the target's kernel refused, as any other failure inside it.
            pannus_kernel::Error::Syscall { .. } => Kind::Other,
            _ => Kind::Other,
        };
        let hint = match &e {
            pannus_kernel::Error::Permission { .. } => {
                Some("run pannus as root or with CAP_SYS_PTRACE; check kernel.yama.ptrace_scope".to_string())
            }
            pannus_kernel::Error::NotStopped { .. } => Some(
                "the thread is blocked where no stop reaches it (a vfork parent waiting for its child, an \
                 uninterruptible sleep on a dead NFS or FUSE mount); retry once it has moved on, or raise \
                 safety.retries or --stop-timeout"
                    .to_string(),
            ),
            pannus_kernel::Error::Abandoned { .. } => Some(
                "nothing more is asked of that thread; see what the process does (pannus status), and retry once \
                 the thread has moved on"
                    .to_string(),
            ),
            pannus_kernel::Error::NoRoom { .. } => Some(
                "the thread runs on a small stack near its bottom (a coroutine's, an alternate signal stack); \
                 retry once it has moved on"
                    .to_string(),
            ),
            _ => None,
        };
        Error { kind, message: e.to_string(), hint }
    }
}
