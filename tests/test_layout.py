"""The package's shape: imports point one way with no cycles, `eagle --help` imports nothing heavy, and the installed
names cannot be shadowed by (or shadow) a user's own `training.py` or `processing/`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import installed_folders

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a module may import from its own layer and the layers below it, never above. Within a layer, the
# longest matching prefix decides (the quickstart sits above the rest of training, which it drives).
LAYERS = (
    ("processing", ("eagle_hub.processing",)),
    ("model", ("eagle_hub.modeling_eagle",)),
    ("hub cards", ("eagle_hub.hub_cards",)),
    ("training", ("eagle_hub.training",)),
    (
        "jobs",
        (
            "eagle_hub.training.quickstart",
            "eagle_hub.training.search_experts",
            "eagle_hub.benchmarks",
            "eagle_hub.evaluation",
            "eagle_hub.serving",
        ),
    ),
    ("cli", ("eagle_hub.cli",)),
)
HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "safetensors")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in installed_folders().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if "space" in parts:  # the Space app runs on its own (it is checked in test_space.py)
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix that names ``module`` or a package holding it."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS"
    return best[1]


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {target for target in targets if target in known}


def test_imports_point_down_the_layers_and_have_no_cycles():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    upward = [
        f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for name, targets in graph.items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))

    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_layer_check_catches_an_upward_import():
    """The check itself: training importing the CLI, or the model importing training, is caught."""
    assert layer("eagle_hub.cli.train") > layer("eagle_hub.training.runner") > layer("eagle_hub.hub_cards.push")
    assert layer("eagle_hub.training.quickstart") > layer("eagle_hub.training.runner")
    assert layer("eagle_hub.modeling_eagle.hub_folder") > layer("eagle_hub.processing.locations")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom eagle_hub.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for command in ('init', 'train', 'quickstart', 'search-experts', 'bench'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture()
def user_project(tmp_path):
    """A user's project whose own `training.py` and `processing/` would break anything that imported them."""
    (tmp_path / "training.py").write_text("raise SystemExit('the user project training.py was imported')\n")
    (tmp_path / "processing").mkdir()
    (tmp_path / "processing" / "__init__.py").write_text(
        "raise SystemExit('the user project processing/ was imported')\n"
    )
    return tmp_path


def test_a_user_project_with_its_own_training_and_processing_runs_every_command(user_project):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}

    def run(*args):
        # `python -m` puts the working directory first on sys.path: the user's modules shadow ours if ours are
        # imported by the bare names.
        out = subprocess.run(
            [sys.executable, "-m", "eagle_hub.cli", *args],
            cwd=user_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    from eagle_hub.cli import COMMANDS

    # A module's name with dashes is its command's (cli/search_experts.py: `eagle search-experts`).
    names = {command.__name__.rsplit(".", 1)[1].replace("_", "-") for command in COMMANDS}
    for name in sorted(names):
        run(name, "--help")
    run("init", "--preset", "eagle-x5-tiny", "--output", "tiny")
    assert (user_project / "tiny" / "model.safetensors").is_file()
    code = (
        "import eagle_hub.modeling_eagle, eagle_hub.training.runner, eagle_hub.hub_cards.push, eagle_hub.processing\n"
        "print('ours imported')\n"
        "import training  # the user's own, imported on purpose: it is still theirs\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=user_project, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ours imported", out.stderr[-2000:]
    assert "the user project training.py was imported" in out.stderr
