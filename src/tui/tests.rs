//! The console drawn on ratatui's TestBackend: every screen at 80x24 and 120x40 (insta
//! snapshots), every screen at tiny sizes without a panic, and what the keys do.

use super::app::{App, Fit, ManifestFile, Phase, Screen, Wizard, MESSAGE_OK_SECS, NOTICE_SECS};
use super::installed::{List as InstalledList, Row as InstalledRow};
use super::jobs::{Event, Job};
use super::render::{self, Theme};
use super::snapshot::Snapshot;
use crate::engine::{CheckLine, Stage};
use crate::install::State as InstalledState;
use crate::journal::{Entry, Recorded};
use crate::processes::Process;
use crate::registry::{FunctionRecord, JumpKind, OnExpiry, PatchRecord, State};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::path::PathBuf;

const NOW: u64 = 1_800_000_000;

fn patch(id: &str, seq: u64, state: State, requires: &[&str], left: u64) -> PatchRecord {
    PatchRecord {
        patch: id.into(),
        version: "1.0".into(),
        description: None,
        state,
        seq,
        requires: requires.iter().map(|s| s.to_string()).collect(),
        manifest: format!("/srv/patches/{id}.yaml"),
        manifest_digest: "00".into(),
        module: format!("/srv/patches/{id}.so"),
        module_sha256: "00".into(),
        target_object: "/usr/sbin/sipd".into(),
        build_id: "3f2a".into(),
        module_base: 0x5555_0000_0000 + seq * 0x10000,
        module_size: 0x5000,
        functions: vec![FunctionRecord {
            target: format!("handle_{}", id.replace('-', "_")),
            replacement: format!("handle_{}_fixed", id.replace('-', "_")),
            implementation: None,
            in_use: None,
            address: 0x5555_5555_1000 + seq * 0x40,
            replacement_address: 0x5555_0000_1100 + seq * 0x10000,
            replacement_size: Some(0x20),
            via: None,
            jump: JumpKind::Rel32,
            patch_address: 0x5555_5555_1000 + seq * 0x40,
            original: "5548".into(),
            written: "e9".into(),
        }],
        applied_at: NOW - 100,
        trial_deadline: (state == State::Trial).then_some(NOW + left),
        trial_seconds: 300,
        on_expiry: OnExpiry::Commit,
        ended_at: None,
        note: None,
        module_mapped: true,
        retries: 100,
        retry_interval_ms: 10,
        consistency: Default::default(),
        health_check: None,
        health: None,
        load: Default::default(),
        handle: None,
        stubs: None,
        eh_frame: None,
        fini: Vec::new(),
        init_ran: false,
        unwind_tables: Vec::new(),
        module_fd: None,
        applied_in: None,
    }
}

fn row(pid: i32, name: &str, patches: Vec<PatchRecord>) -> Process {
    Process {
        pid: pid.into(),
        name: name.into(),
        uid: 1001,
        user: Some("telco".into()),
        threads: 12,
        exe: format!("/usr/sbin/{name}"),
        arch: Some(pannus_kernel::Arch::X86_64),
        kernel_thread: false,
        state: 'S',
        build_id: Some(format!("3f2a{:04x}9c1b0e447d55aa01b2c3d4e5f607182930", pid)),
        patches,
    }
}

fn app() -> App {
    let mut a = App::new(PathBuf::from("/srv/manifests"));
    a.now = NOW;
    let mut kthreadd = row(2, "kthreadd", vec![]);
    kthreadd.exe.clear();
    kthreadd.kernel_thread = true;
    let mut legacyd = row(1500, "legacyd", vec![]);
    legacyd.exe.push_str(" (deleted)");
    let mut rows = vec![
        row(1, "systemd", vec![]),
        kthreadd,
        row(
            812,
            "sipd",
            vec![
                patch("base-fix", 1, State::Committed, &[], 0),
                patch("invite-fix", 2, State::Trial, &["base-fix"], 252),
                patch("cdr-fix", 3, State::Trial, &["base-fix"], 3000),
            ],
        ),
        row(901, "mediad", vec![patch("rtp-fix", 1, State::Linked, &[], 0)]),
        row(1200, "billingd", vec![patch("old-fix", 1, State::RolledBack, &[], 0)]),
    ];
    rows.push(legacyd);
    for pid in 2000..2030 {
        rows.push(row(pid, "worker", vec![]));
    }
    a.set_snapshot(Snapshot { rows });
    a.selected = Some(812);
    a.journal = vec![
        Recorded {
            entry: Entry {
                time: "2026-11-27T08:00:00Z".into(),
                user: "alice".into(),
                uid: 1000,
                action: "apply".into(),
                pid: 812,
                process: "sipd".into(),
                patch: Some("invite-fix".into()),
                outcome: "ok".into(),
                detail: "state trial".into(),
            },
            source: "console".into(),
        },
        Recorded {
            entry: Entry {
                time: "2026-11-27T08:01:00Z".into(),
                user: "bob".into(),
                uid: 1001,
                action: "apply".into(),
                pid: 901,
                process: "mediad".into(),
                patch: Some("rtp-fix".into()),
                outcome: "busy".into(),
                detail: "busy: after 101 attempts, thread(s) 905 still in the way".into(),
            },
            source: "cli".into(),
        },
    ];
    a
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

/// The screen as text, one line per row.
fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::draw(f, app, Theme { color: false })).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn wizard_app(phase: Phase) -> App {
    let mut a = app();
    a.screen = Screen::Wizard;
    a.wizard = Some(Wizard {
        pid: 812,
        files: vec![
            ManifestFile {
                path: "/srv/manifests/invite-fix.yaml".into(),
                summary: Ok("invite-fix 1.0.2 — Fix crash on INVITE".into()),
                fit: Fit::Matches,
            },
            ManifestFile {
                path: "/srv/manifests/broken.yaml".into(),
                summary: Err("broken.yaml:3:1: unknown key `targt`".into()),
                fit: Fit::Unknown,
            },
        ],
        index: 0,
        phase,
        patch: "invite-fix".into(),
        done: vec![Stage::Load, Stage::Link],
        current: None,
        log: vec![
            "stage 1 (load): module mapped at 0x555500010000".into(),
            "stage 2 (link): relocations applied".into(),
        ],
        scroll: 0,
        trial: "then a trial of 5m: at its end the patch is committed (on_expiry: commit); no health check".into(),
        undone: vec![],
    });
    a
}

