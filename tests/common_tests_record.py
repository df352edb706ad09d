"""The record of transformers' common tests on Eagle (docs/transformers-common-tests.json), kept honest by every run.

The README's table of passed and skipped tests per mixin, and its list of skips, are read from the record
(tests/test_readme.py). The record comes from a real run of the three files that run the mixins::

    python -m pytest -m "" --write-common-tests-record \
        tests/test_transformers_modeling.py tests/test_transformers_processing.py \
        tests/test_transformers_image_processing.py

(every test, `slow` ones included: the mixins' ``@slow`` tests carry this suite's `slow` mark). Every other run
that includes those files checks its outcomes against it: a recorded test that passes where the record says skipped,
or skips for another reason, or a test the record does not have, fails; a run that collects a whole file and misses
a recorded test of it fails at the end. So the record, and the README with it, cannot go stale unnoticed.

conftest.py imports the hooks below.
"""

import json
import platform
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "transformers-common-tests.json"
FILES = (
    "tests/test_transformers_modeling.py",
    "tests/test_transformers_processing.py",
    "tests/test_transformers_image_processing.py",
)
OPTION = "--write-common-tests-record"
COMMAND = "python -m pytest -m '' " + OPTION + " " + " ".join(FILES)
# The test classes' own bases, by which a test is counted: the first of them (in the class's method resolution
# order) that defines the test, as Python finds the method. A test only the Eagle class defines counts under its
# first mixin (its class's own additions, such as `test_config` with ConfigTester).
MIXINS = ("ModelTesterMixin", "GenerationTesterMixin", "ProcessorTesterMixin", "ImageProcessingTestMixin")

_STATE = pytest.StashKey[dict]()
_CONFIG = []  # the run's config (pytest_runtest_logreport is not given it)


def mixin_of(item: pytest.Item) -> str:
    """The mixin a test belongs to (see MIXINS)."""
    cls = item.cls
    if cls is None:
        return "none"
    mixins = [base for base in cls.__mro__ if base.__name__ in MIXINS]
    name = item.name
    for base in cls.__mro__[1:]:
        if name in vars(base) and base.__name__ in MIXINS:
            return base.__name__
    return mixins[0].__name__


def _file_of(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    return path if path in FILES else None


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skip report gives (pytest's ``longrepr`` tuple ends with ``"Skipped: <reason>"``)."""
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ").strip()


def load_record() -> dict:
    return json.loads(RECORD.read_text())


def pytest_addoption(parser):
    parser.addoption(
        OPTION,
        action="store_true",
        help=f"write {RECORD.relative_to(ROOT)} from this run of transformers' common tests ({', '.join(FILES)}); "
        "run every test of the three files (-m '')",
    )


def configure(config):
    """conftest's ``pytest_configure`` calls this."""
    writing = config.getoption(OPTION, default=False)
    recorded = {} if writing or not RECORD.is_file() else load_record()["tests"]
    config.stash[_STATE] = {"writing": writing, "recorded": recorded, "collected": {}, "outcomes": {}}
    _CONFIG[:] = [config]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session, config, items):
    """Note every collected test of the three files before `-m`, `-k` or `--deselect` drop any."""
    state = config.stash[_STATE]
    for item in items:
        if _file_of(item.nodeid):
            state["collected"][item.nodeid] = {
                "mixin": mixin_of(item),
                "slow": item.get_closest_marker("slow") is not None,
            }
    return (yield)


def _mismatch(nodeid: str, outcome: dict, recorded: dict | None) -> str | None:
    regenerate = f"if the change is meant, regenerate the record and update README.md: {COMMAND}"
    if recorded is None:
        return f"{nodeid} is not in {RECORD.name}; {regenerate}"
    said = {key: recorded.get(key) for key in ("outcome", "reason")}
    got = {key: outcome.get(key) for key in ("outcome", "reason")}
    if said != got:
        return f"{nodeid}: {RECORD.name} records {said}, this run gave {got}; {regenerate}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """Note a test's outcome, and turn its report into a failure where it differs from the record. Runs before the
    terminal, the session's failure count and other reporters read the report."""
    if not _file_of(report.nodeid) or type(report) is not pytest.TestReport:
        return  # a subtest's report (a subtest may skip while its test passes) is not the test's outcome
    state = _CONFIG[0].stash[_STATE]
    outcome = None
    if report.skipped and report.when in ("setup", "call"):
        outcome = {"outcome": "skipped", "reason": skip_reason(report)}
    elif report.when == "call" and report.passed:
        outcome = {"outcome": "passed", "reason": None}
    elif report.failed:
        state["outcomes"][report.nodeid] = {"outcome": "failed", "reason": None}
    if outcome is None:
        return
    state["outcomes"][report.nodeid] = outcome
    if not state["writing"] and RECORD.is_file():
        problem = _mismatch(report.nodeid, outcome, state["recorded"].get(report.nodeid))
        if problem:
            report.outcome, report.longrepr = "failed", problem


def _whole_files(config) -> set[str]:
    """The three files this run collected whole (no `path::test` argument, no --last-failed)."""
    if config.getoption("lf", default=False):
        return set()
    partial = {arg.split("::", 1)[0] for arg in config.args if "::" in arg}
    collected = {_file_of(nodeid) for nodeid in config.stash[_STATE]["collected"]}
    return {path for path in collected if path and not any(Path(p).resolve() == ROOT / path for p in partial)}


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is None or not state["collected"]:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if state["writing"]:
        problems = write_record(state)
    else:
        recorded = state["recorded"]
        whole = _whole_files(config)
        missing = [n for n in recorded if _file_of(n) in whole and n not in state["collected"]]
        problems = [f"{n} is in {RECORD.name} but was not collected; regenerate: {COMMAND}" for n in missing]
    if problems:
        for problem in problems:
            if reporter:
                reporter.write_line(f"common tests record: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def write_record(state: dict) -> list[str]:
    """Write the record from this run; refuse (returning why) unless every collected test ran and none failed."""
    import torch
    import transformers

    collected, outcomes = state["collected"], state["outcomes"]
    problems = [
        f"{n} was collected but did not run (run with -m '' and no -k)" for n in collected if n not in outcomes
    ]
    problems += [
        f"{n} failed: a record holds passes and skips only" for n, o in outcomes.items() if o["outcome"] == "failed"
    ]
    problems += [
        f"{n} skipped without a reason" for n, o in outcomes.items() if o["outcome"] == "skipped" and not o["reason"]
    ]
    missing_files = [path for path in FILES if not any(_file_of(n) == path for n in collected)]
    problems += [f"{path} was not in the run: the record covers all three files" for path in missing_files]
    if problems:
        return [f"not written: {problem}" for problem in problems]
    tests = {nodeid: {**collected[nodeid], **outcomes[nodeid]} for nodeid in sorted(collected)}
    mixins = {}
    for entry in tests.values():
        counts = mixins.setdefault(entry["mixin"], {"passed": 0, "skipped": 0, "slow": 0})
        counts[entry["outcome"]] += 1
        counts["slow"] += entry["slow"]
    record = {
        "command": COMMAND,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()} CPU, no GPU" if not torch.cuda.is_available() else "with a GPU",
        "mixins": {name: mixins[name] for name in MIXINS if name in mixins},
        "tests": tests,
    }
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return []
