#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see the pannus repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: patch
short_description: A live patch in the running processes of a build, with pannus
description:
  - Applies, commits or rolls back a pannus live patch in every running process of the build
    its manifest names (or in one process), on the managed host, through the pannus command
    line with C(--json).
  - pannus decides which processes run the build, whether the patch can be applied, and in
    which order patches are committed or rolled back; the module reports what it did, process
    by process, and fails with pannus's message and exit code (C(rc)).
  - C(changed) is true only when a process changed. Running the task again with the same
    C(state) changes nothing and reports no change.
  - In check mode, C(pannus check) runs on every process the patch would be applied to, and
    the module reports what would change without changing any process.
  - Reading the patch's state (C(pannus status --all)) carries out the policy of a trial past
    its deadline, as every pannus command that reads a process does.
version_added: "0.1.0"
author:
  - pannus developers
requirements:
  - pannus on the managed host, run as root (ptrace)
options:
  manifest:
    description:
      - Path of the patch's manifest on the managed host. Its module (C(module.path)) is
        there too.
    type: path
    required: true
  state:
    description:
      - C(present) - the patch is applied, on trial or committed, in every process of the build
        (C(pannus apply --all)).
      - C(committed) - applied and committed everywhere (C(pannus apply --all), then
        C(pannus commit --all --yes), which commits first the patches it requires that are
        still on trial).
      - C(absent) - rolled back from every process that has it (C(pannus rollback --all)).
    type: str
    choices: [present, committed, absent]
    default: present
  pid:
    description:
      - One process instead of every process of the build (C(--pid)).
    type: int
  canary:
    description:
      - Apply to this many processes first, keep them through I(canary_trial) with the
        manifest's health check running, then to the rest; when one fails, the canaries are
        rolled back and no other process is touched (C(pannus apply --all --canary N)).
      - Only without I(pid), and only when the patch is applied.
    type: int
  canary_trial:
    description:
      - How long the canaries are watched, as pannus reads durations (C(30s), C(5m)).
    type: str
  cascade:
    description:
      - With C(state=absent), roll back first the patches that require this one
        (C(--cascade)); without it, a process where another patch requires it is refused.
    type: bool
    default: false
  rollback_on_failure:
    description:
      - When the patch fails in one process of the build, stop and roll it back from the
        processes this run patched (C(--rollback-on-failure)).
    type: bool
    default: false
  pannus:
    description:
      - The pannus binary, a path or a name looked up on C(PATH).
    type: str
    default: pannus
  state_dir:
    description:
      - pannus's state folder (C(--state-dir)); pannus's default (C(PANNUS_STATE_DIR), else
        C(/var/lib/pannus)) when not set.
    type: path