fn every_screen() -> Vec<(&'static str, App)> {
    let mut list = vec![("processes", app())];
    let mut filtered = app();
    for c in "sip".chars() {
        if c == 's' {
            filtered.on_key(ch('/'));
        }
        filtered.on_key(ch(c));
    }
    list.push(("processes-filter", filtered));
    let mut detail = app();
    detail.on_key(key(KeyCode::Enter));
    detail.on_key(key(KeyCode::Up));
    list.push(("detail", detail));
    list.push(("wizard-pick", {
        let mut w = wizard_app(Phase::Pick);
        if let Some(w) = w.wizard.as_mut() {
            w.done.clear();
        }
        w
    }));
    list.push((
        "wizard-report",
        wizard_app(Phase::Report {
            lines: vec![
                CheckLine { check: "module checksum".into(), ok: true, detail: "sha256 9b1d".into() },
                CheckLine {
                    check: "entry handle_invite".into(),
                    ok: true,
                    detail: "jmp rel32 at 0x5555555551c0, 8 bytes overwritten (5 written)".into(),
                },
            ],
            error: None,
        }),
    ));
    list.push((
        "wizard-confirm",
        wizard_app(Phase::Running {
            confirm: Some((
                Stage::Init,
                "run 2 init function(s) of the module inside process 812 on one borrowed thread".into(),
            )),
        }),
    ));
    list.push(("wizard-failed", {
        let mut w = wizard_app(Phase::Done {
            ok: false,
            message: "stage 4 (activate): busy: after 101 attempts, thread(s) 905 still in the way\n  undone: init, link, load (the process is as it was)".into(),
        });
        w.message = Some((false, "stage 4 (activate): busy".into()));
        w.message_at = NOW;
        if let Some(wz) = w.wizard.as_mut() {
            wz.undone = std::mem::take(&mut wz.done);
        }
        w
    }));
    let mut trial = app();
    trial.trial = Some((812, "invite-fix".into()));
    trial.screen = Screen::Trial;
    list.push(("trial", trial));
    let mut journal = app();
    journal.screen = Screen::Journal;
    list.push(("journal", journal));
    let mut entry = app();
    entry.screen = Screen::Journal;
    entry.journal_offset = 1;
    entry.journal_open = true;
    list.push(("journal-entry", entry));
    let mut help = app();
    help.help = true;
    list.push(("help", help));
    list.push(("installed", installed_app()));
    list
}

