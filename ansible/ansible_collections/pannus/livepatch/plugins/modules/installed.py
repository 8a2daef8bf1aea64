#!/usr/bin/python
# -*- coding: utf-8 -*-
# MIT License (see the pannus repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: installed
short_description: An installed pannus patch, for its build of its binary
description:
  - Installs a pannus patch for the build of the binary its manifest names
    (C(pannus install)), which applies it to every process of that build and, with
    C(pannus daemon) running, to every new one; or uninstalls it (C(pannus uninstall)), which
    rolls it back from every process and forgets it.
  - With C(state=present), a patch already installed and in every process of its build is left
    as it is (no change); one installed but missing from some process of the build is applied
    to them. A patch installed and then rolled back (a failed canary, an uninstall that could
    not roll it back everywhere) is refused with pannus's reason, to be uninstalled first.
  - In check mode nothing is installed or uninstalled; C(pannus check --all) runs on the
    processes the install would patch.
  - Fails with pannus's message and exit code (C(rc)).
version_added: "0.1.0"
author:
  - pannus developers
requirements:
  - pannus on the managed host, run as root (ptrace)
options:
  manifest:
    description:
      - Path of the patch's manifest on the managed host. Required with C(state=present).
      - With C(state=absent), the patch id is read from it, unless I(patch) is given.
    type: path
  patch:
    description:
      - The patch id, for C(state=absent) without a manifest.
    type: str
  state:
    description:
      - C(present) - installed, and applied to every process of the build.
      - C(absent) - rolled back from every process and forgotten.
    type: str
    choices: [present, absent]
    default: present
  canary:
    description:
      - At install, apply to this many processes first and keep them through I(canary_trial)
        before the rest; when one fails, pannus records the patch rolled back, and new
        processes do not get it.
    type: int
  canary_trial:
    description:
      - How long the canaries are watched (C(30s), C(5m)).
    type: str
  cascade:
    description:
      - With C(state=absent), uninstall the installed patches that require this one too.
    type: bool
    default: false
  pannus:
    description:
      - The pannus binary, a path or a name looked up on C(PATH).
    type: str
    default: pannus
  state_dir:
    description:
      - pannus's state folder (C(--state-dir)), where installed patches are kept.
    type: path
notes:
  - Supports check mode and diff mode (the installed state and how many processes of the
    build have it, before and after).
seealso:
  - module: pannus.livepatch.patch
"""

EXAMPLES = r"""
- name: Install the fix for this build of kvd, applied to its processes, two canaries first
  pannus.livepatch.installed:
    manifest: /srv/patches/cdr-fix.yaml
    canary: 2
    canary_trial: 2m

- name: Uninstall it, and what requires it
  pannus.livepatch.installed:
    patch: cdr-fix
    state: absent
    cascade: true
"""

RETURN = r"""
patch:
  description: The patch id.
  returned: always
  type: str
  sample: cdr-fix
installed:
  description: The installed patch after the task, as C(pannus installed --json) lists it (null when not installed).
  returned: always
  type: dict
  sample: {"patch": "cdr-fix", "state": "trial", "processes": 3, "patched": 3}
patched:
  description: The processes the install applied the patch to (in check mode, would).
  returned: always
  type: list
  elements: int
uninstalled:
  description: The patches uninstalled (in check mode, would be).
  returned: always
  type: list
  elements: str
rc:
  description: The exit code of the last pannus command.
  returned: always
  type: int
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
    fleet_summaries,
)


def find(pannus, patch):
    _, docs = pannus.run(["installed"])
    for doc in docs or []:
        if doc.get("patch") == patch:
            return doc
    return None


def describe(doc):
    if not doc:
        return "not installed\n"
    return "%s, %s/%s processes\n" % (doc.get("state"), doc.get("patched"), doc.get("processes"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path"),
            patch=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            canary=dict(type="int"),
            canary_trial=dict(type="str"),
            cascade=dict(type="bool", default=False),
            pannus=dict(type="str", default="pannus"),
            state_dir=dict(type="path"),
        ),
        required_if=[("state", "present", ("manifest",))],
        required_one_of=[("manifest", "patch")],
        required_together=[("canary", "canary_trial")],
        supports_check_mode=True,
    )
    p = Pannus(module)
    result = dict(changed=False, patched=[], uninstalled=[], rc=0)
    state = module.params["state"]
    try:
        patch = module.params["patch"]
        if not patch:
            patch = p.patch_id(module.params["manifest"], need_valid=state == "present")
        result["patch"] = patch
        before = find(p, patch)
        if state == "present":
            if before and before.get("state") not in ACTIVE:
                raise PannusError(
                    "`%s` is installed but %s%s: uninstall it first (state: absent)"
                    % (patch, before.get("state"), " (%s)" % before["reason"] if before.get("reason") else ""),
                    4,
                )
            covered = before and before.get("patched", 0) >= before.get("processes", 0)
            if not covered:
                if module.check_mode:
                    # Which processes it would be applied to; none running the build is fine.
                    try:
                        _, doc = p.run(["check", module.params["manifest"], "--all"])
                        result["patched"] = [int(q) for q in doc.get("passed") or []]
                    except PannusError as e:
                        if not (e.rc == 4 and "no process maps" in e.msg):
                            raise
                    result["changed"] = not before or bool(result["patched"])
                else:
                    args = ["install", module.params["manifest"], "--yes"]
                    if module.params["canary"] is not None:
                        args += ["--canary", str(module.params["canary"]), "--canary-trial", module.params["canary_trial"]]
                    try:
                        result["rc"], doc = p.run(args)
                    finally:
                        last = p.commands[-1]["result"] if p.commands else None
                        for summary in fleet_summaries(last):
                            result["patched"].extend(int(q) for q in summary.get("patched") or [])
                    result["changed"] = not before or bool(result["patched"])
        elif before:
            result["changed"] = True
            if module.check_mode:
                result["uninstalled"] = [patch]
            else:
                args = ["uninstall", patch, "--yes"] + (["--cascade"] if module.params["cascade"] else [])
                result["rc"], doc = p.run(args)
                result["uninstalled"] = doc.get("uninstalled") or []
        after = before
        if result["changed"]:
            if module.check_mode:
                after = None
                if state == "present":
                    after = dict(before or {"patch": patch, "state": "trial", "processes": 0, "patched": 0})
                    after["patched"] = after.get("patched", 0) + len(result["patched"])
                    after["processes"] = max(after.get("processes", 0), after["patched"])
            else:
                after = find(p, patch)
    except PannusError as e:
        result.update(rc=e.rc, commands=p.commands)
        module.fail_json(msg=e.msg, stderr=e.stderr, pannus=e.doc, **result)
    result.update(installed=after, commands=p.commands)
    if module._diff:
        result["diff"] = dict(before=describe(before), after=describe(after),
                              before_header="%s before" % patch, after_header="%s after" % patch)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
