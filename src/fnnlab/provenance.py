"""What could change a run's numbers, recorded with the run: versions, machine, threads,
the code (commit, a dirty tree's diff), the exact data fed to training.

Every run carries these as tags `env.*` (env_tags). fnnlab-replay compares them with
today's to say why a run that no longer reproduces differs (env_diff), and the sweeper's
resume compares `env.code` (code_hash): a hash of what can change a run's numbers, the
fnnlab package's source and conf/, the version of torch and the data, so that editing a
README does not rerun a sweep.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from fnnlab.config import project_root

# A dirty tree's diff is logged as an artifact up to this size; a longer one is cut, and says so.
DIFF_CAP_BYTES = 1_000_000
DIFF_ARTIFACT = "git_diff.patch"

PACKAGES = {
    "python": None,
    "torch": "torch",
    "numpy": "numpy",
    "mlflow": "mlflow",
    "hydra": "hydra-core",
    "sklearn": "scikit-learn",
    "fnnlab": "fnnlab",
}


def _version(dist: str | None) -> str:
    if dist is None:
        return platform.python_version()
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit (the project's by default), once per process; None outside a
    git checkout."""
    return commit_at(root or project_root())


@cache
def commit_at(root: Path) -> str | None:
    head = _git(root, "rev-parse", "HEAD")
    return head.stdout.decode().strip() if head is not None and head.returncode == 0 else None


@cache
def git_state(root: Path | None = None) -> tuple[str | None, bool | None, bytes | None]:
    """(commit, dirty, diff against the commit of tracked files) of the checkout at `root`
    (the project's by default), once per process; (None, None, None) outside a git
    checkout. Untracked files make a tree dirty but are not in the diff. When git could
    not tell (a damaged index or object, a timeout): dirty None unless what it did tell
    was a change, diff None when `git diff` failed."""
    root = root or project_root()
    commit = git_commit(root)
    if commit is None:
        return None, None, None
    # Text only: a changed image is one "Binary files differ" line, not megabytes.
    diff = _git(root, "diff", "HEAD")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard")
    answered = [p for p in (diff, untracked) if p is not None and p.returncode == 0]
    text = diff.stdout if diff in answered else None
    dirty = any(p.stdout.strip() for p in answered) or (None if len(answered) < 2 else False)
    return commit, dirty, text


def diff_artifact(root: Path | None = None, cap: int = DIFF_CAP_BYTES) -> bytes | None:
    """A dirty tree's diff for the run's artifacts (None when clean, or when git could not
    make it), cut at `cap` bytes with a last line that says so."""
    _, dirty, diff = git_state(root)
    if not dirty or diff is None:
        return None
    if len(diff) <= cap:
        return diff
    note = f"\n# fnnlab: diff cut at {cap} of {len(diff)} bytes\n"
    return diff[:cap] + note.encode()


@cache
def code_hash() -> str:
    """A hash of what can change a run's numbers: the fnnlab package's source, conf/, and
    the installed torch. (The data's hash is its own tag, env.data.)"""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    files = sorted(package.rglob("*.py")) + sorted(package.rglob("*.json"))
    conf = project_root() / "conf"
    if conf.is_dir():
        files += sorted(conf.rglob("*.yaml"))
    for path in files:
        rel = path.relative_to(package.parent if path.is_relative_to(package) else project_root())
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"torch {_version('torch')}".encode())
    return h.hexdigest()[:16]