fn installed_row(patch: &str, object: &str, build_id: &str, state: InstalledState, requires: &[&str]) -> InstalledRow {
    InstalledRow {
        patch: patch.into(),
        version: "1.0".into(),
        object: object.into(),
        build_id: build_id.into(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        state,
        trial_deadline: None,
        on_expiry: crate::manifest::OnExpiry::Commit,
        reason: None,
        processes: 3,
        patched: 3,
        manifest: format!("/var/lib/pannus/installed/{patch}/manifest.yaml").into(),
        canary: None,
    }
}

/// The installed view on: two binaries, four installed patches (base-fix, invite-fix requiring
/// it, a rolled-back one, and one in its last seconds of trial in a library).
fn installed_app() -> App {
    let mut a = app();
    let sipd = "/usr/sbin/sipd";
    let lib = "/usr/lib/libsip.so.2";
    let sipd_id = "3f2a00009c1b0e447d55aa01b2c3d4e5f6071829";
    let lib_id = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";
    let mut invite = installed_row("invite-fix", sipd, sipd_id, InstalledState::Trial, &["base-fix"]);
    invite.version = "1.0.2".into();
    invite.trial_deadline = Some(NOW + 252);
    invite.patched = 2;
    let mut old = installed_row("old-fix", sipd, sipd_id, InstalledState::RolledBack, &[]);
    old.reason = Some("canary failed: process 2001 rolled back by its health check".into());
    old.patched = 0;
    let mut libfix = installed_row("lib-fix", lib, lib_id, InstalledState::Trial, &[]);
    libfix.trial_deadline = Some(NOW + 20);
    libfix.on_expiry = crate::manifest::OnExpiry::Rollback;
    libfix.processes = 1;
    libfix.patched = 1;
    a.set_installed(InstalledList {
        rows: vec![libfix, installed_row("base-fix", sipd, sipd_id, InstalledState::Committed, &[]), invite, old],
        error: None,
    });
    a.on_key(ch('i'));
    a
}

#[test]
fn every_screen_at_80x24_and_120x40() {
    for (name, app) in every_screen() {
        insta::assert_snapshot!(format!("{name}-80x24"), screen(&app, 80, 24));
        insta::assert_snapshot!(format!("{name}-120x40"), screen(&app, 120, 40));
    }
}

#[test]
fn tiny_and_odd_sizes_do_not_panic() {
    for (_, app) in every_screen() {
        for (w, h) in [(1, 1), (10, 3), (20, 6), (30, 8), (40, 10), (79, 23), (200, 5), (5, 80)] {
            screen(&app, w, h);
        }
    }
}

#[test]
fn states_are_words_not_only_colour() {
    let s = screen(&app(), 80, 24);
    assert!(s.contains("TRIAL 04:12"), "{s}");
    assert!(s.contains("PARTIAL!"), "{s}");
    let d = screen(&every_screen().remove(2).1, 80, 24);
    assert!(d.contains("committed") && d.contains("trial"), "{d}");
}

#[test]
fn filter_selects_the_first_match_as_you_type() {
    let mut a = app();
    a.selected = Some(1);
    a.on_key(ch('/'));
    a.on_key(ch('m'));
    a.on_key(ch('e'));
    assert_eq!(a.selected, Some(901), "mediad");
    a.on_key(key(KeyCode::Backspace));
    a.on_key(key(KeyCode::Backspace));
    for c in "cdr".chars() {
        a.on_key(ch(c));
    }
    assert_eq!(a.selected, Some(812), "a patch id matches too");
    a.on_key(key(KeyCode::Esc));
    assert!(a.filter.is_empty());
}

#[test]
fn r_rolls_back_the_most_recent_patch_at_once() {
    let mut a = app();
    assert_eq!(a.on_key(ch('R')), Some(Job::Rollback { pid: 812, patch: "cdr-fix".into(), cascade: vec![] }));
    assert!(a.busy.is_some());
    // One action at a time.
    assert_eq!(a.on_key(ch('R')), None);
    a.on_event(Event::RolledBack { pid: 812, result: Ok(vec!["cdr-fix".into()]) });
    assert_eq!(a.message, Some((true, "rolled back in process 812: cdr-fix".into())));
    assert!(screen(&a, 80, 24).contains("rolled back in process 812: cdr-fix"));
}

#[test]
fn commit_on_the_detail_screen_takes_the_selected_patch() {
    let mut a = app();
    a.on_key(key(KeyCode::Enter));
    a.on_key(key(KeyCode::Up));
    assert_eq!(
        a.on_key(ch('C')),
        Some(Job::Commit {
            pid: 812,
            patch: "invite-fix".into(),
            with: vec![],
            note: "committed from the console".into()
        })
    );
}

#[test]
fn wizard_confirms_each_stage_and_esc_cancels() {
    let mut a = wizard_app(Phase::Pick);
    let job = a.on_key(key(KeyCode::Enter));
    assert_eq!(job, Some(Job::Check { pid: 812, manifest: "/srv/manifests/invite-fix.yaml".into() }));
    a.on_event(Event::Checked {
        pid: 812,
        patch: "invite-fix".into(),
        trial: "then a trial of 5m".into(),
        lines: vec![],
        error: None,
    });
    let job = a.on_key(key(KeyCode::Enter));
    assert_eq!(job, Some(Job::Apply { pid: 812, manifest: "/srv/manifests/invite-fix.yaml".into() }));
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_event(Event::Confirm { stage: Stage::Load, plan: "map it".into(), reply: tx });
    assert!(screen(&a, 80, 24).contains("Stage 1 of 4: LOAD"));
    a.on_key(ch('x')); // ignored while the confirmation waits
    a.on_key(key(KeyCode::Enter));
    assert_eq!(rx.try_recv(), Ok(true));
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_event(Event::Confirm { stage: Stage::Link, plan: "link it".into(), reply: tx });
    a.on_key(key(KeyCode::Esc));
    assert_eq!(rx.try_recv(), Ok(false));
    assert!(a.wizard.as_ref().unwrap().log.iter().any(|l| l.contains("cancelled; undoing")));
}

#[test]
fn expired_trial_on_screen_gets_its_policy_once() {
    let mut a = app();
    a.trial = Some((812, "invite-fix".into()));
    a.screen = Screen::Trial;
    assert_eq!(a.tick(), None);
    a.now = NOW + 252 + 6;
    assert_eq!(a.tick(), Some(Job::Expire { pid: 812, patch: "invite-fix".into() }));
    a.busy = None;
    assert_eq!(a.tick(), None, "not twice");
}

#[test]
fn dependency_graph_shows_both_directions() {
    let a = app();
    let row = a.selected_row().unwrap();
    let lines: Vec<String> = render::detail_graph_text(&row.patches, Some("base-fix"));
    assert_eq!(lines[0], "● base-fix [committed]");
    assert_eq!(lines[1], "└─▶ ○ invite-fix [trial]");
    assert_eq!(lines[2], "└─▶ ○ cdr-fix [trial]");
    assert!(lines.iter().any(|l| l == "needed by:  invite-fix, cdr-fix"));
}

#[test]
fn the_detail_view_stays_on_its_process_after_a_rollback() {
    let mut a = app();
    a.on_key(ch('p'));
    a.selected = Some(812);
    a.on_key(key(KeyCode::Enter));
    assert!(matches!(a.on_key(ch('R')), Some(Job::Rollback { pid: 812, .. })));
    a.on_event(Event::RolledBack { pid: 812, result: Ok(vec!["cdr-fix".into()]) });
    // The process's patches all rolled back: it leaves the patched-only list.
    let mut rows = a.snapshot.rows.clone();
    for p in &mut rows.iter_mut().find(|r| r.pid.get() == 812).unwrap().patches {
        p.state = State::RolledBack;
    }
    a.set_snapshot(Snapshot { rows });
    assert_eq!(a.screen, Screen::Detail);
    let s = screen(&a, 80, 24);
    assert!(s.contains(" 812 ") && s.contains("NO LONGER PATCHED"), "{s}");
    assert_eq!(a.on_key(ch('R')), None, "nothing on screen to roll back");
    assert!(a.message.as_ref().is_some_and(|m| m.1.contains("nothing to roll back")), "{:?}", a.message);
    assert_eq!(a.on_key(ch('C')), None);
    a.on_key(key(KeyCode::Esc));
    assert_eq!(a.screen, Screen::Processes);
    assert_ne!(a.selected, Some(812), "no longer listed");
}

#[test]
fn ctrl_c_at_a_confirmation_means_no_and_with_nothing_pending_quits() {
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    // The confirmation R raises on a patch others require.
    let mut a = app();
    a.on_key(key(KeyCode::Enter));
    a.on_key(key(KeyCode::Up));
    a.on_key(key(KeyCode::Up));
    assert_eq!(a.on_key(ch('R')), None);
    assert!(a.pending.is_some());
    assert_eq!(a.on_key(ctrl_c), None, "no rollback starts");
    assert!(a.pending.is_none() && a.quit, "the confirmation is answered no, and the console ends");
    assert!(a.interrupted.is_some(), "non-zero: something was pending");
    // Nothing pending, nothing running: Ctrl-C quits, exit 0.
    let mut a = app();
    assert_eq!(a.on_key(ctrl_c), None);
    assert!(a.quit && a.interrupted.is_none());
}

#[test]
fn c_on_a_patch_whose_requirement_is_on_trial_asks_first_naming_it() {
    let mut a = app();
    let mut rows = a.snapshot.rows.clone();
    let sipd = rows.iter_mut().find(|r| r.pid.get() == 812).unwrap();
    sipd.patches[0].state = State::Trial;
    sipd.patches[0].trial_deadline = Some(NOW + 600);
    a.set_snapshot(Snapshot { rows });
    assert_eq!(a.on_key(ch('C')), None, "nothing before the confirmation");
    let s = screen(&a, 80, 24);
    assert!(s.contains("`cdr-fix` requires `base-fix`, still on trial") && s.contains("Enter proceed"), "{s}");
    assert_eq!(
        a.on_key(key(KeyCode::Enter)),
        Some(Job::Commit {
            pid: 812,
            patch: "cdr-fix".into(),
            with: vec!["base-fix".into()],
            note: "committed from the console".into()
        })
    );
}

#[test]
fn r_and_c_act_on_the_same_named_patch() {
    let mut a = app();
    // The list: the newest patch of the selected row, for both keys, named in the footer.
    let s = screen(&a, 120, 40);
    assert!(s.contains("C commit cdr-fix") && s.contains("R roll back cdr-fix"), "{s}");
    assert_eq!(
        a.on_key(ch('C')),
        Some(Job::Commit {
            pid: 812,
            patch: "cdr-fix".into(),
            with: vec![],
            note: "committed from the console".into()
        })
    );
    a.busy = None;
    // The process view: the highlighted one.
    a.on_key(key(KeyCode::Enter));
    a.on_key(key(KeyCode::Up));
    let s = screen(&a, 120, 40);
    assert!(s.contains("C commit invite-fix") && s.contains("R roll back invite-fix"), "{s}");
    assert_eq!(a.on_key(ch('R')), Some(Job::Rollback { pid: 812, patch: "invite-fix".into(), cascade: vec![] }));
    a.busy = None;
    // A patch others require: one confirmation naming them, nothing before Enter.
    a.on_key(key(KeyCode::Up));
    let s = screen(&a, 120, 40);
    assert!(!s.contains("C commit"), "base-fix is committed: no C offered:\n{s}");
    assert_eq!(a.on_key(ch('R')), None);
    let s = screen(&a, 80, 24);
    assert!(s.contains("`cdr-fix`, `invite-fix` requires it"), "{s}");
    assert_eq!(a.on_key(ch('x')), None, "other keys wait");
    assert_eq!(
        a.on_key(key(KeyCode::Enter)),
        Some(Job::Rollback {
            pid: 812,
            patch: "base-fix".into(),
            cascade: vec!["cdr-fix".into(), "invite-fix".into()]
        })
    );
    assert!(a.pending.is_none());
    a.busy = None;
    a.on_key(ch('R'));
    assert_eq!(a.on_key(key(KeyCode::Esc)), None);
    assert!(a.pending.is_none() && a.busy.is_none());
}

fn at(mut a: App, w: u16, h: u16) -> App {
    a.size = (w, h);
    a
}

#[test]
fn below_the_minimum_size_only_q_and_esc_act() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut a = at(wizard_app(Phase::Running { confirm: None }), 40, 10);
    a.on_event(Event::Confirm { stage: Stage::Load, plan: "map it".into(), reply: tx });
    let s = screen(&a, 40, 10);
    assert!(s.contains("larger") && s.contains("Esc"), "{s}");
    a.on_key(key(KeyCode::Enter));
    a.on_key(ch('y'));
    assert!(rx.try_recv().is_err(), "not confirmed");
    a.on_key(key(KeyCode::Esc));
    assert_eq!(rx.try_recv(), Ok(false), "Esc cancels");
    let mut list = at(app(), 59, 24);
    assert_eq!(list.on_key(ch('R')), None, "no rollback below the minimum");
    assert_eq!(list.on_key(key(KeyCode::Enter)), None);
    assert_eq!(list.screen, Screen::Processes);
    list.on_key(ch('q'));
    assert!(list.quit);
}

