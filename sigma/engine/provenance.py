"""The one record of how a result was made: commit, package versions, machine, command, time."""
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# For copies of the tree without .git (e.g. a lent GPU machine) the commit can be given by hand.
COMMIT_ENV = ("SIGMA_COMMIT", "SIGMA_BENCH_COMMIT")
PACKAGES = ("sigma-video", "torch", "timm", "numpy", "triton", "decord", "av", "transformers", "PyYAML", "omegaconf")


def git_commit(short=False):
    """The checkout's commit, with "+dirty" when tracked files differ from it; $SIGMA_COMMIT when
    set; None outside a git checkout."""
    for name in COMMIT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", *(["--short"] if short else []), "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def versions():
    """{distribution: version or None} of what a run depends on, plus Python and CUDA."""
    out = {"python": platform.python_version()}
    for dist in PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["cuda"] = torch.version.cuda
    return out


def provenance(argv=None, **extra):
    """What is needed to tell how a result was made, plus the caller's `extra` (seed, world size, ...)."""
    return {
        "commit": git_commit(),
        "versions": versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": list(sys.argv if argv is None else argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