def data_hash(*tensors) -> str:
    """A hash of the exact tensors fed to training: dtype, shape and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@cache
def _static_tags() -> dict[str, str]:
    commit, dirty, diff = git_state()
    tags = {f"env.{name}": _version(dist) for name, dist in PACKAGES.items()}
    tags |= {
        "env.platform": platform.platform(),
        "env.cpu": cpu_model(),
        "env.code": code_hash(),
        "env.git_commit": commit or "none",
        # Outside a git checkout, or when git failed, nothing says whether the code changed.
        "env.git_dirty": "unknown" if dirty is None else str(dirty).lower(),
    }
    if dirty and diff is not None:
        tags["env.git_diff_sha256"] = hashlib.sha256(diff).hexdigest()[:16]
    return tags


def env_tags(data: str) -> dict[str, str]:
    """The tags env.* of a run trained now in this process, on data with hash `data`."""
    import torch

    return {
        **_static_tags(),
        "env.torch_threads": str(torch.get_num_threads()),
        "env.torch_deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "env.omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        # The vector kernels torch picked (ATEN_CPU_CAPABILITY can lower them): another
        # path gives other last bits, so a run from another CPU would not replay exactly.
        "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env.data": data,
    }


# An answer's env.* tags on the parent run, as aggregate.env.python, ...
ANSWER = "aggregate."


def _answer_env() -> dict[str, str]:
    """The env.* values of an answer made now in this process: the code and the libraries
    that make an answer from stored runs."""
    static = _static_tags()
    keys = (
        "env.python",
        "env.torch",
        "env.numpy",
        "env.mlflow",
        "env.fnnlab",
        "env.code",
        "env.git_commit",
        "env.git_dirty",
    )
    return {key: static[key] for key in keys} | {
        "env.pandas": _version("pandas"),
        "env.scipy": _version("scipy"),
        # Always set: an earlier answer's cannot be left standing on the parent.
        "env.git_diff_sha256": static.get("env.git_diff_sha256", ""),
    }


def answer_env_tags() -> dict[str, str]:
    """The tags aggregate.env.* of a sweep's answer made now, for fnnlab-replay to say what
    changed since when the answer is not made again exactly."""
    return {ANSWER + key: value for key, value in _answer_env().items()}


def answer_env_diff(parent_tags: dict[str, str]) -> list[str] | None:
    """What changed since the parent's answer was made (env_diff's lines); None when the
    answer recorded nothing of it (an older fnnlab's)."""
    stored = {
        key.removeprefix(ANSWER): value
        for key, value in parent_tags.items()
        if key.startswith(ANSWER + "env.")
    }
    return env_diff(stored, _answer_env()) if stored else None


# The parent's tag that lists every file an answer wrote under aggregate/ with its hash.
FILES_TAG = ANSWER + "files"
# The hash of the parent's description the answer wrote (sha256 of its UTF-8 text).
NOTE_TAG = ANSWER + "note_sha256"


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_digest(files: dict[str, bytes]) -> str:
    """The lines `sha256sum` prints for the files ("<hash>  <name>", in name order): a file
    changed or written again after the answer was made can be told, by fnnlab-replay or by
    `sha256sum -c` on the downloaded folder."""
    return "".join(f"{file_hash(data)}  {name}\n" for name, data in sorted(files.items()))


def read_digest(text: str) -> dict[str, str]:
    """files_digest's lines as {name: hash}."""
    pairs = (line.split("  ", 1) for line in text.splitlines() if "  " in line)
    return {name: digest for digest, name in pairs}


# What env_diff reports, and how it names each tag.
_NAMES = {
    "env.python": "python",
    "env.torch": "torch",
    "env.numpy": "numpy",
    "env.mlflow": "mlflow",
    "env.hydra": "hydra",
    "env.sklearn": "scikit-learn",
    "env.pandas": "pandas",
    "env.scipy": "scipy",
    "env.fnnlab": "fnnlab",
    "env.platform": "platform",
    "env.cpu": "cpu",
    "env.torch_threads": "torch threads",
    "env.torch_deterministic": "torch deterministic",
    "env.omp_num_threads": "OMP_NUM_THREADS",
    "env.cpu_capability": "torch CPU capability",
    "env.code": "code",
    "env.data": "data",
    "env.git_commit": "commit",
    "env.git_diff_sha256": "diff",
}


def env_diff(stored: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between a run's stored env.* tags and today's, e.g. 'torch 2.13.0 ->
    2.14.0', 'commit abc1234 -> def5678', 'dirty tree (then)'."""
    out = []
    threads = stored.get("env.torch_threads"), now.get("env.torch_threads")
    for key, name in _NAMES.items():
        a, b = stored.get(key), now.get(key)
        # It reaches training only through torch's thread count, which fnnlab sets itself
        # (population.one_thread): with the same count, named for every job a worker ran,
        # whose launcher set it, it would only mislead (helper-64).
        if key == "env.omp_num_threads" and threads[0] is not None and threads[0] == threads[1]:
            continue
        if a is None and key != "env.git_diff_sha256":
            if b is not None and stored:
                out.append(f"{name} not recorded")
            continue
        if a != b:
            if key == "env.git_commit":
                a, b = (v[:7] if v else v for v in (a, b))
            if key == "env.git_diff_sha256":  # dirty with no hash: git could not make the diff
                a, b = (
                    "unknown" if v is None and tags.get("env.git_dirty") == "true" else v
                    for v, tags in ((a, stored), (b, now))
                )
            a, b = (v if v else "unset" for v in (a, b))  # OMP_NUM_THREADS="" is not set
            out.append(f"{name} {a} -> {b}")
    was, now_dirty = stored.get("env.git_dirty"), now.get("env.git_dirty")
    then, today = was == "true", now_dirty == "true"
    if then or today:
        out.append(
            "dirty tree " + ("then and now" if then and today else "then" if then else "now")
        )
    if stored and was != now_dirty and "unknown" in (was, now_dirty):  # git could not tell
        out.append("dirty tree unknown " + ("then" if was == "unknown" else "now"))
    return out