#[test]
fn a_confirmation_that_does_not_fit_is_not_confirmable() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut a = at(wizard_app(Phase::Running { confirm: None }), 60, 16);
    let plan = (0..40).map(|i| format!("handle_{i} at 0x5555555551c0: jmp rel32")).collect::<Vec<_>>().join("; ");
    a.on_event(Event::Confirm { stage: Stage::Activate, plan, reply: tx });
    let s = screen(&a, 60, 16);
    assert!(s.contains("does not fit"), "{s}");
    assert!(!s.contains("Enter proceed"), "{s}");
    a.on_key(key(KeyCode::Enter));
    assert!(rx.try_recv().is_err(), "not confirmed");
    assert!(a.message.as_ref().is_some_and(|m| m.1.contains("does not fit")));
    a.size = (200, 60);
    assert!(screen(&a, 200, 60).contains("Enter proceed"));
    a.on_key(key(KeyCode::Enter));
    assert_eq!(rx.try_recv(), Ok(true));
}

fn long_report(error: Option<String>) -> App {
    let lines = (0..30)
        .map(|i| CheckLine {
            check: format!("entry handle_{i}"),
            ok: true,
            detail: "jmp rel32 at 0x5555555551c0, 8 bytes overwritten (5 written)".into(),
        })
        .collect();
    at(wizard_app(Phase::Report { lines, error }), 80, 24)
}

#[test]
fn the_pre_flight_verdict_and_hints_show_at_80x24_and_the_checks_scroll() {
    let mut a = long_report(None);
    let s = screen(&a, 80, 24);
    assert!(s.contains("Pre-flight passed") && s.contains("Enter starts stage 1"), "{s}");
    assert!(s.contains("lines 1-"), "{s}");
    assert!(!s.contains("handle_29"), "{s}");
    a.on_key(key(KeyCode::PageDown));
    assert!(screen(&a, 80, 24).contains("lines 11-"));
    a.on_key(key(KeyCode::End));
    let s = screen(&a, 80, 24);
    assert!(s.contains("handle_29"), "scrolled to the end:\n{s}");
    assert_eq!(
        a.on_key(key(KeyCode::Enter)),
        Some(Job::Apply { pid: 812, manifest: "/srv/manifests/invite-fix.yaml".into() })
    );

    let refused = long_report(Some(
        "symbol `handle_7` not found in /usr/sbin/sipd\nhint: check the manifest's target.build_id".into(),
    ));
    let s = screen(&refused, 80, 24);
    assert!(s.contains("Refused: nothing was done"), "{s}");
    assert!(s.contains("hint: check the manifest's target.build_id"), "{s}");

    // A verdict too long for the terminal says so rather than show part of it.
    let many = (0..12).map(|i| format!("hint {i}")).collect::<Vec<_>>().join("\n");
    let low = at(long_report(Some(many)), 60, 16);
    assert!(screen(&low, 60, 16).contains("verdict does not fit"), "{}", screen(&low, 60, 16));
}

#[test]
fn ctrl_c_during_an_apply_says_no_and_waits_for_the_undo() {
    let mut a = wizard_app(Phase::Running { confirm: None });
    a.busy = Some("applying `invite-fix`".into());
    assert_eq!(a.on_key(ch('q')), None);
    assert!(!a.quit, "q does not walk away from a running apply");
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_event(Event::Confirm { stage: Stage::Init, plan: "run init".into(), reply: tx });
    a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(rx.try_recv(), Ok(false), "no to the confirmation waiting");
    assert!(a.quit && a.interrupted.as_deref() == Some("Ctrl-C"));
    assert!(screen(&a, 80, 24).contains("interrupted (Ctrl-C)"));
    // A confirmation that crossed the interruption is answered no too.
    let (tx, rx) = std::sync::mpsc::channel();
    a.on_event(Event::Confirm { stage: Stage::Activate, plan: "write".into(), reply: tx });
    assert_eq!(rx.try_recv(), Ok(false));
    // Idle, Ctrl-C just quits.
    let mut idle = app();
    idle.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(idle.quit && idle.interrupted.is_none());
}

#[test]
fn trials_show_their_deadline_in_clock_time_overdue_and_never_00_00_once_over() {
    let mut a = app();
    a.trial = Some((812, "invite-fix".into()));
    a.screen = Screen::Trial;
    // NOW is 08:00:00 UTC; invite-fix ends 252 s later.
    let s = screen(&a, 80, 24);
    assert!(s.contains("04:12 of 05:00 left: commits at 08:04:12 UTC"), "{s}");
    a.now = NOW + 240;
    assert!(screen(&a, 80, 24).contains("in under 30 s"), "near the deadline, in words");
    a.now = NOW + 300;
    let s = screen(&a, 80, 24);
    assert!(s.contains("OVERDUE") && s.contains("deadline 08:04:12 UTC passed 00:48 ago"), "{s}");
    assert!(!s.contains("00:00"), "{s}");
    a.screen = Screen::Processes;
    let s = screen(&a, 80, 24);
    assert!(s.contains("OVERDUE") && !s.contains("TRIAL 00:00"), "{s}");
    a.on_key(key(KeyCode::Enter));
    a.on_key(key(KeyCode::Up));
    assert!(screen(&a, 120, 40).contains("OVERDUE"));
    // Committed: the trial is over, no countdown.
    let mut rows = a.snapshot.rows.clone();
    if let Some(p) = rows.iter_mut().find(|r| r.pid.get() == 812).and_then(|r| r.patches.get_mut(1)) {
        p.state = State::Committed;
        p.ended_at = Some(NOW + 10);
    }
    a.set_snapshot(Snapshot { rows });
    a.screen = Screen::Trial;
    let s = screen(&a, 80, 24);
    assert!(s.contains("COMMITTED") && s.contains("trial over: committed at 08:00:10 UTC"), "{s}");
    assert!(!s.contains("00:00 of") && !s.contains("OVERDUE"), "{s}");
}