notes:
  - Supports check mode and diff mode (the patch's state in each process, before and after).
seealso:
  - module: pannus.livepatch.installed
"""

EXAMPLES = r"""
- name: Apply the fix to every process of the build, on trial
  pannus.livepatch.patch:
    manifest: /srv/patches/cdr-fix.yaml

- name: Two canaries first, watched for two minutes, then the rest
  pannus.livepatch.patch:
    manifest: /srv/patches/cdr-fix.yaml
    canary: 2
    canary_trial: 2m

- name: Commit it everywhere (applying it where it is missing)
  pannus.livepatch.patch:
    manifest: /srv/patches/cdr-fix.yaml
    state: committed

- name: Roll it back from every process, with the patches that require it
  pannus.livepatch.patch:
    manifest: /srv/patches/cdr-fix.yaml
    state: absent
    cascade: true

- name: One process only
  pannus.livepatch.patch:
    manifest: /srv/patches/cdr-fix.yaml
    pid: "{{ kvd_pid }}"
"""

RETURN = r"""
patch:
  description: The patch id, from the manifest.
  returned: always
  type: str
  sample: cdr-fix
patched:
  description: The processes the patch was applied to (in check mode, would be).
  returned: always
  type: list
  elements: int
  sample: [4211, 4212]
committed:
  description: The processes where the patch was committed (in check mode, would be).
  returned: always
  type: list
  elements: int
rolled_back:
  description: The processes the patch was rolled back from (in check mode, would be).
  returned: always
  type: list
  elements: int
skipped_processes:
  description: The processes pannus left alone, and why (C(already applied), C(build-id differs in memory), ...).
  returned: always
  type: list
  elements: dict
  sample: [{"pid": 4213, "reason": "already applied"}]
failed_processes:
  description:
    - The processes pannus failed in, with the error's kind, message and hint. (Ansible keeps
      C(failed) and C(skipped) for the task's own outcome, hence the names.)
  returned: always
  type: list
  elements: dict
  sample: [{"pid": 4214, "kind": "busy", "message": "stage 4 (activate): ...", "hint": "..."}]
states:
  description: The patch's state in each process that has it, after the task (in check mode, as it would be).
  returned: always
  type: dict
  sample: {"4211": "trial", "4212": "committed"}
rc:
  description: The exit code of the last pannus command (see pannus's exit codes).
  returned: always
  type: int
  sample: 0
commands:
  description: Each pannus command run, with its exit code and JSON document.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pannus.livepatch.plugins.module_utils.pannus import (
    ACTIVE,
    Pannus,
    PannusError,
    diff_text,
)


def pids_of(summary, key):
    return [int(p) for p in (summary or {}).get(key) or []]


class Run(object):
    """One task: what was (or would be) done, for the result."""

    def __init__(self, module, pannus):
        self.module = module
        self.pannus = pannus
        self.params = module.params
        self.check = module.check_mode
        self.patched, self.committed, self.rolled_back = [], [], []
        self.skipped, self.failed = [], []
        self.rc = 0

    def take(self, summary, done):
        """Takes a fleet summary's lists into the result; ``done`` names its list of the
        processes changed (``patched``, ``committed`` or ``rolled_back``)."""
        getattr(self, done).extend(pids_of(summary, done))
        self.skipped.extend(summary.get("skipped") or [])
        self.failed.extend(summary.get("failed") or [])

    def apply(self, before):
        """Applies the patch where it is missing (in check mode, checks it there)."""
        p, manifest, pid = self.pannus, self.params["manifest"], self.params["pid"]
        if pid is not None:
            if before.get(pid) in ACTIVE:
                return
            if self.check:
                self.rc, _ = p.run(["check", manifest, "--pid", str(pid)])
            else:
                self.rc, _ = p.run(["apply", manifest, "--pid", str(pid), "--yes"])
            self.patched.append(pid)
            return
        if self.check:
            try:
                self.rc, doc = p.run(["check", manifest, "--all"])
            except PannusError as e:
                if isinstance(e.doc, dict):
                    self.skipped.extend(e.doc.get("skipped") or [])
                    self.failed.extend(e.doc.get("failed") or [])
                raise
            self.patched.extend(pids_of(doc, "passed"))
            self.skipped.extend(doc.get("skipped") or [])
            return
        args = ["apply", manifest, "--all", "--yes"]
        if self.params["canary"] is not None:
            args += ["--canary", str(self.params["canary"]), "--canary-trial", self.params["canary_trial"]]
        if self.params["rollback_on_failure"]:
            args.append("--rollback-on-failure")
        try:
            self.rc, doc = p.run(args)
        except PannusError as e:
            # What the run did before it failed is in its document too.
            if isinstance(e.doc, dict):
                self.take_apply(e.doc)
            raise
        self.take_apply(doc)

    def take_apply(self, doc):
        """An ``apply --all`` document, or a canary rollout's."""
        if "canary" in doc:
            for part in ("canary_apply", "rest_apply"):
                if isinstance(doc.get(part), dict):
                    self.take(doc[part], "patched")
            if isinstance(doc.get("canary_rollback"), dict):
                self.take(doc["canary_rollback"], "rolled_back")
        elif "patched" in doc:
            self.take(doc, "patched")
            self.rolled_back.extend(pids_of(doc, "rolled_back"))

    def commit(self, states):
        p, patch, pid = self.pannus, self.patch, self.params["pid"]
        on_trial = sorted(q for q, s in states.items() if s == "trial" and (pid is None or q == pid))
        if not on_trial:
            return
        if self.check:
            self.committed.extend(on_trial)
        elif pid is not None:
            self.rc, _ = p.run(["commit", "--pid", str(pid), patch, "--yes"])
            self.committed.append(pid)
        else:
            self.rc, doc = p.run(["commit", "--all", patch, "--yes"])
            self.take(doc, "committed")

    def rollback(self, before):
        p, patch, pid = self.pannus, self.patch, self.params["pid"]
        having = sorted(q for q in before if pid is None or q == pid)
        if not having:
            return
        if self.check:
            self.rolled_back.extend(having)
            return
        cascade = ["--cascade"] if self.params["cascade"] else []
        if pid is not None:
            self.rc, _ = p.run(["rollback", "--pid", str(pid), patch, "--yes"] + cascade)
            self.rolled_back.append(pid)
        else:
            try:
                self.rc, doc = p.run(["rollback", "--all", patch, "--yes"] + cascade)
            except PannusError as e:
                if isinstance(e.doc, dict) and "rolled_back" in e.doc:
                    self.take(e.doc, "rolled_back")
                raise
            self.take(doc, "rolled_back")

    def main(self):
        p, state, pid = self.pannus, self.params["state"], self.params["pid"]
        self.patch = p.patch_id(self.params["manifest"], need_valid=state != "absent")
        before = p.states(self.patch)
        if state == "absent":
            self.rollback(before)
        else:
            self.apply(before)
            if state == "committed":
                predicted = dict(before)
                predicted.update((q, "trial") for q in self.patched)
                self.commit(predicted if self.check else p.states(self.patch))
        if self.check:
            after = dict(before)
            after.update((q, "trial") for q in self.patched)
            after.update((q, "committed") for q in self.committed)
            for q in self.rolled_back:
                after.pop(q, None)
        else:
            after = p.states(self.patch) if self.changed() else dict(before)
        if pid is not None:
            before = dict((q, s) for q, s in before.items() if q == pid)
            after = dict((q, s) for q, s in after.items() if q == pid)
        return before, after

    def changed(self):
        return bool(self.patched or self.committed or self.rolled_back)

    def result(self, **extra):
        out = dict(
            changed=self.changed(),
            patch=getattr(self, "patch", None),
            patched=self.patched,
            committed=self.committed,
            rolled_back=self.rolled_back,
            skipped_processes=self.skipped,
            failed_processes=self.failed,
            rc=self.rc,
            commands=self.pannus.commands,
        )
        out.update(extra)
        return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            state=dict(type="str", default="present", choices=["present", "committed", "absent"]),
            pid=dict(type="int"),
            canary=dict(type="int"),
            canary_trial=dict(type="str"),
            cascade=dict(type="bool", default=False),
            rollback_on_failure=dict(type="bool", default=False),
            pannus=dict(type="str", default="pannus"),
            state_dir=dict(type="path"),
        ),
        required_together=[("canary", "canary_trial")],
        mutually_exclusive=[("pid", "canary"), ("pid", "rollback_on_failure")],
        supports_check_mode=True,
    )
    if module.params["canary"] is not None and module.params["canary"] < 1:
        module.fail_json(msg="canary must be at least 1, got %d" % module.params["canary"])
    run = Run(module, Pannus(module))
    try:
        before, after = run.main()
    except PannusError as e:
        run.rc = e.rc
        module.fail_json(msg=e.msg, stderr=e.stderr, pannus=e.doc, **run.result())
    result = run.result(states=dict((str(q), s) for q, s in sorted(after.items())))
    if module._diff:
        pids = set(before) | set(after) | set(run.patched) | set(run.committed) | set(run.rolled_back)
        result["diff"] = dict(
            before=diff_text(before, pids),
            after=diff_text(after, pids),
            before_header="%s before" % run.patch,
            after_header="%s after" % run.patch,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
