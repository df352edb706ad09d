"""What ``eagle eval`` runs: lmms-eval's Python API (``simple_evaluate``) over the package's ``eagle`` model, one task
at a time with one loaded model, so that a task that crashes is reported as failed without losing the others.

    from eagle_hub.evaluation.runner import evaluate
    report = evaluate("eagle-quickstart/model", ["eagle_quickstart"], "eval-out")
    report.summary        # {"eagle_quickstart": {"exact_match": 0.98, "exact_match_colour": 1.0, ...}}
    report.failures       # {task: "ValueError: ..."}; empty when every task ran

Writes into ``output``: ``results.json`` (lmms-eval's results format, every task of the run), ``samples_<task>.jsonl``
(one line per example: input, answer, target, scores) and ``eval_results.json`` (task -> metric -> value). A local
model folder also gets the results in its model card (``hub_cards.model_card.record_eval_results``).

What it changes in lmms-eval 0.7.3, and why (all verified with 0.7.3):
- its loguru logger writes to stderr, at WARNING (importing ``lmms_eval.models`` points it at stdout);
- a task's download and scoring are tried once (lmms-eval retries each scored example 5 times, 2 s apart, and
  reports a ``tenacity.RetryError``); the error shown is the real one;
- with filelock 4 installed, lmms-eval's patch of filelock 3's private module is skipped (it would fail; the patch
  only matters for several processes loading one dataset);
- ``dataset_kwargs: {token: True}`` (most of lmms-eval's tasks) is dropped when no Hugging Face token is set, so that
  public datasets load anonymously instead of failing with LocalTokenNotFoundError.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from eagle_hub.processing.locations import is_hub_id

from . import LMMS_EVAL_VERSION, SETUP_HINT, TASKS_DIR
from .benchmarks import BY_TASK

LMMS_EVAL_URL = "https://github.com/EvolvingLMMs-Lab/lmms-eval"
LOCAL_BUILDERS = ("csv", "json", "parquet", "text", "pandas", "arrow")
QUICKSTART_TASK = "eagle_quickstart"
QUICKSTART_HELDOUT = Path("data") / "hf" / "sft_heldout"  # relative to the quickstart's output folder
# Tasks of this package for the card: (dataset name, Hub task type).
LOCAL_TASKS = {QUICKSTART_TASK: ("eagle quickstart: synthetic shapes, held-out split", "visual-question-answering")}


class EvalSetupError(ValueError):
    """lmms-eval is missing or unusable; the message says how to install it."""


@dataclass
class TaskRun:
    task: str
    seconds: float
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)


@dataclass
class EvalReport:
    model: str
    output: Path
    summary: dict  # task -> metric -> value, for the tasks that ran
    runs: list[TaskRun]
    results: dict  # lmms-eval's results, every task of the run
    card: Path | None = None  # the model folder's eval_results.json, when updated
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, str]:
        return {run.task: run.error for run in self.runs if run.error}

    @property
    def results_file(self) -> Path:
        return self.output / "results.json"

    @property
    def summary_file(self) -> Path:
        return self.output / "eval_results.json"


# ------------------------------------------------------------------------------------------------ lmms-eval itself


@functools.cache
def lmms_eval_ready():
    """Import lmms-eval, set it up as described in the module docstring, and return its ``evaluator`` module."""
    try:
        import filelock
        import lmms_eval
        import lmms_eval.models  # noqa: F401  (registers the models, ours included, and resets loguru)
        from lmms_eval import evaluator
        from lmms_eval.api.task import ConfigurableTask
        from loguru import logger
        from tenacity import stop_after_attempt
    except ImportError as error:
        raise EvalSetupError(f"lmms-eval is not installed ({error}); install it: {SETUP_HINT}") from error
    except RuntimeError as error:  # e.g. a CUDA torchvision next to a CPU torch
        raise EvalSetupError(f"lmms-eval does not import ({error}); reinstall it with {SETUP_HINT}") from error
    version = getattr(lmms_eval, "__version__", None) or _installed_version("lmms-eval")
    if version and not version.startswith(LMMS_EVAL_VERSION.rsplit(".", 1)[0]):
        raise EvalSetupError(f"lmms-eval {version} is installed; eagle eval is built for {LMMS_EVAL_VERSION}")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    ConfigurableTask.process_results.retry.stop = stop_after_attempt(1)
    ConfigurableTask.download.retry.stop = stop_after_attempt(1)
    if int(filelock.__version__.split(".")[0]) >= 4:
        evaluator._enable_reentrant_filelocks._patched = True
    return evaluator


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.cache
def task_manager(include_paths: tuple[str, ...] = ()):
    """lmms-eval's task index: its own tasks, this package's (``TASKS_DIR``) and ``include_paths``; indexing takes
    several seconds, so one is kept per set of paths."""
    lmms_eval_ready()
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=[str(TASKS_DIR), *include_paths], model_name="eagle")


def check_include_paths(include_paths) -> tuple[str, ...]:
    paths = []
    for value in include_paths or ():
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"--include-path {value}: no such folder (a folder of lmms-eval task YAML files)")
        paths.append(str(path.resolve()))
    return tuple(paths)


def resolve_tasks(manager, names) -> list[str]:
    """The requested task, group or tag names, checked against the index before any model is loaded."""
    tasks = list(dict.fromkeys(name.strip() for name in names if name and name.strip()))
    if not tasks:
        raise ValueError("--tasks is empty: name at least one lmms-eval task, group or tag")
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, known, n=3)
            hints.append(f"{task} (did you mean {', '.join(close)}?)" if close else task)
        raise ValueError(
            f"unknown task(s): {'; '.join(hints)}. `lmms-eval tasks list` lists lmms-eval's tasks; add a folder of "
            "task YAML files with --include-path"
        )
    return tasks


def runs_of(manager, names: list[str]) -> list[str]:
    """One ``simple_evaluate`` call each: tasks and groups as named (a group aggregates its tasks), tags as the
    tasks or groups they list (a tag only lists them), so that one failing task leaves the others scored."""
    runs = []
    for name in names:
        entry = manager.task_index[name]
        members = (
            runs_of(manager, [m for m in entry["task"] if m in manager.task_index])
            if entry["type"] == "tag"
            else [name]
        )
        runs += [member for member in members if member not in runs]
    return runs


def leaves(manager, name: str) -> list[str]:
    """The tasks a task, group or tag name stands for."""
    from lmms_eval import utils

    entry = manager.task_index[name]
    if entry["type"] in ("task", "python_task"):
        return [name]
    if entry["type"] == "tag":
        members = entry["task"]
    else:
        config = utils.load_yaml_config(entry["yaml_path"], mode="simple")
        members = [t if isinstance(t, str) else t.get("task") for t in config.get("task", [])]
    return [leaf for member in members if member in manager.task_index for leaf in leaves(manager, member)]


def task_config(manager, name: str, mode: str = "simple") -> dict:
    """A task's YAML, its ``include`` resolved (``mode="full"`` also imports its functions)."""
    from lmms_eval import utils

    return utils.load_yaml_config(manager.task_index[name]["yaml_path"], mode=mode)


