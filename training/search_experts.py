"""``eagle search-experts``: the paper's round-robin search for the expert set, on your recipe, data and budget.

Start from a set (CLIP in the paper); in each round try adding every remaining candidate, keep the one that raises
the average validation score most, stop when no candidate raises it by more than a threshold (or after ``rounds``).
Every trial trains the recipe's stages with one expert set (``model.overrides.experts``, so the recipe's model must
be a preset whose table has every candidate) and scores the last stage's folder with the quickstart's
:func:`~eagle_hub.training.quickstart.evaluate` (greedy exact match per question type; the average is the mean over
types) twice: on the recipe's ``validation`` split, carved from the training data, which the search chooses on
(:func:`choose`), and on its ``eval`` (held-out) split, which it only reports. Choosing and reporting on the same
split would make the reported score of the chosen set an optimistic one.

Each trial is its own process (``python -m eagle_hub.training.search_experts TRIAL_DIR``, or under ``launcher``,
e.g. ``accelerate launch``): memory stays bounded, ``jobs`` trials run side by side, and a trial writes
``TRIAL_DIR/result.json`` atomically when it ends. A rerun of the search on the same output reads the finished
trials instead of training them again; a trial killed mid-run continues from its last complete stage.

Output folder::

    search.json                 every trial (set, per-type validation and held-out scores and question counts,
                                averages, wall time, parameters, tokens per image), the chosen path and why the
                                search stopped
    search.md                   the table in the paper's format, round by round
    search.png                  average score against round, one point per trial, the chosen path highlighted
    trials/<clip+sam>/          trial.json (what to run), trial.log, run/ (the recipe runner's stage folders),
                                result.json
"""

import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from .quickstart import Budget, make_data, quickstart_recipe, write_recipe
from .recipe import RecipeError, load_recipe

# A trial's wall time counts from its process's start (these imports are light), the training stack's imports included.
PROCESS_STARTED = time.perf_counter()

CANDIDATES = ("clip", "convnext", "sam", "dinov2", "pix2struct", "eva02")
LABELS = {
    "clip": "CLIP",
    "convnext": "ConvNeXt",
    "sam": "SAM",
    "dinov2": "DINOv2",
    "pix2struct": "Pix2Struct",
    "eva02": "EVA-02",
}
RESULT = "result.json"

# `eagle search-experts --quickstart`: the quickstart's data and recipe at a budget whose whole search (16 trials at
# most: the start, then 5 + 4 + 3 + 2 + 1 candidates) ends within an hour on 2 CPU cores (README, "Expert search").
SEARCH_BUDGET = Budget(n_images=2000, prealign_steps=10, align_steps=20, word_steps=0, sft_steps=500)
# The validation split it chooses on: a tenth of the images (200 of 2000), carved from the training images (1800 ->
# 1600), beside the held-out tenth it reports on (training.synth's ``validation``).
SEARCH_VALIDATION = 0.1


def label(experts) -> str:
    return " + ".join(LABELS.get(name, name) for name in experts)


def trial_name(experts) -> str:
    return "+".join(experts)


def write_json_atomically(path: Path, data) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader sees the old file or the whole new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


