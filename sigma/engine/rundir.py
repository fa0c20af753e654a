"""One run per output folder: a folder that already holds a run is refused unless the run is
resumed or explicitly overwritten, so two runs never mix their logs and checkpoints (a later
`--resume auto` would otherwise pick up the old run's newest checkpoint).

A loop names its run by glob patterns relative to the folder: `marks` (files whose presence means
"a run is here") and `removes` (what `--overwrite` deletes: the marks and what comes with them,
e.g. TensorBoard logs and leftover temporary files). Files that are not the loop's own (other
tasks' result JSONs, the user's notes) are never looked at or removed.
"""
import shutil
from pathlib import Path

from .config import ConfigError, folder_path


def found(output_dir, patterns):
    """The paths under `output_dir` matching any glob pattern, sorted (none when it is not a folder)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted({p for pattern in patterns for p in out.glob(pattern)})


def claim_output_dir(output_dir, *, what, marks, removes, resume, overwrite, remove=True):
    """Check that `output_dir` may take this run, and on `overwrite` delete the old one.

    Refused (ConfigError naming the flags to pass) when `output_dir` is a file, when it holds a run
    (`marks`) and neither `resume` nor `overwrite` is given, or when both are. With `overwrite`
    and `remove` (rank 0 only, under torchrun) the `removes` paths are deleted. Returns the
    deleted paths, relative to `output_dir`."""
    problem = folder_path(str(output_dir))
    if problem:
        raise ConfigError(f"--output-dir {problem}")
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other (--resume continues the run in "
                          f"{output_dir}, --overwrite deletes it): pass one of them")
    out = Path(output_dir)
    present = found(out, marks)
    if present and resume is None and not overwrite:
        names = [str(p.relative_to(out)) for p in present]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise ConfigError(f"--output-dir {output_dir} already holds a {what} ({shown}); pass --resume auto to "
                          f"continue it, or --overwrite to start afresh (deletes {_listed(removes)})")
    if not overwrite:
        return []
    gone = found(out, removes)
    if remove:
        for path in gone:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return [str(p.relative_to(out)) for p in gone]


def _listed(patterns):
    """The patterns as the user reads them: temporary files (hidden names) left out."""
    return ", ".join(p for p in patterns if not Path(p).name.startswith("."))


__all__ = ["claim_output_dir", "found"]