#[test]
fn s_cycles_the_sort_column_and_i_reverses_it_shown_in_the_header() {
    let mut a = app();
    let pids = |a: &App| a.visible().iter().map(|r| r.pid.get()).take(4).collect::<Vec<_>>();
    // The default: patches on trial or stopped between stages first.
    assert_eq!(pids(&a), vec![812, 901, 1, 1200]);
    assert!(screen(&a, 120, 40).contains("STATE▲"));
    a.on_key(ch('s'));
    assert_eq!(pids(&a), vec![1, 812, 901, 1200]);
    assert!(screen(&a, 120, 40).contains("PID▲"));
    a.on_key(ch('I'));
    assert_eq!(pids(&a), vec![2029, 2028, 2027, 2026]);
    let s = screen(&a, 120, 40);
    assert!(s.contains("PID▼") && !s.contains("STATE▲"), "{s}");
    a.on_key(ch('I'));
    a.on_key(ch('s'));
    assert_eq!(pids(&a), vec![1200, 1500, 901, 812], "by name: billingd, legacyd, mediad, sipd");
    a.on_key(ch('s'));
    assert!(screen(&a, 120, 40).contains("THR▲"));
    a.on_key(ch('s'));
    assert!(screen(&a, 120, 40).contains("USER▲"));
    a.on_key(ch('s'));
    assert_eq!(a.sort, super::app::SortBy::State);
    // The selection stays on its process through every order.
    assert_eq!(a.selected, Some(812));
}

#[test]
fn the_list_shows_each_executable_s_build_id_abbreviated() {
    let a = app();
    let s = screen(&a, 120, 40);
    let id = "3f2a032c9c1b"; // process 812's, abbreviated
    assert!(s.contains("BUILD-ID") && s.contains(id), "{s}");
    // At 80 columns it stays, and the executable's path is what goes.
    let s = screen(&a, 80, 24);
    assert!(s.contains("BUILD-ID") && s.contains(id), "{s}");
}

#[test]
fn patched_processes_first_kernel_threads_hidden_replaced_binaries_marked() {
    let mut a = app();
    let order: Vec<i32> = a.visible().iter().map(|r| r.pid.get()).take(5).collect();
    assert_eq!(order, vec![812, 901, 1, 1200, 1500], "trial and partial first, then the others by pid");
    assert!(a.visible().iter().all(|r| r.pid.get() != 2), "kernel threads hidden");
    let s = screen(&a, 120, 40);
    assert!(s.contains("REPLACED ON DISK /usr/sbin/legacyd"), "{s}");
    a.on_key(ch('K'));
    assert!(a.visible().iter().any(|r| r.pid.get() == 2), "K shows them");
    a.selected = Some(2);
    let s = screen(&a, 120, 40);
    assert!(!s.contains("a apply"), "no apply offered on a kernel thread:\n{s}");
    assert_eq!(a.on_key(ch('a')), None);
    assert_eq!(a.screen, Screen::Processes);
    assert!(a.wizard.is_none());
}

#[test]
fn changes_made_elsewhere_raise_a_notice_and_old_successes_leave_the_footer() {
    let mut a = app();
    let changed = |a: &App, f: &dyn Fn(&mut PatchRecord)| {
        let mut rows = a.snapshot.rows.clone();
        if let Some(p) = rows.iter_mut().find(|r| r.pid.get() == 812).and_then(|r| r.patches.get_mut(1)) {
            f(p);
        }
        Snapshot { rows }
    };
    // The trial watcher rolled invite-fix back.
    let s = changed(&a, &|p| {
        p.state = State::RolledBack;
        p.note = Some("trial expired: rolled back by policy".into());
    });
    a.set_snapshot(s);
    let text = screen(&a, 120, 40);
    assert!(
        text.contains("NOTICE: `invite-fix` was rolled back in process 812 (trial expired: rolled back by policy)"),
        "{text}"
    );
    a.now += NOTICE_SECS;
    assert!(!screen(&a, 120, 40).contains("NOTICE"), "a notice goes after a while");

    // This console's own commit is no notice; its success message goes after 10 s.
    let mut b = app();
    b.on_key(ch('C'));
    b.on_event(Event::Committed { pid: 812, patch: "cdr-fix".into(), result: Ok(()) });
    let s = {
        let mut rows = b.snapshot.rows.clone();
        rows.iter_mut().find(|r| r.pid.get() == 812).unwrap().patches[2].state = State::Committed;
        Snapshot { rows }
    };
    b.set_snapshot(s);
    let text = screen(&b, 120, 40);
    assert!(text.contains("`cdr-fix` committed in process 812") && !text.contains("NOTICE"), "{text}");
    b.now += MESSAGE_OK_SECS;
    assert!(screen(&b, 120, 40).contains("\nready\n"), "no stale success");
}

#[test]
fn the_wizard_names_the_trial_at_stage_4_says_what_was_undone_and_its_footer_matches_its_box() {
    let (tx, _rx) = std::sync::mpsc::channel();
    let mut a = wizard_app(Phase::Running { confirm: None });
    a.on_event(Event::Confirm { stage: Stage::Activate, plan: "write the jumps".into(), reply: tx });
    let s = screen(&a, 120, 40);
    assert!(s.contains("then a trial of 5m: at its end the patch is committed (on_expiry: commit)"), "{s}");
    let footer = s.lines().last().unwrap_or("");
    assert!(footer.starts_with("Enter proceed  Esc cancel and undo the stages done"), "{footer}");
    assert!(s.contains("Enter proceed    Esc cancel and undo the stages done"), "the box says the same:\n{s}");
    a.on_key(key(KeyCode::Esc));
    a.on_event(Event::Applied {
        pid: 812,
        result: Err(crate::error::Error::other(
            "cancelled before stage 4 (activate)\n  undone: init, link, load (the process is as it was)",
        )),
    });
    let s = screen(&a, 120, 40);
    assert!(s.contains("↺ 1 load") && s.contains("↺ 2 link") && !s.contains("✓ 1 load"), "{s}");
    assert!(s.lines().last().unwrap_or("").starts_with("Enter Esc back"), "{s}");
}