# ------------------------------------------------------------------------------------------------ the run


def locate_model(model: str) -> tuple[str, Path | None]:
    """(what to load, the local folder or None for a Hub id). An existing path wins over a Hub id of that shape."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{model}: no config.json there; pass a model folder written by `eagle init`, `eagle convert`, "
                "`eagle train`, `eagle quickstart` or `save_pretrained`, or a Hub id"
            )
        return str(path.resolve()), path.resolve()
    if is_hub_id(model):
        return model, None
    raise ValueError(f"{model}: no such folder, and not a Hub id (ORG/NAME)")


def quickstart_data(folder: Path | None) -> list[str] | None:
    """The quickstart's held-out split for a model folder inside an `eagle quickstart` output (OUTPUT/model)."""
    if folder is None:
        return None
    files = sorted((folder.parent / QUICKSTART_HELDOUT).glob("data-*.arrow"))
    return [str(path) for path in files] or None


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def task_spec(manager, name: str, folder: Path | None, has_token: bool) -> str | dict:
    """What to hand ``simple_evaluate`` for ``name``: the name, or a config override (the quickstart's data next to
    the model folder; ``token: True`` dropped when there is no token)."""
    if name == QUICKSTART_TASK:
        files = quickstart_data(folder)
        if files:
            return {"task": name, "dataset_kwargs": {"data_files": {"test": files}}}
        default = task_config(manager, name)["dataset_kwargs"]["data_files"]["test"]
        if not sorted(Path.cwd().glob(default)):
            raise ValueError(
                f"{name} scores the quickstart's held-out split, which was not found: not at "
                f"{(folder.parent if folder else Path('MODEL/..')) / QUICKSTART_HELDOUT} (next to the model folder) "
                f"nor at ./{default}; evaluate the model folder inside an `eagle quickstart` output"
            )
        return name
    if not has_token and manager.task_index[name]["type"] == "task":
        kwargs = task_config(manager, name).get("dataset_kwargs") or {}
        if kwargs.get("token") is True:
            return {"task": name, "dataset_kwargs": {k: v for k, v in kwargs.items() if k != "token"}}
    return name


