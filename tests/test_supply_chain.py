"""The dependency set: constraints.txt pins every runtime dependency of Parley
(transitively) at the version the tests ran with, each pin within pyproject.toml's
specifiers; the pinned set is audited against PyPI's vulnerability data (pip-audit);
pyproject's lower bounds stay past the advisories known when they were set.

Regenerate constraints.txt from an environment the tests passed in:

    python -m tests.test_supply_chain > constraints.txt
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
PYPI = "https://pypi.org/pypi"

HEADER = """\
# The exact version of every runtime dependency of Parley (transitively, for CPython
# 3.11 on Linux) that the tests ran with and that pip-audit checked.
#     pip install -c constraints.txt .        reproduces the tested set (the Dockerfile does)
# Regenerate, from an environment where the tests pass (e.g. after `pip install -U -e
# '.[test]'` and a green `python -m pytest`):
#     python -m tests.test_supply_chain > constraints.txt
# It is what `pip freeze --exclude-editable` prints, restricted to what parley's runtime
# requirements pull in (test tools are not pinned). tests/test_supply_chain.py checks it.
"""

#: Advisories known when pyproject's lower bounds were set: (package, first fixed
#: version, ids). Not a vulnerability database (the audit below asks PyPI's); it keeps
#: a lowered floor from letting a known-bad version back in.
KNOWN_FIXED = [
    ("orjson", "3.9.15", "CVE-2024-27454"),
    ("orjson", "3.11.6", "CVE-2025-67221"),
    ("filelock", "3.20.1", "CVE-2025-68146"),
    ("filelock", "3.20.3", "CVE-2026-22701"),
    ("h11", "0.16.0", "CVE-2025-43859"),
    ("starlette", "0.40.0", "CVE-2024-47874"),
    ("starlette", "0.49.1", "CVE-2025-62727"),
    ("starlette", "1.0.1", "CVE-2026-48710"),
    ("starlette", "1.3.1", "GHSA-82w8-qh3p-5jfq"),
    ("tornado", "6.4.2", "CVE-2024-52804"),
    ("tornado", "6.5", "CVE-2025-47287"),
    ("tornado", "6.5.3", "CVE-2025-67724, CVE-2025-67725, CVE-2025-67726"),
    ("tornado", "6.5.5", "GHSA-qjxf-f2mg-c6mc, GHSA-78cv-mqj4-43f7"),
    ("tornado", "6.5.6", "GHSA-3x9g-8vmp-wqvf, CVE-2026-49855"),
    ("redis", "4.5.4", "CVE-2023-28858, CVE-2023-28859"),
    ("pydantic", "2.4.0", "CVE-2024-3772"),
    ("fastapi", "0.109.1", "CVE-2024-24762"),
    ("uvicorn", "0.11.7", "CVE-2020-7694, CVE-2020-7695"),
    ("httpx", "0.23.0", "CVE-2021-41945"),
    ("celery", "5.2.2", "CVE-2021-23727"),
    # transitive, pinned only
    ("python-dotenv", "1.2.2", "CVE-2026-28684"),
    ("pygments", "2.20.0", "CVE-2026-4539"),
    ("idna", "3.7", "CVE-2024-3651"),
    ("certifi", "2024.7.4", "CVE-2024-39689"),
]


# -- the dependency closure -------------------------------------------------------------


def project_requirements() -> list[Requirement]:
    """pyproject.toml's [project] dependencies (the source of truth, not the installed
    metadata, which is as old as the last `pip install -e`)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = dict(default_environment())
    return any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in (*extras, "")
    )


