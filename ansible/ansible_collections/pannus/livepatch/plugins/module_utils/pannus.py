# -*- coding: utf-8 -*-
# MIT License (see the pannus repository)
"""Runs the pannus command line with --json for the modules of pannus.livepatch.

The modules hold no policy of their own: every decision about a process (which processes run
the build, whether a patch can be applied, in which order patches are committed or rolled back)
is pannus's, read from its JSON documents. pannus prints exactly one document on standard
output, on success and on failure; its exit code is passed on as ``rc``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# The states in which a patch is in a process: everything but rolled back.
ACTIVE = ("trial", "committed")


class PannusError(Exception):
    """A pannus command that failed: its message, exit code and document."""

    def __init__(self, msg, rc, doc=None, stderr="", cmd=None):
        super(PannusError, self).__init__(msg)
        self.msg = msg
        self.rc = rc
        self.doc = doc
        self.stderr = stderr
        self.cmd = cmd


def failure_message(doc, stderr):
    """pannus's own words for a failure: the error of a refused command, or each process's
    failure in a fleet summary; else its last line on standard error."""
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and err.get("message"):
            msg = err["message"]
            if err.get("hint"):
                msg += " (hint: %s)" % err["hint"]
            return msg
        problems = doc.get("problems")
        if problems:
            return "; ".join(p.get("message", "") for p in problems)
        lines = []
        for summary in fleet_summaries(doc):
            for f in summary.get("failed") or []:
                lines.append("process %s: %s" % (f.get("pid"), f.get("message")))
            for f in summary.get("rollback_failed") or []:
                lines.append("process %s: rolling back again failed: %s" % (f.get("pid"), f.get("message")))
        if doc.get("canary") == "failed" and doc.get("reason"):
            lines.append("canary rollout failed: %s" % doc["reason"])
        if doc.get("cancelled"):
            lines.append("cancelled: %s" % doc["cancelled"])
        if lines:
            return "; ".join(lines)
    text = [l for l in (stderr or "").splitlines() if l.strip()]
    return text[-1] if text else "pannus failed"


def fleet_summaries(doc):
    """The fleet summaries in a document: itself, or the parts of a canary rollout or install."""
    out = []
    if not isinstance(doc, dict):
        return out
    if "patched" in doc or "rolled_back" in doc or "committed" in doc or "passed" in doc:
        out.append(doc)
    for key in ("apply", "canary_apply", "canary_rollback", "rest_apply"):
        if isinstance(doc.get(key), dict):
            out.append(doc[key])
    for part in doc.get("rollback") or []:
        if isinstance(part, dict):
            out.append(part)
    return out


class Pannus(object):
    """The pannus binary of a module's ``pannus`` and ``state_dir`` options."""

    def __init__(self, module):
        self.module = module
        binary = module.params["pannus"]
        if "/" not in binary:
            binary = module.get_bin_path(binary, required=True)
        self.binary = binary
        self.state_dir = module.params.get("state_dir")
        # Every command run, with its document: returned as the module's ``commands``.
        self.commands = []

    def run(self, args, ok=(0,)):
        """Runs ``pannus ARGS --json``; returns (rc, document). Raises PannusError when the exit
        code is not in ``ok``."""
        cmd = [self.binary] + list(args) + ["--json"]
        if self.state_dir:
            cmd += ["--state-dir", self.state_dir]
        rc, out, err = self.module.run_command(cmd)
        doc = None
        for line in reversed((out or "").splitlines()):
            if line.strip():
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                break
        self.commands.append({"cmd": cmd, "rc": rc, "result": doc})
        if rc not in ok:
            raise PannusError(failure_message(doc, err), rc, doc, err, cmd)
        if doc is None:
            raise PannusError("pannus printed no JSON document: %s" % (err or out).strip(), rc, None, err, cmd)
        return rc, doc

    def patch_id(self, manifest, need_valid=True):
        """The patch id of a manifest, from ``pannus manifest check``. With ``need_valid``
        False, a manifest that can be read but fails its checks (its build is no longer the one
        on disk) still gives its id."""
        rc, doc = self.run(["manifest", "check", manifest], ok=(0, 1, 2, 3, 4))
        if doc.get("patch") and (rc == 0 or not need_valid):
            return doc["patch"]
        raise PannusError(failure_message(doc, ""), rc or 2, doc, "", self.commands[-1]["cmd"])

    def states(self, patch):
        """{pid: state} of ``patch`` in every process that has it (any state but rolled back),
        from ``pannus status --all``."""
        _, doc = self.run(["status", "--all"])
        out = {}
        for proc in doc.get("processes") or []:
            for rec in proc.get("patches") or []:
                if rec.get("patch") == patch and rec.get("state") != "rolled-back":
                    out[int(proc["pid"])] = rec["state"]
        return out


def diff_text(states, pids):
    """A patch's state in each process, one line each, for --diff."""
    lines = ["%d: %s" % (pid, states.get(pid, "absent")) for pid in sorted(pids)]
    return "\n".join(lines) + ("\n" if lines else "")
