"""The official BIDS validator (bids-validator-deno, a pinned requirement) run on a folder, for the tests that
check that what the workflow writes is a valid BIDS (derivatives) dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXECUTABLE = "bids-validator-deno"


def validator_executable():
    """The validator next to this Python (the project's virtual environment), else on PATH; None if absent."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file():
        return str(beside)
    return shutil.which(EXECUTABLE)


def validator_report(root, timeout=300) -> dict:
    """The validator's JSON report of the dataset at ``root`` (skips the calling test when it is not installed)."""
    exe = validator_executable()
    if exe is None:
        pytest.skip(f"{EXECUTABLE} is not installed (pip install bids-validator-deno)")
    # It exits non-zero when it finds errors: the report tells which, so the exit status is not checked here.
    done = subprocess.run([exe, "--format", "json", str(root)], capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{EXECUTABLE} gave no JSON report (exit status {done.returncode}):\n"
                             f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}") from None
    if not isinstance(report, dict) or "issues" not in report:
        raise AssertionError(f"{EXECUTABLE}: unexpected report {str(report)[:2000]}")
    return report


def issues(report) -> list[dict]:
    found = report["issues"]
    return found["issues"] if isinstance(found, dict) else found


def validator_errors(root) -> list[dict]:
    """The issues of severity "error" the BIDS validator finds in the dataset at ``root``, each with the
    validator's explanation of its code under "message" (skips the calling test when it is not installed)."""
    report = validator_report(root)
    messages = report["issues"].get("codeMessages", {}) if isinstance(report["issues"], dict) else {}
    return [{**issue, "message": messages.get(issue.get("code"), "")}
            for issue in issues(report) if issue.get("severity") == "error"]


def show(errors) -> str:
    """The errors one a line (code, sub-code, file, the validator's message), for assertion messages."""
    return "\n".join(f"{e.get('code')} {e.get('subCode', '')} at {e.get('location')}: "
                     f"{(e.get('issueMessage') or e.get('message') or '').strip()[:300]}" for e in errors)
