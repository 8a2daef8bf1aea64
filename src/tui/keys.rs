//! The console's key table: the footer and the help screen are both generated from it, so the
//! hints never drift from the real bindings.

use super::app::Screen;

/// One binding, and where it works.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub keys: &'static str,
    pub action: &'static str,
    /// Shown in the footer (the help screen shows every binding).
    pub footer: bool,
    /// Acts on one patch ([`super::app::App::key_target`]), which the footer names.
    pub on_patch: bool,
    pub screens: &'static [Screen],
}

const ALL: &[Screen] =
    &[Screen::Processes, Screen::Detail, Screen::Wizard, Screen::Trial, Screen::Journal, Screen::Installed];
const LIST: &[Screen] = &[Screen::Processes, Screen::Detail];

pub const BINDINGS: &[Binding] = &[
    Binding { keys: "?", action: "help", footer: true, on_patch: false, screens: ALL },
    Binding {
        keys: "/",
        action: "filter",
        footer: true,
        on_patch: false,
        screens: &[Screen::Processes, Screen::Journal],
    },
    Binding {
        keys: "Enter",
        action: "open",
        footer: true,
        on_patch: false,
        screens: &[Screen::Processes, Screen::Wizard, Screen::Journal],
    },
    Binding {
        keys: "Esc",
        action: "back",
        footer: true,
        on_patch: false,
        screens: &[Screen::Detail, Screen::Wizard, Screen::Trial, Screen::Journal, Screen::Installed],
    },
    Binding { keys: "↑↓ j k", action: "move", footer: false, on_patch: false, screens: ALL },
    Binding {
        keys: "PgUp PgDn Home End",
        action: "move by page, to the ends",
        footer: false,
        on_patch: false,
        screens: ALL,
    },
    Binding { keys: "Tab", action: "next pane", footer: true, on_patch: false, screens: &[Screen::Detail] },
    Binding { keys: "a", action: "apply", footer: true, on_patch: false, screens: LIST },
    Binding { keys: "t", action: "trial", footer: false, on_patch: false, screens: LIST },
    Binding {
        keys: "C",
        action: "commit",
        footer: true,
        on_patch: true,
        screens: &[Screen::Processes, Screen::Detail, Screen::Trial],
    },
    Binding {
        keys: "R",
        action: "roll back",
        footer: true,
        on_patch: true,
        screens: &[Screen::Processes, Screen::Detail, Screen::Trial],
    },
    Binding {
        keys: "R",
        action: "roll back everywhere and uninstall",
        footer: true,
        on_patch: false,
        screens: &[Screen::Installed],
    },
    Binding { keys: "i", action: "installed patches", footer: true, on_patch: false, screens: &[Screen::Processes] },
    Binding { keys: "p", action: "patched only", footer: false, on_patch: false, screens: &[Screen::Processes] },
    Binding {
        keys: "K",
        action: "kernel threads shown or hidden",
        footer: false,
        on_patch: false,
        screens: &[Screen::Processes],
    },
    Binding {
        keys: "s",
        action: "sort by the next column (state, pid, name, threads, user)",
        footer: false,
        on_patch: false,
        screens: &[Screen::Processes],
    },
    Binding { keys: "I", action: "reverse the sort", footer: false, on_patch: false, screens: &[Screen::Processes] },
    Binding {
        keys: "J",
        action: "journal",
        footer: false,
        on_patch: false,
        screens: &[Screen::Processes, Screen::Detail],
    },
    Binding {
        keys: "i p o",
        action: "only the selected entry's pid, patch, outcome (again: all)",
        footer: false,
        on_patch: false,
        screens: &[Screen::Journal],
    },
    Binding { keys: "q", action: "quit", footer: true, on_patch: false, screens: ALL },
];

/// What the help screen says about `R` and the other destructive keys.
pub const NOTES: &[&str] = &[
    "The journal's / search keeps the entries that match every word; a word",
    "  pid:N, patch:ID, outcome:WORD, source:WORD, action:WORD or user:NAME",
    "  must match that field exactly (source: cli, console or watcher).",
    "R and C act on one patch, named in the footer: in the list, the newest patch",
    "  of the selected process; in the process view, the highlighted one; on the",
    "  trial screen, the trial's.",
    "R rolls it back at once (rollback is the safe direction), unless other patches",
    "  require it: one confirmation names them; Enter rolls them back too.",
    "C commits it; when it requires patches still on trial, one confirmation names",
    "  them; Enter commits them too, first.",
    "In the installed patches (i), R rolls the selected one back from every process",
    "  and uninstalls it, with the installed patches that require it: one",
    "  confirmation names them and says how many processes it touches.",
    "Every stage of an apply shows exactly what it will do and waits for Enter;",
    "  Esc at a confirmation cancels and undoes the stages already done.",
];

/// The bindings that work on `screen`.
pub fn for_screen(screen: Screen) -> impl Iterator<Item = &'static Binding> {
    BINDINGS.iter().filter(move |b| b.screens.contains(&screen))
}

/// The words the screens use for states, as the help screen explains them.
pub const LEGEND: &[(&str, &str)] = &[
    ("TRIAL 04:12", "a patch on trial: time left before its expiry policy"),
    ("", "  (drawn as urgent, \"in under 30 s\", near the deadline)"),
    ("OVERDUE", "on trial past its deadline: nobody carried out its policy"),
    ("ACTIVE", "patches applied and committed"),
    ("PARTIAL!", "a patch left between stages by a killed pannus: roll back"),
    ("-", "no patch applied"),
    ("NO LONGER PATCHED", "the process on view has had its patches rolled back"),
    ("REPLACED ON DISK", "the executable changed on disk since the process started"),
    ("BUILD-ID", "the build-id of the executable it runs (12 digits)"),
    ("▲ ▼", "the column the list is sorted by, up or down (s, I)"),
    ("COMMITTED", "installed patch committed: new processes get it committed"),
    ("ROLLED BACK", "installed patch rolled back (why follows): new processes do not get it"),
    ("2/3", "installed patch: processes of its build that have it, of those running"),
    ("NOTICE", "a change made elsewhere (a trial watcher, another pannus)"),
    ("✓ ● ○ ↺", "apply stages: done, now, to do, undone"),
];