#[test]
fn help_has_a_legend_says_which_patch_keys_act_on_and_scrolls_at_80x24() {
    let mut a = app();
    a.help = true;
    let s = screen(&a, 80, 24);
    assert!(s.contains("the patch named in the footer"), "{s}");
    assert!(s.contains("lines 1-"), "it says there is more:\n{s}");
    a.on_key(key(KeyCode::End));
    let s = screen(&a, 80, 24);
    for word in ["OVERDUE", "PARTIAL!", "REPLACED ON DISK", "NOTICE"] {
        assert!(s.contains(word), "{word}:\n{s}");
    }
    a.on_key(key(KeyCode::Up));
    assert!(a.help);
    a.on_key(key(KeyCode::Esc));
    assert!(!a.help && a.help_scroll == 0);
    let big = {
        let mut b = app();
        b.help = true;
        screen(&b, 120, 60)
    };
    assert!(big.contains("TRIAL 04:12") && big.contains("ACTIVE"), "{big}");
}

#[test]
fn the_journal_searches_as_you_type_and_shows_an_entry_whole() {
    let mut a = app();
    a.on_key(ch('J'));
    assert_eq!(a.screen, Screen::Journal);
    a.on_key(ch('/'));
    for c in "busy".chars() {
        a.on_key(ch(c));
    }
    assert!(!a.quit, "typing is not a command");
    let s = screen(&a, 80, 24);
    assert!(s.contains("1 of 2 entries match") && s.contains("rtp-fix") && !s.contains("invite-fix"), "{s}");
    a.on_key(key(KeyCode::Enter)); // keeps the search
    a.on_key(key(KeyCode::Enter)); // opens the entry
    let s = screen(&a, 80, 24);
    assert!(
        s.contains("Journal entry") && s.contains("busy: after 101 attempts, thread(s) 905 still in the way"),
        "{s}"
    );
    assert!(s.contains("bob (uid 1001)"), "{s}");
    a.on_key(key(KeyCode::Esc));
    assert!(!a.journal_open);
    a.on_key(key(KeyCode::Esc));
    assert!(a.journal_search.is_empty() && a.screen == Screen::Journal, "Esc clears the search first");
    a.on_key(key(KeyCode::Esc));
    assert_eq!(a.screen, Screen::Processes);
}

#[test]
fn the_journal_filters_by_pid_patch_and_outcome_and_shows_the_source() {
    let mut a = app();
    let mut watcher = a.journal[0].clone();
    watcher.entry.action = "rollback".into();
    watcher.entry.outcome = "ok".into();
    watcher.entry.detail = "trial expired".into();
    watcher.source = "watcher".into();
    let mut other = a.journal[0].clone();
    other.entry.patch = Some("cdr-fix".into());
    other.entry.outcome = "failed".into();
    a.journal.push(watcher);
    a.journal.push(other);
    a.on_key(ch('J'));
    let s = screen(&a, 120, 40);
    assert!(s.contains("SOURCE") && s.contains("console") && s.contains("cli") && s.contains("watcher"), "{s}");
    let s = screen(&a, 80, 24);
    assert!(s.contains("SOURCE") && s.contains("watcher"), "the source shows at 80x24 too:\n{s}");
    // The newest entry is selected: process 812, cdr-fix, failed.
    a.on_key(ch('i'));
    assert_eq!(a.journal_search, "pid:812");
    assert_eq!(a.journal_visible().len(), 3);
    a.on_key(ch('o'));
    assert_eq!(a.journal_search, "pid:812 outcome:failed");
    assert_eq!(a.journal_visible().len(), 1);
    a.on_key(ch('o'));
    a.on_key(key(KeyCode::Up));
    a.on_key(ch('p'));
    assert_eq!(a.journal_search, "pid:812 patch:invite-fix");
    assert!(a.journal_visible().iter().all(|r| r.entry.patch.as_deref() == Some("invite-fix")));
    assert_eq!(a.journal_visible().len(), 2);
    let s = screen(&a, 120, 40);
    assert!(s.contains("2 of 4 entries match"), "{s}");
    // Typed, the same words; a source too.
    a.journal_search = "source:watcher".into();
    assert_eq!(a.journal_visible().len(), 1);
    a.journal_search = "pid:81".into();
    assert!(a.journal_visible().is_empty(), "a field word matches the field exactly");
    a.on_key(key(KeyCode::Enter));
    a.journal_search = "source:watcher".into();
    a.on_key(key(KeyCode::Enter));
    assert!(screen(&a, 100, 30).contains("watcher"));
    // Again: all entries.
    a.on_key(key(KeyCode::Esc));
    a.on_key(ch('i'));
    a.on_key(ch('i'));
    assert_eq!(a.journal_search, "source:watcher");
}

#[test]
fn a_failed_apply_shows_its_whole_message_and_hint_at_80x24() {
    let mut a = wizard_app(Phase::Running { confirm: None });
    a.on_event(Event::Applied {
        pid: 812,
        result: Err(crate::error::Error::precondition(
            "stage 4 (activate): function `handle_invite` cannot be patched safely: a branch at 0x5555555551c3 lands inside the bytes to overwrite\n  undone: init, link, load (the process is as it was)",
        )
        .hint("rebuild the target with -fpatchable-function-entry=7,5, or patch its caller instead")),
    });
    let s = screen(&a, 80, 24);
    assert!(s.contains("lands inside the bytes") && s.contains("undone: init, link, load"), "{s}");
    assert!(s.contains("hint: rebuild the target with") && s.contains("its caller instead"), "{s}");
}

#[test]
fn the_installed_view_groups_patches_by_binary_with_countdowns_and_n_of_m() {
    let a = installed_app();
    assert_eq!(a.screen, Screen::Installed);
    let s = screen(&a, 100, 30);
    // Group headers: the object and its build-id, abbreviated; sorted by object.
    let lib = s.find("/usr/lib/libsip.so.2  build-id ab12cd34ef56").expect(&s);
    let sipd = s.find("/usr/sbin/sipd  build-id 3f2a00009c1b").expect(&s);
    assert!(lib < sipd, "{s}");
    assert!(!s.contains("3f2a00009c1b0"), "12 digits of the build-id:\n{s}");
    // Under each, its patches: id, version, N/M, state; in the order installed (requires first).
    let line = |id: &str| s.lines().find(|l| l.contains(&format!(" {id} "))).unwrap_or_else(|| panic!("{id}:\n{s}"));
    assert!(line("base-fix").contains("3/3") && line("base-fix").contains("COMMITTED"), "{s}");
    let invite = line("invite-fix");
    assert!(invite.contains("1.0.2") && invite.contains("2/3"), "{s}");
    assert!(invite.contains("TRIAL 04:12, commits at 08:04:12 UTC"), "countdown and deadline in clock time:\n{s}");
    assert!(s.find(" base-fix ").unwrap() < s.find(" invite-fix ").unwrap(), "{s}");
    assert!(line("old-fix").contains("0/3 ") && line("old-fix").contains("ROLLED BACK: canary failed"), "{s}");
    assert!(
        line("lib-fix").contains("1/1")
            && line("lib-fix").contains("TRIAL 00:20, rolls back at 08:00:20 UTC, in under 30 s"),
        "{s}"
    );
    // The first patch listed is selected, its details below; the footer names it.
    assert_eq!(a.installed_selected.as_deref(), Some("lib-fix"));
    assert!(s.contains("R roll back everywhere and uninstall lib-fix") && s.contains("Esc back"), "{s}");
    // The countdown runs with the clock; past the deadline, the policy's outcome, no 00:00.
    let mut later = installed_app();
    later.now = NOW + 10;
    assert!(screen(&later, 100, 30).contains("TRIAL 04:02, commits at 08:04:12 UTC"));
    later.now = NOW + 300;
    let s = screen(&later, 100, 30);
    assert!(!s.contains("TRIAL") && !s.contains("00:00,"), "{s}");
    assert!(s.contains("ROLLED BACK: its trial ended (on_expiry: rollback)"), "{s}");
    assert!(s.lines().any(|l| l.contains(" invite-fix ") && l.contains("COMMITTED")), "{s}");
    // At 80x24 and the minimum size, nothing panics and the rows still show.
    let s = screen(&a, 80, 24);
    assert!(s.contains("invite-fix") && s.contains("2/3"), "{s}");
    screen(&a, 60, 16);
}