def runtime_closure() -> dict[NormalizedName, list[Requirement]]:
    """Every distribution Parley's runtime requirements pull in (as installed here), with
    the requirements on it found along the way (extras followed, markers evaluated for
    this interpreter)."""
    found: dict[NormalizedName, list[Requirement]] = {}
    extras: dict[NormalizedName, set[str]] = {}
    todo = [req for req in project_requirements() if applies(req, ())]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        found.setdefault(name, []).append(requirement)
        known = extras.setdefault(name, set())
        new = set(requirement.extras) - known
        if len(found[name]) > 1 and not new:
            continue
        known |= new
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            pytest.fail(f"{requirement.name} (needed as {requirement}) is not installed")
        for line in dist.requires or []:
            sub = Requirement(line)
            if applies(sub, known):
                todo.append(sub)
    return found


def installed_pins() -> dict[NormalizedName, str]:
    return {name: distribution(name).version for name in runtime_closure()}


def render_constraints(pins: dict[NormalizedName, str]) -> str:
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def read_constraints(path: Path = CONSTRAINTS) -> dict[NormalizedName, str]:
    pins: dict[NormalizedName, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"constraints.txt:{number}: pin one exact version: {line}"
        )
        assert not requirement.extras and requirement.marker is None, f"line {number}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = specifiers[0].version
    assert pins, "constraints.txt pins nothing"
    return pins


# -- constraints.txt ----------------------------------------------------------------------


def test_every_runtime_dependency_is_pinned_within_pyproject_specifiers() -> None:
    pins = read_constraints()
    assert "parley" not in pins
    # pyproject.toml's own specifiers hold for the pins, whatever is installed
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"not pinned in constraints.txt: {requirement}"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )

    # The rest is read from the installed distributions' metadata, so it can be checked
    # only where the installed set is the pinned one (pip install -c constraints.txt);
    # an environment installed without it (CI's, with older or newer releases that
    # were already there) is told how it differs instead.
    drift = {
        name: (pins.get(name), installed)
        for name, installed in installed_pins().items()
        if name not in pins or Version(installed) != Version(pins[name])
    }
    if drift:
        warnings.warn(
            "installed versions differ from constraints.txt, so the pins' own requirements "
            f"were not checked (pip install -c constraints.txt -e '.[test]'): {drift}",
            stacklevel=1,
        )
        return
    closure = runtime_closure()
    missing = sorted(set(closure) - set(pins))
    assert not missing, f"not pinned in constraints.txt (regenerate it): {missing}"
    extra = sorted(set(pins) - set(closure))
    assert not extra, f"pinned but not a runtime dependency of parley: {extra}"
    for name, requirements in closure.items():
        version = Version(pins[name])
        for requirement in requirements:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {name}=={version}, outside {requirement}"
            )


def test_constraints_file_says_how_to_regenerate_it() -> None:
    text = CONSTRAINTS.read_text()
    assert text.startswith(HEADER), "keep the header (python -m tests.test_supply_chain)"
    assert render_constraints(read_constraints()) == text, "one sorted name==version a line"


def test_floors_are_past_known_advisories() -> None:
    """pyproject's lower bounds exclude the versions with the advisories in KNOWN_FIXED,
    and so do the pins (for transitive dependencies, the pins alone)."""
    floors: dict[NormalizedName, Version] = {}
    for requirement in project_requirements():
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
        assert lows, f"{requirement}: give it a lower bound"
        floors[canonicalize_name(requirement.name)] = max(lows)
    pins = read_constraints()
    for package, fixed, ids in KNOWN_FIXED:
        name = canonicalize_name(package)
        assert name in pins, f"{package} is no longer a dependency: drop it from KNOWN_FIXED"
        assert Version(pins[name]) >= Version(fixed), f"{package}=={pins[name]}: {ids}"
        if name in floors:
            assert floors[name] >= Version(fixed), (
                f"pyproject.toml admits {package} {floors[name]} < {fixed} ({ids})"
            )


# -- the audit ----------------------------------------------------------------------------


def pypi_latest_vulnerabilities(
    client: httpx.Client, name: str, version: str
) -> list[dict[str, Any]] | None:
    """PyPI's vulnerability list for ``name==version`` from the project's JSON, which
    carries it for the latest release only: None when ``version`` is not the latest."""
    response = client.get(f"{PYPI}/{name}/json")
    response.raise_for_status()
    data = response.json()
    if Version(data["info"]["version"]) != Version(version):
        return None
    return [v for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]


