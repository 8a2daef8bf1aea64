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
    pub screens: &'static [Screen],
}

const ALL: &[Screen] = &[Screen::Processes, Screen::Detail, Screen::Wizard, Screen::Trial, Screen::Journal];
const LIST: &[Screen] = &[Screen::Processes, Screen::Detail];

pub const BINDINGS: &[Binding] = &[
    Binding { keys: "?", action: "help", footer: true, screens: ALL },
    Binding { keys: "/", action: "filter", footer: true, screens: &[Screen::Processes] },
    Binding { keys: "Enter", action: "open", footer: true, screens: &[Screen::Processes, Screen::Wizard] },
    Binding {
        keys: "Esc",
        action: "back",
        footer: true,
        screens: &[Screen::Detail, Screen::Wizard, Screen::Trial, Screen::Journal],
    },
    Binding { keys: "↑↓ j k", action: "move", footer: false, screens: ALL },
    Binding { keys: "PgUp PgDn Home End", action: "move by page, to the ends", footer: false, screens: ALL },
    Binding { keys: "Tab", action: "next pane", footer: true, screens: &[Screen::Detail] },
    Binding { keys: "a", action: "apply", footer: true, screens: LIST },
    Binding { keys: "t", action: "trial", footer: false, screens: LIST },
    Binding { keys: "C", action: "commit", footer: true, screens: &[Screen::Processes, Screen::Detail, Screen::Trial] },
    Binding {
        keys: "R",
        action: "ROLLBACK",
        footer: true,
        screens: &[Screen::Processes, Screen::Detail, Screen::Trial],
    },
    Binding { keys: "p", action: "patched only", footer: false, screens: &[Screen::Processes] },
    Binding { keys: "J", action: "journal", footer: false, screens: &[Screen::Processes, Screen::Detail] },
    Binding { keys: "q", action: "quit", footer: true, screens: ALL },
];

/// What the help screen says about `R` and the other destructive keys.
pub const NOTES: &[&str] = &[
    "R rolls back the selected process's most recent patch at once, with no dialog",
    "  (rollback is the safe direction); its outcome shows in the footer.",
    "Every stage of an apply shows exactly what it will do and waits for Enter;",
    "  Esc at a confirmation cancels and undoes the stages already done.",
];

/// The bindings that work on `screen`.
pub fn for_screen(screen: Screen) -> impl Iterator<Item = &'static Binding> {
    BINDINGS.iter().filter(move |b| b.screens.contains(&screen))
}