def load_model(model: str, *, device=None, batch_size: int = 1, dtype: str = "auto", chat: bool = False, **model_args):
    """lmms-eval's ``eagle`` model (the simple class unless ``chat``), loaded once."""
    lmms_eval_ready()
    from .lmms_model import EagleLmms, EagleLmmsChat

    cls = EagleLmmsChat if chat else EagleLmms
    return cls(pretrained=model, device=device, batch_size=batch_size, dtype=dtype, **model_args)


def _cause(error: BaseException) -> BaseException:
    """The real error behind tenacity's RetryError."""
    last = getattr(error, "last_attempt", None)
    if last is not None and last.exception() is not None:
        return last.exception()
    return error


def _cli_args(output: Path, model: str, task: str, limit) -> argparse.Namespace:
    """What lmms-eval's command line would hold; some tasks' aggregations read it (submission files go to
    OUTPUT/submissions, not the working directory)."""
    return argparse.Namespace(
        output_path=str(output),
        model="eagle",
        model_args=f"pretrained={model}",
        tasks=task,
        limit=limit,
        log_samples=True,
        log_samples_suffix="",
        process_with_media=False,  # lmms-eval's default: scoring reads the examples without their images
    )


def _merge(merged: dict, results: dict) -> None:
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better"):
        if key in results:
            merged.setdefault(key, {}).update(results[key])
    merged.setdefault("n-samples", {}).update(results.get("n-samples", {}))
    for key in ("config", "date", "git_hash"):
        merged.setdefault(key, results.get(key))
    # lmms-eval 0.7.3 puts the git branch and commit of the repository around its install here, if any.
    merged["lmms_eval_version"] = _installed_version("lmms-eval")
    seconds = float(results.get("total_evaluation_time_seconds", 0) or 0)
    merged["total_evaluation_time_seconds"] = merged.get("total_evaluation_time_seconds", 0) + seconds


def summarize(results: dict) -> dict:
    """lmms-eval's ``results`` as task -> metric -> value: numbers only (no stderr, no submission records);
    a metric under a filter other than ``none`` keeps it (``metric,filter``)."""
    summary = {}
    for task, metrics in results.get("results", {}).items():
        values = {}
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if key == "alias" or metric.endswith("_stderr") or "_stderr_" in metric:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values[metric if filter_name in ("", "none") else key] = float(value)
        if values:
            summary[task] = values
    return summary


def _write_samples(path: Path, samples: list[dict]) -> None:
    from lmms_eval.utils import handle_non_serializable

    with open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            # lmms-eval's sample: the example without its images (doc), its target, the model's answers
            # (resps, filtered_resps), token counts and scores; "arguments" starts with the prompt text.
            line = {key: value for key, value in sample.items() if key != "arguments"}
            arguments = sample.get("arguments") or [None]
            line["input"] = arguments[0]
            handle.write(json.dumps(line, default=handle_non_serializable, ensure_ascii=False) + "\n")