def describe(name: str, version: str, vulns: list[dict[str, Any]]) -> list[str]:
    return [
        f"{name}=={version}: {v['id']} ({', '.join(v.get('aliases', []))}) fixed in "
        f"{', '.join(v.get('fix_versions') or v.get('fixed_in') or []) or 'no release'}"
        for v in vulns
    ]


class Audit:
    """What the audit of constraints.txt found: vulnerabilities, and pins it could not
    audit (each with the reason)."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.unaudited: list[str] = []


def run_audit(constraints: Path, cache: Path) -> Audit:
    """pip-audit over a constraints file, against PyPI's vulnerability data (network; about
    10 s). Where PyPI's per-release JSON is not served (pip-audit then skips the package
    as "not found"), the project's JSON stands in: it holds the list for the latest
    release, so it audits a pin that is the latest release and no other."""
    pins = read_constraints(constraints)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps"),
            *("-r", str(constraints), "--format", "json", "--progress-spinner", "off"),
            *("--cache-dir", str(cache)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    if report is None:
        pytest.fail(
            f"pip-audit did not run (exit {done.returncode}): the pinned set was NOT "
            "audited. If PyPI could not be reached, run this where pypi.org answers."
            f"\n{done.stderr[-3000:]}"
        )
    result = Audit()
    skipped: dict[str, str] = {}
    for dep in report["dependencies"]:
        if "skip_reason" in dep:
            skipped[dep["name"]] = dep["skip_reason"]
        else:
            result.found += describe(dep["name"], dep["version"], dep.get("vulns", []))
    seen = {canonicalize_name(d["name"]) for d in report["dependencies"]}
    assert seen == set(pins), f"pip-audit saw other packages: {seen ^ set(pins)}"
    if skipped:
        try:
            retrying = httpx.HTTPTransport(retries=3)  # a dropped connection is retried
            with httpx.Client(timeout=30, follow_redirects=True, transport=retrying) as client:
                for name, reason in sorted(skipped.items()):
                    version = pins[canonicalize_name(name)]
                    vulns = pypi_latest_vulnerabilities(client, name, version)
                    if vulns is None:
                        result.unaudited.append(f"{name}=={version}: {reason}")
                    else:
                        result.found += describe(name, version, vulns)
        except httpx.HTTPError as exc:
            pytest.fail(f"PyPI could not be reached: the pinned set was NOT audited ({exc!r})")
    return result


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Audit:
    return run_audit(CONSTRAINTS, tmp_path_factory.mktemp("pip-audit-cache"))


@pytest.mark.timeout(300)
def test_the_audit_finds_a_known_vulnerability(tmp_path: Path) -> None:
    """Not a no-op: pycrypto 2.6.1 (its last release, never fixed) has CVE-2013-7459."""
    bad = tmp_path / "constraints.txt"
    bad.write_text("pycrypto==2.6.1\n")
    result = run_audit(bad, tmp_path / "cache")
    assert any("CVE-2013-7459" in line for line in result.found), vars(result)


@pytest.mark.timeout(300)
def test_pinned_set_has_no_known_vulnerabilities(audit: Audit) -> None:
    """Where PyPI serves no vulnerability data for a pinned version (here it answers
    only for each project's latest release; Celery and kombu hold ``packaging`` and
    ``python-dateutil`` at older exact versions), the pin is named in a warning: an
    audit gap, reported, not a pass in silence."""
    if audit.unaudited:
        warnings.warn(
            "not audited (no vulnerability data for these versions): " + ", ".join(audit.unaudited),
            stacklevel=1,
        )
    assert not audit.found, (
        "known vulnerabilities in constraints.txt: raise the pin (and pyproject's floor) "
        "past the fix, don't ignore them:\n" + "\n".join(audit.found)
    )


if __name__ == "__main__":
    sys.stdout.write(render_constraints(installed_pins()))