#[test]
fn the_installed_view_says_when_there_is_nothing_or_it_cannot_be_read() {
    let mut a = app();
    a.on_key(ch('i'));
    assert!(screen(&a, 80, 24).contains("reading the installed patches"));
    a.set_installed(InstalledList::default());
    assert!(screen(&a, 80, 24).contains("No patch is installed."));
    assert_eq!(a.on_key(ch('R')), None);
    a.set_installed(InstalledList { rows: vec![], error: Some("/var/lib/pannus: mode 0777".into()) });
    let s = screen(&a, 80, 24);
    assert!(s.contains("cannot be read") && s.contains("mode 0777"), "{s}");
    a.on_key(key(KeyCode::Esc));
    assert_eq!(a.screen, Screen::Processes);
}

#[test]
fn r_in_the_installed_view_asks_once_naming_what_goes_with_it_then_uninstalls() {
    let mut a = installed_app();
    a.on_key(key(KeyCode::Down));
    assert_eq!(a.installed_selected.as_deref(), Some("base-fix"));
    assert_eq!(a.on_key(ch('R')), None, "nothing before the confirmation");
    let s = screen(&a, 100, 30);
    assert!(s.contains("Uninstall base-fix 1.0 everywhere"), "{s}");
    assert!(s.contains("Installed `invite-fix` requires it"), "the installed patches that require it:\n{s}");
    assert!(s.contains("1 process (812)"), "how many processes it touches:\n{s}");
    assert!(s.contains("`cdr-fix` in process 812"), "what the cascade takes along that is not installed:\n{s}");
    assert!(screen(&a, 80, 24).contains("Enter proceed"), "it fits at 80x24");
    // Esc, n and Ctrl-C mean no.
    assert_eq!(a.on_key(key(KeyCode::Esc)), None);
    assert!(a.pending.is_none() && a.busy.is_none());
    a.on_key(ch('R'));
    assert_eq!(a.on_key(ch('n')), None);
    assert!(a.pending.is_none() && a.busy.is_none());
    let mut c = installed_app();
    c.on_key(ch('R'));
    assert_eq!(c.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), None);
    assert!(c.pending.is_none() && c.quit);
    // Enter: the job, with what was named.
    a.on_key(ch('R'));
    assert_eq!(
        a.on_key(key(KeyCode::Enter)),
        Some(Job::Uninstall { patch: "base-fix".into(), with: vec!["invite-fix".into()] })
    );
    assert!(a.busy.as_deref().is_some_and(|b| b.contains("uninstalling `base-fix` with invite-fix")), "{:?}", a.busy);
    assert_eq!(a.on_key(ch('R')), None, "one action at a time");
    // Its own rollbacks, seen by the next snapshot, raise no notice; the outcome shows.
    let mut rows = a.snapshot.rows.clone();
    for p in &mut rows.iter_mut().find(|r| r.pid.get() == 812).unwrap().patches {
        p.state = State::RolledBack;
    }
    a.on_event(Event::Uninstalled {
        patch: "base-fix".into(),
        result: Ok(crate::install::Uninstalled {
            uninstalled: vec!["invite-fix".into(), "base-fix".into()],
            kept: vec![],
            rollbacks: vec![crate::fleet::Summary {
                operation: crate::fleet::Operation::Rollback,
                patch: "base-fix".into(),
                patched: vec![],
                skipped: vec![],
                failed: vec![],
                rolled_back: vec![812],
                rollback_failed: vec![],
                warnings: vec![],
                cancelled: None,
                archs: Default::default(),
            }],
            code: 0,
        }),
    });
    a.set_snapshot(Snapshot { rows });
    assert!(a.busy.is_none());
    assert_eq!(a.message, Some((true, "uninstalled `invite-fix`, `base-fix`: rolled back from process 812".into())));
    assert_eq!(a.fresh_notice(), None);
    // A failure says so.
    a.on_key(ch('R'));
    a.on_key(key(KeyCode::Enter));
    a.on_event(Event::Uninstalled {
        patch: "base-fix".into(),
        result: Err(crate::error::Error::precondition("the installed patches that require `base-fix` changed")),
    });
    assert!(a.message.as_ref().is_some_and(|(ok, m)| !ok && m.contains("uninstall of `base-fix` failed")));
}

#[test]
fn the_installed_view_is_in_the_footer_and_the_help() {
    let mut a = app();
    a.selected = Some(1);
    assert!(screen(&a, 120, 40).contains("i installed patches"), "{}", screen(&a, 120, 40));
    a.help = true;
    let mut h = String::new();
    for _ in 0..6 {
        h.push_str(&screen(&a, 80, 24));
        a.on_key(key(KeyCode::PageDown));
    }
    assert!(h.contains("installed patches") && h.contains("COMMITTED") && h.contains("ROLLED BACK"), "{h}");
    let mut i = installed_app();
    i.help = true;
    let s = screen(&i, 100, 40);
    assert!(s.contains("roll back everywhere and uninstall"), "{s}");
}

#[test]
fn what_goes_with_an_installed_patch_is_everything_that_requires_it_theirs_first() {
    let row =
        |id: &str, requires: &[&str]| installed_row(id, "/usr/sbin/sipd", "3f2a", InstalledState::Committed, requires);
    // In installed order: what a patch requires first.
    let list = InstalledList {
        rows: vec![row("a", &[]), row("b", &["a"]), row("c", &["b"]), row("d", &["a"]), row("e", &[])],
        error: None,
    };
    assert_eq!(list.dependents("a"), ["c", "b", "d"], "the order uninstall --cascade takes them in");
    assert_eq!(list.dependents("b"), ["c"]);
    assert!(list.dependents("e").is_empty());
}