def card_entries(results: dict, summary: dict, limit=None) -> list[dict]:
    """``eval_results.json`` entries (``hub_cards.model_card``'s format) for the leaf tasks of a run: the task's
    dataset id and split, each metric, the source, and ``verified: false`` (self-reported)."""
    version = _installed_version("lmms-eval") or LMMS_EVAL_VERSION
    entries = []
    for task, metrics in summary.items():
        config = results.get("configs", {}).get(task)
        if config is None:  # a group: its tasks have their own entries
            continue
        benchmark = BY_TASK.get(task)
        pretty, task_type = LOCAL_TASKS.get(task, (task, "image-text-to-text"))
        if benchmark is not None:
            pretty, task_type = benchmark.pretty, benchmark.task_type
        dataset_path = config.get("dataset_path")
        hub = isinstance(dataset_path, str) and dataset_path not in LOCAL_BUILDERS and is_hub_id(dataset_path)
        split = config.get("test_split") or config.get("validation_split") or "test"
        entries.append(
            {
                "task": {"type": task_type, "name": task},
                "dataset": {
                    "name": pretty,
                    "type": dataset_path if hub else task,
                    "config": config.get("dataset_name") if hub else None,
                    "split": f"{split}[:{limit}]" if limit else split,  # a partial run says so
                },
                "metrics": [
                    {"type": metric, "name": metric, "value": round(value, 4)} for metric, value in metrics.items()
                ],
                "source": {"name": f"lmms-eval {version} (eagle eval)", "url": LMMS_EVAL_URL},
                "verified": False,
            }
        )
    return entries


