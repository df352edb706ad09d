"""The newcomer's path, as the README writes it: its commands run exactly as written, from the folder a user is in.

They read the README (they do not copy its lines), so when the README changes they follow it. Everything runs in
a copy of the repository (what a fresh clone holds), with relative paths, as a user types them.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# A budget the quickstart runs in seconds: the pipeline end to end, not its accuracy (`pytest -m slow` runs that).
TINY_QUICKSTART = ["--n-images", "48", "--prealign-steps", "1", "--align-steps", "1", "--word-steps", "1"]
TINY_QUICKSTART += ["--sft-steps", "2"]


def readme_commands() -> list[str]:
    """Every command line of the README's shell blocks, continuation lines joined, in order."""
    text = README.read_text()
    lines = []
    for block in text.split("```bash\n")[1:]:
        joined = block.split("```", 1)[0].replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return lines


def fresh_clone(destination: Path) -> Path:
    """The repository's tracked and not-ignored files, as a clone holds them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    return destination


def layered_venv(folder: Path) -> Path:
    """A virtual environment that sees this one's packages (so set-up installs nothing but the package itself):
    scripts/setup.sh then runs in it exactly as on a fresh machine, and the editable install it makes points at the
    copy, not at this checkout."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    site = next((folder / "lib").glob("python3*/site-packages"))
    base = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "base.pth").write_text(base + "\n")
    return folder


def environment(venv: Path | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    bin_dir = Path(venv or sys.prefix) / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if venv is not None:
        env["EAGLE_VENV"] = str(venv)
    return env


def run(command: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{shlex.join(command)} (in {cwd}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_readme_opens_with_the_two_set_up_commands():
    first = readme_commands()[:2]
    assert [shlex.split(line, comments=True) for line in first] == [
        ["bash", "scripts/quickstart.sh"],
        ["bash", "scripts/test.sh"],
    ]


def test_the_readme_quickstart_runs_from_a_fresh_clone_with_relative_paths(tmp_path):
    clone = fresh_clone(tmp_path / "eagle")
    venv = layered_venv(tmp_path / "venv")
    env = environment(venv)
    command = shlex.split(readme_commands()[0], comments=True)
    out = run([*command, *TINY_QUICKSTART], cwd=clone, env=env)
    assert "held-out exact match:" in out.stdout and "blind baseline:" in out.stdout
    model = clone / "eagle-quickstart" / "model"  # the default --output, relative to the clone's root
    assert (model / "model.safetensors").is_file() and (model / "eval_results.json").is_file()
    assert out.stdout.count("(expected ") == 5  # the fresh process answered the five samples

    # The recipe the quickstart wrote runs again with `eagle train`, from another working directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = os.path.relpath(clone / "eagle-quickstart" / "recipe.yaml", elsewhere)
    run(["eagle", "train", recipe, "--output", "rerun"], cwd=elsewhere, env=env)
    assert (elsewhere / "rerun" / "stage3-sft" / "model.safetensors").is_file()


def quick_enough(args: list[str]) -> bool:
    """Whether a README `eagle` line runs on tiny inputs in seconds; the others are checked with `--help`."""
    if args in (["--help"], []):
        return True
    if args[0] == "push":
        return "--dry-run" in args
    return args[0] in ("init", "generate", "data", "train", "convert")


def test_every_eagle_line_of_the_readme_runs_as_written(tmp_path):
    import nveagle_checkpoints as nc

    clone = fresh_clone(tmp_path / "eagle")
    env = environment()
    lines = [line for line in readme_commands() if line.startswith("eagle")]
    assert len(lines) >= 8
    ran = []
    for line in lines:
        args = shlex.split(line, comments=True)[1:]
        if not quick_enough(args):
            run(["eagle", args[0], "--help"], cwd=clone, env=env)
            continue
        # What a user would have at hand: their own image, the released checkpoint they downloaded.
        for index, value in enumerate(args[:-1]):
            if value == "--image" and not (clone / args[index + 1]).exists():
                make_image().save(clone / args[index + 1])
        if args[0] == "convert" and not (clone / args[1]).exists():
            (clone / args[1]).mkdir(parents=True)
            # Llama-3's tokenizer is built here; Vicuna's comes from ../shared, which a user's clone may lack.
            nc.write_checkpoint(clone / args[1], llm="llama3")
        run(["eagle", *args], cwd=clone, env=env)
        ran.append(args[0])
    assert {"init", "generate", "train", "convert"} <= set(ran), ran