def fingerprint(recipe_path: Path, data_root: str | None) -> str:
    """What a trial's result depends on besides its expert set: the recipe's text and the data folder."""
    digest = hashlib.sha256(Path(recipe_path).read_bytes())
    digest.update(b"\0" + str(data_root or "").encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# One trial (runs in its own process)
# ----------------------------------------------------------------------------------------------------------------


def held_out_rows(dataset) -> list[dict]:
    """Rows for :func:`evaluate`: ``messages``, ``images``, ``type`` (``"all"`` when the data has none) and
    ``answer`` (the data's column, else the first assistant turn's text)."""
    rows = []
    for row in dataset:
        answer = row.get("answer")
        if not answer:
            reply = next((m for m in row["messages"] if m["role"] == "assistant"), None)
            if reply is None:
                raise RecipeError(f"eval: row {row.get('id', len(rows))!r} has no answer and no assistant turn")
            answer = " ".join(block["text"] for block in reply["content"] if block.get("type") == "text")
        rows.append({**row, "type": row.get("type") or "all", "answer": answer})
    return rows


def scored(accuracy: dict) -> dict:
    """``evaluate``'s per-type accuracies as a trial records them: ``scores``, ``questions`` and ``average``."""
    scores = {kind: entry["accuracy"] for kind, entry in accuracy.items()}
    questions = {kind: entry["n"] for kind, entry in accuracy.items()}
    return {"scores": scores, "questions": questions, "average": sum(scores.values()) / len(scores)}


def count_parameters(folder: Path) -> dict:
    """Parameters of a saved folder from its safetensors headers (nothing loaded): total, vision, per expert."""
    from safetensors import safe_open

    from eagle_hub.modeling_eagle.parts import part_of

    total, experts = 0, {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as weights:
            for key in weights.keys():
                count = 1
                for size in weights.get_slice(key).get_shape():
                    count *= size
                total += count
                part = part_of(key)
                if part.startswith("expert:"):
                    experts[part[len("expert:") :]] = experts.get(part[len("expert:") :], 0) + count
    return {"total": total, "vision": sum(experts.values()), "experts": experts}


def run_trial(trial_dir, started: float | None = None) -> dict | None:
    """Train and score the trial described by ``trial_dir/trial.json``; writes and returns its result (None in the
    non-main processes of a multi-process launch, which only train). ``started`` (a ``time.perf_counter()``) is
    when the wall time starts: the trial process's start, so that importing the training stack counts."""
    from eagle_hub.training.quickstart import evaluate

    from .data import load_data
    from .runner import is_main_process, run_recipe

    trial_dir = Path(trial_dir)
    spec = json.loads((trial_dir / "trial.json").read_text())
    started = time.perf_counter() if started is None else started
    recipe = load_recipe(spec["recipe"])
    if spec.get("data_root"):
        recipe.data_root = spec["data_root"]
    recipe.model = {**recipe.model, "overrides": {**recipe.model.get("overrides", {}), "experts": spec["experts"]}}
    run_recipe(recipe, trial_dir / "run", resume=True)
    trained_seconds = time.perf_counter() - started
    if not is_main_process():
        return None
    folder = trial_dir / "run" / recipe.stages[-1].name
    held_out = scored(evaluate(folder, held_out_rows(load_data(asdict(recipe.eval), recipe.data_dir))))
    validation = scored(evaluate(folder, held_out_rows(load_data(asdict(recipe.validation), recipe.data_dir))))
    config = json.loads((folder / "config.json").read_text())
    result = {
        "experts": spec["experts"],
        **held_out,
        **{f"validation_{key}": value for key, value in validation.items()},
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": trained_seconds,
        "parameters": count_parameters(folder),
        "tokens_per_image": config["vision_config"]["grid_size"] ** 2,
        "fingerprint": spec["fingerprint"],
    }
    write_json_atomically(trial_dir / RESULT, result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------------


def _names(value, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",")) if isinstance(value, str) else tuple(value)
    if not names or not all(names):
        raise ValueError(f"{what} is empty; give expert names, e.g. clip,convnext")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{what} names {duplicated} more than once")
    return names


def check_search(recipe_path: Path, candidates, start) -> None:
    """The recipe must build its model from a preset that has every expert named, and say what to evaluate on."""
    from eagle_hub.modeling_eagle.presets import PRESETS

    recipe = load_recipe(recipe_path)
    preset = recipe.model.get("preset")
    if preset is None:
        raise RecipeError(
            f"{recipe_path}: model: the search builds each expert set from a preset ({{preset: NAME}}); "
            f"a model folder ({recipe.model}) has its experts fixed"
        )
    if recipe.eval is None:
        raise RecipeError(
            f"{recipe_path}: eval: missing; add the held-out split each trial is reported on, e.g. "
            "`eval: {format: hf, path: hf/sft_heldout}` (rows with images, messages, and optionally type and answer)"
        )
    table = PRESETS[preset]["table"] if preset in PRESETS else {}
    unknown = [name for name in (*start, *candidates) if name not in table]
    if unknown:
        raise ValueError(f"{preset} has no expert(s) {unknown}; its table has {', '.join(table)}")
    if recipe.validation is None:
        raise RecipeError(
            f"{recipe_path}: validation: missing; add the split the search chooses on, carved from the training "
            "data and disjoint from eval, e.g. `validation: {format: hf, path: hf/sft_validation}` "
            "(`eagle data synth --validation 0.1` writes one)"
        )
    if asdict(recipe.validation) == asdict(recipe.eval):
        raise RecipeError(f"{recipe_path}: validation: is the eval split; the search must choose on another split")


def _end_with_parent() -> None:
    """In a trial's process (Linux): get SIGTERM when the search process dies, even by SIGKILL."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def averages(result: dict) -> str:
    return f"validation average {result['validation_average']:.1%}, held-out {result['average']:.1%}"


def choose(current: dict, entries: list[dict]) -> tuple[dict, float]:
    """The round's best trial by **validation** average (ties: the earlier candidate) and its gain over ``current``
    in points; the held-out scores play no part in the choice."""
    best = max(entries, key=lambda entry: entry["validation_average"])
    return best, (best["validation_average"] - current["validation_average"]) * 100


def point_per_question(questions: dict) -> dict:
    """Per question type, the points one question moves its score: 100 / n."""
    return {kind: 100 / n for kind, n in sorted(questions.items())}


class TrialFailed(RuntimeError):
    """A trial's process ended without a result; the message ends with the end of its log."""

    def __init__(self, name: str, code: int, log_path: Path):
        self.summary = f"trial {name} failed (exit status {code})"
        self.log_path = log_path
        self.log_tail = log_path.read_text()[-3000:] if log_path.is_file() else ""
        super().__init__(f"{self.summary}; its log ({log_path}) ends:\n{self.log_tail}")


class TrialRunner:
    """Runs trials as processes, ``jobs`` at a time; a trial with a matching result file is read, not rerun."""

    def __init__(self, output: Path, recipe_path: Path, data_root, jobs: int, launcher, log):
        self.output, self.recipe_path, self.data_root = output, recipe_path, data_root
        self.jobs, self.log = jobs, log
        self.launcher = shlex.split(launcher) if isinstance(launcher, str) else list(launcher or [sys.executable])
        self.fingerprint = fingerprint(recipe_path, data_root)

    def directory(self, experts) -> Path:
        return self.output / "trials" / trial_name(experts)

    def finished(self, experts) -> dict | None:
        path = self.directory(experts) / RESULT
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("fingerprint") != self.fingerprint:
            raise FileExistsError(
                f"{path} was trained with another recipe or data root; give this search another --output"
            )
        return result

    def command(self, experts) -> list[str]:
        return [*self.launcher, "-m", "eagle_hub.training.search_experts", str(self.directory(experts))]

    def start(self, experts, env) -> tuple[subprocess.Popen, object]:
        directory = self.directory(experts)
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "experts": list(experts),
            "recipe": str(self.recipe_path),
            "data_root": self.data_root,
            "fingerprint": self.fingerprint,
        }
        write_json_atomically(directory / "trial.json", spec)
        log_file = open(directory / "trial.log", "a")  # noqa: SIM115 (closed when the process ends)
        log_file.write(f"== trial {trial_name(experts)} started {time.strftime('%Y-%m-%d %H:%M:%S')} ==\n")
        log_file.flush()
        process = subprocess.Popen(
            self.command(experts),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.output,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None,
        )
        self.log(f"  {label(experts):<40} training (log: {directory / 'trial.log'})")
        return process, log_file

    def run(self, sets: list[tuple[str, ...]]) -> dict[tuple[str, ...], dict]:
        results = {experts: self.finished(experts) for experts in sets}
        for experts, result in results.items():
            if result is not None:
                self.log(f"  {label(experts):<40} finished earlier: {averages(result)}")
        todo = [experts for experts in sets if results[experts] is None]
        env = dict(os.environ)
        parallel = min(self.jobs, len(todo))
        if parallel > 1 and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
        running, failed = {}, []
        try:
            while (todo and not failed) or running:
                while todo and len(running) < self.jobs and not failed:
                    experts = todo.pop(0)
                    running[experts] = self.start(experts, env)
                time.sleep(0.5)
                for experts, (process, log_file) in list(running.items()):
                    if process.poll() is None:
                        continue
                    log_file.close()
                    del running[experts]
                    result = self.finished(experts) if process.returncode == 0 else None
                    if result is None:
                        failed.append((experts, process.returncode))
                        continue
                    results[experts] = result
                    minutes = result["wall_seconds"] / 60
                    self.log(f"  {label(experts):<40} {averages(result)} ({minutes:.1f} min)")
        finally:
            # Interrupted (Ctrl-C, an error here): the trials still training stop too, so a rerun never trains
            # a trial while an orphan of this run writes into the same folder.
            for process, log_file in running.values():
                process.terminate()
                process.wait()
                log_file.close()
        if failed:
            experts, code = failed[0]
            raise TrialFailed(trial_name(experts), code, self.directory(experts) / "trial.log")
        return results


def search_experts(
    recipe,
    output,
    candidates=CANDIDATES,
    start=("clip",),
    rounds: int | None = None,
    jobs: int = 1,
    threshold: float = 0.0,
    data_root=None,
    launcher=None,
    log=print,
) -> dict:
    """Run the round-robin search of ``candidates`` from ``start`` with ``recipe`` into ``output``; returns the
    record written to ``output/search.json``.

    ``threshold`` is in points of average accuracy (0.5: a candidate must raise the average by more than half a
    point to be kept). ``data_root`` overrides the recipe's, as ``eagle train --data-root``. ``launcher`` runs each
    trial (default this Python; e.g. ``"accelerate launch --config_file fsdp.yaml"``). A rerun into the same
    ``output`` resumes: finished trials are read from their result files.
    """
    candidates, start = _names(candidates, "candidates"), _names(start, "start")
    if rounds is not None and (not isinstance(rounds, int) or rounds < 1):
        raise ValueError(f"rounds (--rounds) is {rounds!r}; it must be an integer >= 1")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs (--jobs) is {jobs!r}; it must be an integer >= 1")
    if threshold < 0:
        raise ValueError(f"threshold (--threshold) is {threshold!r}; it must be >= 0 (points of average accuracy)")
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError("the search draws its plot with matplotlib: pip install 'eagle-hub[search]'")
    recipe_path = Path(recipe).expanduser().resolve()
    data_root = str(Path(data_root).expanduser().resolve()) if data_root else None
    check_search(recipe_path, candidates, start)
    output = Path(output).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    runner = TrialRunner(output, recipe_path, data_root, jobs, launcher, log)
    started = time.perf_counter()

    settings = {
        "recipe": str(recipe_path),
        "data_root": data_root,
        "candidates": list(candidates),
        "start": list(start),
        "rounds": rounds,
        "threshold_points": threshold,
        "jobs": jobs,
        "chosen_on": "validation",
        "reported_on": "eval (held-out)",
    }
    trials, path = [], []

    def record(stopped: str | None) -> dict:
        search = {
            "settings": settings,
            "trials": trials,
            "path": [list(experts) for experts in path],
            "stopped": stopped,
            # This run of the command (a resumed search reads earlier trials), and every trial's own wall time.
            "wall_seconds": time.perf_counter() - started,
            "trials_wall_seconds": sum(trial["wall_seconds"] for trial in trials),
        }
        write_json_atomically(output / "search.json", search)
        (output / "search.md").write_text(format_table(search))
        plot_search(search, output / "search.png")
        return search

    def add(round_index: int, experts, result: dict, added: str | None) -> dict:
        entry = {"round": round_index, "experts": list(experts), "added": added, "chosen": False}
        entry.update({key: value for key, value in result.items() if key != "fingerprint"})
        trials.append(entry)
        return entry

    log(f"round 0: {label(start)}")
    current = add(0, start, runner.run([start])[start], None)
    current["chosen"] = True
    path.append(start)
    record(None)
    stopped, round_index = None, 0
    while stopped is None:
        remaining = [name for name in candidates if name not in current["experts"]]
        if not remaining:
            stopped = "every candidate is in the set"
            break
        if rounds is not None and round_index >= rounds:
            stopped = f"--rounds {rounds} reached"
            break
        round_index += 1
        sets = [(*current["experts"], name) for name in remaining]
        names = ", ".join(LABELS.get(name, name) for name in remaining)
        log(f"round {round_index}: {label(current['experts'])} + one of {names}")
        results = runner.run(sets)
        entries = [add(round_index, experts, results[experts], experts[-1]) for experts in sets]
        best, gain = choose(current, entries)
        if gain > threshold:
            best["chosen"] = True
            current = best
            path.append(tuple(best["experts"]))
            log(f"round {round_index}: keep {LABELS.get(best['added'], best['added'])} (+{gain:.1f} points)")
            record(None)
        else:
            stopped = (
                f"round {round_index}: no candidate raised the validation average by more than {threshold:g} points "
                f"(best: {LABELS.get(best['added'], best['added'])}, {gain:+.1f})"
            )
    log(f"stopped: {stopped}")
    return record(stopped)


def quickstart_search(
    output="expert-search",
    seed: int = 0,
    budget: Budget | None = None,
    scene: str = "uniform",
    **search,
) -> dict:
    """The search on the quickstart's data and recipe (``eagle-x5-small`` widths, every candidate) at
    :data:`SEARCH_BUDGET`, choosing on a validation split of :data:`SEARCH_VALIDATION` of the images carved from the
    training images and reporting on the held-out split: data in ``output/data``, the recipe in
    ``output/recipe.yaml``. A rerun resumes."""
    budget = budget or SEARCH_BUDGET
    output = Path(output)
    recipe = quickstart_recipe("data", seed, budget, validation=True)
    recipe_path = output / "recipe.yaml"
    if recipe_path.is_file() and yaml.safe_load(recipe_path.read_text()) != recipe:
        raise FileExistsError(f"{output} holds a search with another seed or budget; choose another --output")
    data = output / "data"
    manifest = data / "manifest.json"
    wanted = {"seed": seed, "n_images": budget.n_images, "scene": scene, "validation": SEARCH_VALIDATION}
    made = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if {key: made.get(key) for key in wanted} != wanted:
        make_data(data, budget.n_images, seed, scene, overwrite=True, validation=SEARCH_VALIDATION)
    write_recipe(recipe_path, recipe)
    return search_experts(recipe_path, output, **search)


# ----------------------------------------------------------------------------------------------------------------
# Table and plot
# ----------------------------------------------------------------------------------------------------------------


def format_table(search: dict) -> str:
    """The trials round by round as in the paper's table (chosen sets in bold; per-type scores held-out), then the
    path, the stop and how many points one question is. A search that chose on a validation split has its average
    in a column before the held-out one (a record from before validation splits has neither)."""
    trials = search["trials"]
    kinds = sorted({kind for trial in trials for kind in trial["scores"]})
    validated = all("validation_average" in trial for trial in trials)
    averages = ["Validation average", "Held-out average"] if validated else ["Average"]
    header = ["Round", "Experts", *kinds, *averages, "Params (M)", "Tokens / image", "Wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in trials:
        name = label(trial["experts"])
        cells = [
            str(trial["round"]),
            f"**{name}**" if trial["chosen"] else name,
            *(f"{trial['scores'][kind]:.1%}" if kind in trial["scores"] else "—" for kind in kinds),
            *(
                [f"**{trial['validation_average']:.1%}**" if trial["chosen"] else f"{trial['validation_average']:.1%}"]
                if validated
                else []
            ),
            f"**{trial['average']:.1%}**" if trial["chosen"] and not validated else f"{trial['average']:.1%}",
            f"{trial['parameters']['total'] / 1e6:.2f}",
            str(trial["tokens_per_image"]),
            f"{trial['wall_seconds'] / 60:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    steps = [label(search["path"][0])] + [f"+ {LABELS.get(e[-1], e[-1])}" for e in search["path"][1:]]
    lines.append("")
    lines.append(f"Chosen path: {' → '.join(steps)}. Stopped: {search['stopped'] or 'still running'}.")
    minutes = search.get("trials_wall_seconds", 0) / 60
    lines.append(f"{len(trials)} trials, {minutes:.1f} min of trial wall time in all.")
    lines.append(margins(trials[0]))
    return "\n".join(lines) + "\n"


def margins(trial: dict) -> str:
    """What one question is worth, per type: 100/n points of that type's score (and 100/n/types of the average)."""

    def per_type(questions: dict) -> str:
        return ", ".join(
            f"{kind} {n} ({points:.1f})"
            for (kind, n), points in zip(sorted(questions.items()), point_per_question(questions).values())
        )

    line = "One question is 100/n points of its type's score; held-out questions (points each): "
    line += per_type(trial["questions"])
    if "validation_questions" in trial:
        line += f"; validation: {per_type(trial['validation_questions'])}"
    return line + "."


def plot_search(search: dict, path: Path) -> None:
    """Average score against round: every trial a grey point named by the expert it added, the chosen path in
    colour. Drawn with matplotlib's Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    trials = search["trials"]
    axes.scatter(
        [t["round"] for t in trials], [100 * t["average"] for t in trials], color="0.6", zorder=2, label="trial"
    )
    placed: dict[tuple[int, int], int] = {}  # labels of trials with (about) the same score stack upwards
    for trial in trials:
        if trial["added"]:
            spot = (trial["round"], round(100 * trial["average"]))
            placed[spot] = placed.get(spot, -1) + 1
            axes.annotate(
                LABELS.get(trial["added"], trial["added"]),
                (trial["round"], 100 * trial["average"]),
                textcoords="offset points",
                xytext=(6, -3 + 8 * placed[spot]),
                fontsize=7,
                color="0.35",
            )
    chosen = [t for t in trials if t["chosen"]]
    axes.plot(
        [t["round"] for t in chosen],
        [100 * t["average"] for t in chosen],
        color="tab:red",
        marker="o",
        markersize=8,
        linewidth=2,
        zorder=3,
        label="chosen: " + label(chosen[-1]["experts"]),
    )
    rounds = sorted({t["round"] for t in trials})
    axes.set_xticks(rounds)
    axes.set_xlim(min(rounds) - 0.4, max(rounds) + 0.9)
    axes.set_xlabel("round")
    axes.set_ylabel("average held-out exact match (%)")
    axes.set_title("Round-robin expert search", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    from eagle_hub.training import quiet_bitsandbytes_cpu_warning

    quiet_bitsandbytes_cpu_warning()
    run_trial(sys.argv[1], started=PROCESS_STARTED)
