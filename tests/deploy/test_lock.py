"""deploy/requirements.lock, the image's lock (`make lock`), agrees with pyproject.toml: every pin of the
project's dependencies, of the extras the image carries (`otel`) and of its build system is locked at a version the pin allows, every locked package is there
because pyproject.toml or another locked package asks for it, and each is pinned exactly with hashes."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.k8s_support import REPO

LOCK = REPO / "deploy" / "requirements.lock"
PROJECT = "crowd-gateway (pyproject.toml)"


@dataclass
class Locked:
    requirement: Requirement
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        (spec,) = self.requirement.specifier
        return spec.version


def lock_entries() -> list[Locked]:
    """The lock's entries in uv's format: `name==version [; marker] \\`, hash lines, then `# via` lines."""
    entries: list[Locked] = []
    for line in LOCK.read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if not line.startswith((" ", "#")) and text:
            entries.append(Locked(Requirement(text)))
        elif text.startswith("--hash=") and entries:
            entries[-1].hashes.append(text)
        elif (via := re.match(r"#\s+(?:via\s+)?(\S.*)$", text)) and text != "# via" and line.startswith(" "):
            entries[-1].via.append(via.group(1))
    return entries


IMAGE_EXTRAS = ("otel",)
"""Extras the image carries (traces are turned on by environment variables alone, in the chart's values)."""


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def image_pins(data: dict) -> list[str]:
    """The project's dependencies and the image's extras."""
    extras = data["project"]["optional-dependencies"]
    return data["project"]["dependencies"] + [pin for extra in IMAGE_EXTRAS for pin in extras[extra]]


def test_every_entry_is_pinned_exactly_with_hashes() -> None:
    entries = lock_entries()
    assert len(entries) > 20
    for entry in entries:
        assert [spec.operator for spec in entry.requirement.specifier] == ["=="], entry.requirement
        assert entry.hashes and all(h.startswith("--hash=sha256:") for h in entry.hashes), entry.name


def test_every_pin_of_pyproject_is_locked_at_a_version_it_allows() -> None:
    data = pyproject()
    pins = [Requirement(r) for r in image_pins(data) + data["build-system"]["requires"]]
    by_name: dict[str, list[Locked]] = {}
    for entry in lock_entries():
        by_name.setdefault(entry.name, []).append(entry)
    for pin in pins:
        locked = by_name.get(canonicalize_name(pin.name))
        assert locked, f"{pin} is not in {LOCK.name}: run `make lock`"
        for entry in locked:
            assert pin.specifier.contains(entry.version, prereleases=True), \
                f"{pin} does not allow the locked {entry.name}=={entry.version}: run `make lock`"


def test_every_locked_package_is_asked_for() -> None:
    """Nothing stale: each entry comes from pyproject.toml's dependencies, its build system, or another entry."""
    data = pyproject()
    entries = lock_entries()
    locked = {entry.name for entry in entries}
    build = {canonicalize_name(Requirement(r).name) for r in data["build-system"]["requires"]}
    direct = {canonicalize_name(Requirement(r).name) for r in image_pins(data)}
    for entry in entries:
        if entry.name in build:
            continue
        parents = {PROJECT if v.endswith("(pyproject.toml)") else canonicalize_name(v) for v in entry.via}
        assert parents, f"{entry.name}: no `# via` line"
        assert parents <= locked | {PROJECT}, f"{entry.name} is asked for by {parents - locked}, not in the lock"
        assert (PROJECT in parents) == (entry.name in direct), \
            f"{entry.name}: the lock and pyproject.toml's dependencies disagree on it: run `make lock`"


def test_the_serving_image_carries_no_tools_and_no_litellm() -> None:
    locked = {entry.name for entry in lock_entries()}
    assert not locked & {"openai", "litellm", "matplotlib", "pytest"}
