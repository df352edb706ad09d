"""The stacks CI tests (constraints/*.txt, written by scripts/lock.sh) against pyproject's ranges, and this
environment against the stack scripts/setup.sh installed it from."""

import runpy
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT
from packaging.requirements import Requirement
from packaging.version import Version

STACKS = runpy.run_path(str(ROOT / "scripts" / "stacks.py"))
canonical = STACKS["canonical"]


def stack(name: str) -> dict[str, Version]:
    """constraints/NAME.txt as {distribution: version}."""
    return {distribution: Version(version) for distribution, version in STACKS["pins"](stack_file(name)).items()}


def stack_file(name: str) -> Path:
    return ROOT / "constraints" / f"{name}.txt"


def requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """pyproject's dependencies, and those of ``extras`` (naming other packages, not eagle-hub's own extras)."""
    project = STACKS["project"]()
    found = [Requirement(line) for line in project["dependencies"]]
    for extra in extras:
        found += [Requirement(line) for line in project["optional-dependencies"][extra]]
    return [requirement for requirement in found if canonical(requirement.name) != "eagle-hub"]


EXTRAS = ("demo", "serve", "eval", "search", "test")


def test_the_oldest_stack_pins_each_dependency_at_its_lower_bound():
    oldest = stack("oldest")
    bounds = STACKS["lower_bounds"](STACKS["dependencies"]())
    assert len(bounds) == len(requirements()), "every dependency has a lower bound"
    for name, version in bounds.items():
        assert oldest[canonical(name)] == Version(version), f"{name}: pyproject says >={version}"


@pytest.mark.parametrize("name, extras", [("latest", EXTRAS), ("oldest", tuple(e for e in EXTRAS if e != "eval"))])
def test_each_stack_is_inside_pyprojects_ranges(name, extras):
    pins = stack(name)
    for requirement in requirements(extras):
        pinned = pins.get(canonical(requirement.name))
        assert pinned is not None, f"constraints/{name}.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pinned, prereleases=True), f"{requirement} excludes {pinned}"


def test_what_we_adapt_ends_at_the_newest_tested_minor():
    """transformers' server (serving/adaptation.py) and lmms-eval (evaluation/) change their internals from release
    to release: their upper bounds are the newest CI tests, so a user never installs an untested one."""
    latest = stack("latest")
    served = next(r for r in requirements(("serve",)) if canonical(r.name) == "transformers" and r.extras)
    tested = latest["transformers"]
    assert {str(s) for s in served.specifier if s.operator == "<"} == {f"<{tested.major}.{tested.minor + 1}"}
    (lmms,) = [r for r in requirements(("eval",)) if canonical(r.name) == "lmms-eval"]
    assert {str(s) for s in lmms.specifier} == {f"=={latest['lmms-eval']}"}


def test_this_environment_is_the_stack_it_was_set_up_from():
    """What the README's commands install (scripts/setup.sh writes the stack's name into the venv) is exactly the
    stack file: every installed distribution pinned, at its pin."""
    marker = Path(sys.prefix) / "eagle-stack"
    if not marker.is_file():
        reason = f"this environment ({sys.prefix}) was not set up by scripts/setup.sh"
        if IN_CI:
            pytest.fail(f"{reason}; CI must use it", pytrace=False)
        pytest.skip(reason)
    name = marker.read_text().strip()
    if name == "newest":
        pytest.skip("the newest stack pins nothing (scripts/test.sh --newest)")
    pins = stack(name)
    unpinned = STACKS["unpinned"](stack_file(name))
    assert not unpinned, f"installed but not in constraints/{name}.txt: {unpinned}"
    installed = {canonical(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    installed.pop("eagle-hub")
    wrong = {n: (str(v), str(pins[n])) for n, v in installed.items() if Version(v.public) != pins[n]}
    assert not wrong, f"installed (version, pin) differing from constraints/{name}.txt: {wrong}"


def test_the_readme_states_the_pinned_stacks():
    readme = " ".join((ROOT / "README.md").read_text().split())
    latest, oldest = stack("latest"), stack("oldest")
    assert f"`constraints/latest.txt` (transformers {latest['transformers']}, torch {latest['torch']}," in readme
    for name, shown in (("transformers", "transformers"), ("trl", "TRL"), ("peft", "PEFT")):
        assert f"{shown} {oldest[name]}" in readme.split("`constraints/oldest.txt`", 1)[1][:300], name
    (served,) = [r for r in requirements(("serve",)) if canonical(r.name) == "transformers" and r.extras]
    bounds = ",".join(sorted((str(s) for s in served.specifier), key=lambda s: s[0] != ">"))
    assert f"`eagle serve` takes transformers `{bounds}`" in readme