def evaluate(
    model: str,
    tasks,
    output,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str = "auto",
    include_paths=(),
    gen_kwargs: str | None = None,
    chat: bool = False,
    update_card: bool = True,
    model_args: dict | None = None,
    progress=None,
) -> EvalReport:
    """Evaluate ``model`` (a folder or Hub id) on lmms-eval ``tasks`` (names of tasks, groups or tags); see the module
    docstring for what is written. ``progress(message)`` is told what runs (default: stderr)."""
    progress = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: expected a positive number of examples per task")
    where, folder = locate_model(model)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device cuda: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")
    output = Path(output).expanduser()
    if folder is not None and output.resolve() == folder:
        raise ValueError(f"--output {output} is the model folder; choose another folder for the results")
    include = check_include_paths(include_paths)
    evaluator = lmms_eval_ready()
    manager = task_manager(include)
    names = runs_of(manager, resolve_tasks(manager, tasks))
    has_token = _has_token()
    specs = {name: task_spec(manager, name, folder, has_token) for name in names}
    notes = [
        f"{name}: no Hugging Face token, loading its dataset anonymously"
        for name, spec in specs.items()
        if isinstance(spec, dict) and name != QUICKSTART_TASK
    ]

    progress(f"eagle eval: loading {model}")
    started = time.perf_counter()
    lm = load_model(where, device=device, batch_size=batch_size, dtype=dtype, chat=chat, **(model_args or {}))
    progress(f"eagle eval: loaded in {time.perf_counter() - started:.1f} s")
    output.mkdir(parents=True, exist_ok=True)
    merged: dict = {}
    runs: list[TaskRun] = []
    for number, name in enumerate(names, 1):
        progress(f"eagle eval: [{number}/{len(names)}] {name}")
        started = time.perf_counter()
        try:
            results = evaluator.simple_evaluate(
                model=lm,
                tasks=[specs[name]],
                task_manager=manager,
                limit=limit,
                log_samples=True,
                gen_kwargs=gen_kwargs,
                verbosity="WARNING",
                cli_args=_cli_args(output, where, name, limit),
            )
        except Exception as error:  # a task that crashes is a failure of that task; the others still run
            cause = _cause(error)
            message = " ".join(f"{type(cause).__name__}: {cause}".split())
            runs.append(TaskRun(name, time.perf_counter() - started, message[:500], cause))
            progress(f"eagle eval: {name} FAILED: {message[:300]}")
            continue
        for task, samples in (results.pop("samples", None) or {}).items():
            _write_samples(output / f"samples_{task}.jsonl", samples)
        _merge(merged, results)
        runs.append(TaskRun(name, time.perf_counter() - started))
        progress(f"eagle eval: {name} done in {runs[-1].seconds:.1f} s")

    if merged:
        merged["config"] = {**(merged.get("config") or {}), "model": "eagle", "model_args": f"pretrained={where}"}
    failures = {run.task: run.error for run in runs if run.error}
    merged["failed_tasks"] = failures
    from lmms_eval.utils import handle_non_serializable

    (output / "results.json").write_text(json.dumps(merged, indent=2, default=handle_non_serializable) + "\n")
    summary = summarize(merged)
    (output / "eval_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = EvalReport(model=model, output=output, summary=summary, runs=runs, results=merged, notes=notes)
    if lm.dropped_images:
        report.notes.append(
            f"{lm.dropped_images} request(s) had more images than the model's context holds; their last images "
            "were left out"
        )
    entries = card_entries(merged, summary, limit)
    if folder is None and entries:
        report.notes.append(f"{model} is a Hub id: the results are in {output} only (no local card to update)")
    if update_card and folder is not None and entries:
        from eagle_hub.hub_cards.model_card import record_eval_results

        report.card = record_eval_results(folder, entries)
    return report


# ------------------------------------------------------------------------------------------------ dry run


def check(tasks, include_paths=()) -> list[dict]:
    """What each task needs, without loading a model or downloading anything: one row per leaf task with its
    dataset, split, output type, metrics and problems (a YAML or its functions that do not load, local data that is
    missing, a login or API key it needs)."""
    lmms_eval_ready()
    manager = task_manager(check_include_paths(include_paths))
    rows = []
    for name in resolve_tasks(manager, tasks):
        for leaf in leaves(manager, name):
            row = {"requested": name, "task": leaf, "problems": []}
            try:
                config = task_config(manager, leaf, mode="full")  # imports its utils.py: missing packages, keys
            except Exception as error:
                cause = _cause(error)
                row["problems"].append(f"does not load: {type(cause).__name__}: {str(cause).splitlines()[0][:160]}")
                config = task_config(manager, leaf)
            kwargs = config.get("dataset_kwargs") or {}
            row.update(
                dataset=config.get("dataset_path"),
                config=config.get("dataset_name"),
                split=config.get("test_split") or config.get("validation_split"),
                output_type=config.get("output_type"),
                metrics=[m.get("metric") for m in config.get("metric_list", []) if isinstance(m, dict)],
                token=kwargs.get("token") is True,
            )
            if config.get("dataset_path") in LOCAL_BUILDERS:
                missing = _missing_local_files(kwargs.get("data_files"))
                if missing and leaf != QUICKSTART_TASK:
                    row["problems"].append(f"local data not found: {', '.join(missing)}")
            benchmark = BY_TASK.get(leaf)
            if benchmark is not None and benchmark.needs:
                row["problems"].append(f"needs {benchmark.needs}")
            rows.append(row)
    return rows


def _missing_local_files(data_files) -> list[str]:
    if isinstance(data_files, dict):
        return [m for value in data_files.values() for m in _missing_local_files(value)]
    if isinstance(data_files, list):
        return [m for value in data_files for m in _missing_local_files(value)]
    if isinstance(data_files, str) and not sorted(
        Path.cwd().glob(data_files) if not Path(data_files).is_absolute() else Path("/").glob(data_files.lstrip("/"))
    ):
        return [data_files]
    return []


__all__ = ["EvalReport", "EvalSetupError", "TaskRun", "card_entries", "check", "evaluate", "summarize"]
