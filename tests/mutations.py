"""Can the ownership tests tell a broken lease from a good one? Each mutation breaks one
guarantee in a temporary copy of the project; the tests named with it must then fail.

    python -m tests.mutations              # every mutation (about ten minutes)
    python -m tests.mutations recover-noop # one

Prints, per mutation, which tests caught it; exits 1 if one survived. Worker processes
the tests start import the copy too (``PYTHONPATH``), never this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The package folders ``pyproject.toml`` maps into ``parley.*``
SUBPACKAGES = ("cache", "wire", "workers", "ingress")
OWNERSHIP = "tests/test_ownership.py::"
CHAOS = OWNERSHIP + "test_chaos_sigkill_join_and_freeze_under_steady_load"


@dataclass(frozen=True)
class Mutation:
    why: str
    edits: tuple[tuple[str, str, str], ...]  # (file, text, replacement)
    tests: tuple[str, ...]


ALWAYS_GRANT = (
    "workers/scripts/lease_acquire.lua",
    "local holder = redis.call('GET', KEYS[1])",
    "local holder = false",
)
UNFENCED_BEGIN = (
    "workers/scripts/begin.lua",
    "if ARGV[3] == '1' and redis.call('GET', KEYS[3]) ~= ARGV[2] then",
    "if false then",
)
NO_LOCAL_FENCE = (
    "workers/ownership.py",
    "return time.monotonic() < self.valid_until.get(partition, 0.0)",
    "return True",
)

MUTATIONS = {
    "acquire-always": Mutation(
        "lease_acquire.lua grants every lease asked for",
        (ALWAYS_GRANT,),
        (
            CHAOS,
            OWNERSHIP + "test_leases_are_taken_renewed_and_released_only_by_their_holder",
        ),
    ),
    "begin-unfenced": Mutation(
        "begin.lua starts an envelope without checking the lease",
        (UNFENCED_BEGIN,),
        (
            CHAOS,
            OWNERSHIP + "test_a_node_never_runs_a_partition_whose_lease_another_node_holds",
        ),
    ),
    "calls-unfenced": Mutation(
        "cache calls and sends never check the lease",
        (NO_LOCAL_FENCE,),
        (CHAOS,),
    ),
    "no-exclusion": Mutation(
        "no lease exclusion at all: every lease granted, nothing fenced",
        (ALWAYS_GRANT, UNFENCED_BEGIN, NO_LOCAL_FENCE),
        (CHAOS,),
    ),
    "recover-noop": Mutation(
        "Runtime.recover finishes nothing a predecessor left in flight",
        (
            (
                "workers/runtime.py",
                '        Returns how many were finished."""\n',
                '        Returns how many were finished."""\n        return 0\n',
            ),
        ),
        (
            OWNERSHIP + "test_a_message_left_in_flight_is_finished_by_the_heir_before_its_queue",
            CHAOS,
        ),
    ),
    "restore-nothing": Mutation(
        "restore_unacked puts nothing back (a dead node's messages wait out the visibility)",
        (
            (
                "workers/private_api.py",
                "    tags = cast(",
                "    return 0\n    tags = cast(",
            ),
        ),
        (CHAOS,),
    ),
}


def copy_project(into: Path) -> Path:
    """The project without its git history and caches, its ``parley/`` folder made the
    whole ``parley`` package (the subpackages linked in, as the editable install maps
    them), so whatever runs from the copy's root imports the copy."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".venv")
    project = into / "project"
    shutil.copytree(ROOT, project, ignore=ignore)
    for name in SUBPACKAGES:
        (project / "parley" / name).symlink_to(project / name)
    return project


def run(name: str, mutation: Mutation) -> list[str]:
    """The tests that failed with the mutation applied, each with what it saw (empty:
    the mutation survived)."""
    with tempfile.TemporaryDirectory(prefix=f"parley-mutant-{name}-") as tmp:
        project = copy_project(Path(tmp))
        for file, text, replacement in mutation.edits:
            path = project / file
            source = path.read_text()
            if text not in source:
                raise SystemExit(f"Error: {name}: {file} no longer contains {text!r}")
            path.write_text(source.replace(text, replacement, 1))
        env = {**os.environ, "PYTHONPATH": str(project)}
        caught = []
        for test in mutation.tests:
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if result.returncode != 0:
                reason = next(  # pytest's first "E   ..." line: what the test saw
                    (line[1:].strip() for line in result.stdout.splitlines() if line[:2] == "E "),
                    f"exit {result.returncode}",
                )
                caught.append(f"{test.rsplit('::', 1)[-1]} ({reason[:120]})")
        return caught


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in MUTATIONS]
    if unknown:
        print(f"Error: no mutation {', '.join(unknown)}; known: {', '.join(MUTATIONS)}")
        return 2
    survived = 0
    for name in names or list(MUTATIONS):
        caught = run(name, MUTATIONS[name])
        verdict = f"caught by {', '.join(caught)}" if caught else "SURVIVED"
        print(f"{name:16} {MUTATIONS[name].why}: {verdict}", flush=True)
        survived += not caught
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