#[test]
fn a_forked_child_is_listed_under_its_parent_and_says_so() {
    let mut a = app();
    let copies = |pid| {
        let mut p = patch("invite-fix", 2, State::Trial, &["base-fix"], 252);
        p.applied_in = Some(pid);
        p
    };
    let mut rows = a.snapshot.rows.clone();
    for r in rows.iter_mut().filter(|r| r.pid.get() == 812) {
        r.patches.iter_mut().for_each(|p| p.applied_in = Some(812));
    }
    rows.push(row(3001, "sipd", vec![copies(812)]));
    a.set_snapshot(Snapshot { rows });
    let order: Vec<i32> = a.visible().iter().map(|r| r.pid.get()).collect();
    let at = order.iter().position(|&p| p == 812).unwrap();
    assert_eq!(order[at + 1], 3001, "{order:?}");
    let list = screen(&a, 120, 40);
    let line = list.lines().find(|l| l.contains("3001")).unwrap();
    assert!(line.contains("└ sipd"), "{list}");

    a.selected = Some(3001);
    a.on_key(key(KeyCode::Enter));
    let detail = screen(&a, 120, 40);
    assert!(detail.contains("FORKED FROM 812"), "{detail}");
    assert!(detail.contains("a copy forked from process 812"), "{detail}");
}

#[test]
fn the_installed_view_shows_a_canary_rollout_and_an_interrupted_one() {
    let mut a = installed_app();
    let mut list = a.installed.clone().unwrap();
    for r in list.rows.iter_mut() {
        let canary =
            |running| crate::tui::installed::Canary { canaries: vec![2001, 2002], until: NOW + 180, running, by: 4242 };
        match r.patch.as_str() {
            "invite-fix" => r.canary = Some(canary(true)),
            "lib-fix" => r.canary = Some(canary(false)),
            _ => {}
        }
    }
    a.set_installed(list);
    let text = screen(&a, 120, 40);
    assert!(text.contains("CANARY 2 processes, 03:00 left"), "{text}");
    assert!(text.contains("CANARY INTERRUPTED (pannus 4242 gone)"), "{text}");
}

#[test]
fn forks_after_parents_keeps_every_process_chains_and_loops_included() {
    let copy = |from: i32| {
        let mut p = patch("fix", 1, State::Trial, &[], 100);
        p.applied_in = Some(from);
        p
    };
    // 30 forked from 10 (whose own copy names 20), a pair naming each other, and strangers.
    let rows = vec![
        row(30, "c", vec![copy(10)]),
        row(5, "a", vec![]),
        row(10, "b", vec![copy(20)]),
        row(20, "root", vec![copy(20)]),
        row(41, "x", vec![copy(42)]),
        row(42, "y", vec![copy(41)]),
    ];
    let order: Vec<i32> = crate::processes::forks_after_parents(rows, |r| r).iter().map(|r| r.pid.get()).collect();
    assert_eq!(order, [5, 20, 10, 30, 41, 42]);
}

#[test]
fn a_notice_about_the_selected_process_is_not_pushed_out_by_other_processes() {
    let mut a = app();
    a.selected = Some(812);
    let mut rows = a.snapshot.rows.clone();
    rows.iter_mut().find(|r| r.pid.get() == 812).unwrap().patches[1].state = State::Committed;
    a.set_snapshot(Snapshot { rows: rows.clone() });
    assert!(a.fresh_notice().unwrap().contains("`invite-fix` was committed in process 812"));
    // Then another process changes: the notice about 812 stays while fresh.
    rows.iter_mut().find(|r| r.pid.get() == 901).unwrap().patches[0].state = State::RolledBack;
    a.set_snapshot(Snapshot { rows: rows.clone() });
    assert!(a.fresh_notice().unwrap().contains("process 812"), "{:?}", a.fresh_notice());
    // Once it is old, other processes' notices show again.
    a.now += NOTICE_SECS;
    rows.iter_mut().find(|r| r.pid.get() == 1200).unwrap().patches[0].state = State::Trial;
    rows.iter_mut().find(|r| r.pid.get() == 1200).unwrap().patches[0].seq = 9;
    a.set_snapshot(Snapshot { rows });
    assert!(a.fresh_notice().unwrap().contains("process 1200"), "{:?}", a.fresh_notice());
}

#[test]
fn an_indirect_function_shows_the_implementation_its_entry_is() {
    let mut a = app();
    let mut p = patch("strlen-fix", 4, State::Trial, &[], 200);
    let f = p.functions[0].clone();
    p.functions = vec![
        FunctionRecord {
            target: "strlen".into(),
            replacement: "strlen_fixed".into(),
            implementation: Some("__strlen_evex".into()),
            in_use: Some(true),
            ..f.clone()
        },
        FunctionRecord {
            target: "strlen".into(),
            replacement: "strlen_fixed".into(),
            implementation: Some("__strlen_sse2".into()),
            in_use: Some(false),
            address: f.address + 0x100,
            ..f
        },
    ];
    let mut rows = a.snapshot.rows.clone();
    rows.push(row(3000, "resolverd", vec![p]));
    a.set_snapshot(Snapshot { rows });
    a.selected = Some(3000);
    a.on_key(key(KeyCode::Enter));
    let s = screen(&a, 120, 40);
    assert!(s.contains("strlen → __strlen_evex 0x") && s.contains("strlen → __strlen_sse2 (not in use) 0x"), "{s}");
    a.on_key(ch('t'));
    let s = screen(&a, 120, 40);
    assert!(s.contains("strlen → __strlen_evex → strlen_fixed") && !s.contains("__strlen_sse2"), "{s}");
}

#[test]
fn a_process_not_running_x86_64_code_is_marked_in_the_list_and_its_detail() {
    let mut a = app();
    let mut rows = a.snapshot.rows.clone();
    let mut legacy = row(1300, "sipd32", vec![]);
    legacy.arch = Some(pannus_kernel::Arch::I386);
    rows.push(legacy);
    a.set_snapshot(Snapshot { rows });
    let s = screen(&a, 120, 40);
    let line = s.lines().find(|l| l.contains(" 1300 ")).unwrap_or_else(|| panic!("listed:\n{s}"));
    assert!(line.contains("sipd32 [i386]"), "{s}");
    assert!(!s.contains("sipd [x86-64]"), "x86-64 processes carry no mark:\n{s}");
    a.selected = Some(1300);
    a.on_key(key(KeyCode::Enter));
    assert_eq!(a.screen, Screen::Detail);
    let d = screen(&a, 120, 40);
    assert!(d.contains("/usr/sbin/sipd32  ELF32 i386") && !d.contains("NOT PATCHABLE"), "{d}");
    // An x32 process is shown, and said not to be patchable.
    let mut rows = a.snapshot.rows.clone();
    let x32 =
        pannus_kernel::Arch::of_header(&[0x7f, b'E', b'L', b'F', 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 62, 0]);
    rows.iter_mut().find(|r| r.pid.get() == 1300).unwrap().arch = x32;
    a.set_snapshot(Snapshot { rows });
    let d = screen(&a, 120, 40);
    assert!(d.contains("ELF32 x32, NOT PATCHABLE"), "{d}");
}
