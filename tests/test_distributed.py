"""Distributed engines: every shipped accelerate config is run or refused honestly (a run asked for FSDP or DeepSpeed
that would train as DDP or alone refuses), and transformers' native DistributedConfig shards an Eagle folder."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import run_process_group
from safetensors.torch import load_file

from eagle_hub.training.engine import EngineError, check_before_start, check_engine, requested_engine

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "accelerate"
# Each shipped config, the engine it asks for, and the accelerator type that runs it (on GPUs for the sharded ones).
SHIPPED = {
    "cpu-2proc.yaml": (None, "MULTI_CPU"),
    "fsdp.yaml": ("FSDP", "FSDP"),
    "deepspeed-zero2.yaml": ("DEEPSPEED-2", "DEEPSPEED"),
    "deepspeed-zero3.yaml": ("DEEPSPEED-3", "DEEPSPEED"),
}
# The CPU form of a config: two processes, fp32 (the GPU configs ask for 8 and bf16).
CPU_FORM = ["--num_processes", "2", "--mixed_precision", "no"]


def launch_environment(config: Path) -> dict[str, str]:
    """The environment ``accelerate launch --config_file config`` gives the processes it starts, from accelerate's
    own parsing of the file (what the runner reads)."""
    args = launch_command_parser().parse_args(["--config_file", str(config), *CPU_FORM, "-m", "eagle_hub.cli"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {**env, "WORLD_SIZE": str(args.num_processes)}


def test_every_shipped_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_is_refused_where_it_would_not_shard_and_accepted_where_it_runs(name):
    engine, runs_as = SHIPPED[name]
    env = launch_environment(CONFIGS / name)
    assert requested_engine(env) == engine
    if engine is None:  # plain DDP: runs on CPU, as the two-process test in test_training.py does
        check_before_start(cuda_available=False, env=env)
        check_engine("MULTI_CPU", 2, env=env)
        return
    # On this CPU: refused before anything loads, naming the config and what to do instead.
    with pytest.raises(EngineError) as refused:
        check_before_start(cuda_available=False, env=env)
    message = str(refused.value)
    assert "\n" not in message and f"training/accelerate/{name}" in message and "cpu-2proc.yaml" in message
    # On GPUs: accepted when the trainer's accelerator runs the engine, refused when it fell back anyway.
    check_before_start(cuda_available=True, env=env)
    check_engine(runs_as, 2, env=env)
    for fallback in ("MULTI_GPU", "MULTI_CPU", "NO"):
        with pytest.raises(EngineError, match=f"would run {fallback} with"):
            check_engine(fallback, 2 if fallback != "NO" else 1, env=env)


def test_launched_processes_that_would_each_train_alone_are_refused():
    with pytest.raises(EngineError, match="2 processes were launched, but the trainer would run NO with 1 process"):
        check_engine("NO", 1, env={"WORLD_SIZE": "2"})
    check_engine("NO", 1, env={})


def test_fsdp_config_launched_on_cpu_refuses_in_one_line(tmp_path):
    recipe = ROOT / "training" / "recipes" / "tiny.yaml"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"), *CPU_FORM,
        "-m", "eagle_hub.cli", "train", str(recipe), "--output", str(tmp_path / "run"), "--data-root", str(tmp_path),
    ]  # fmt: skip
    out = run_process_group(command, timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    refusal = "eagle train: error: the accelerate config asks for"
    refusals = [line for line in out.stderr.splitlines() if line.startswith(refusal)]
    # Both processes got the FSDP request (the launch worked) and each refused before loading anything.
    assert len(refusals) == 2, out.stderr[-3000:]
    assert "FSDP (as training/accelerate/fsdp.yaml sets)" in refusals[0] and "plain DDP" in refusals[0]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def eagle_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("native") / "eagle-x5-tiny"
    command = [sys.executable, "-m", "eagle_hub.cli", "init", "--preset", "eagle-x5-tiny", "--output", str(folder)]
    out = run_process_group(command, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder


NATIVE = ROOT / "tests" / "native_distributed.py"
NATIVE_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def native(mode: str, folder: Path, out: Path, processes: int = 1) -> list[dict]:
    """Run tests/native_distributed.py (under torchrun when ``processes`` > 1); what each rank recorded."""
    python = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run"]
    launcher = [] if processes == 1 else ["--standalone", "--nproc_per_node", str(processes)]
    command = [*python, *launcher, str(NATIVE), mode, str(folder), str(out)]
    result = run_process_group(command, timeout=300, env=NATIVE_ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    names = ["single.json"] if processes == 1 else [f"rank{r}.json" for r in range(processes)]
    return [json.loads((out / name).read_text()) for name in names]


def test_native_fsdp_shards_an_eagle_folder_and_steps_as_one_process(eagle_folder, tmp_path):
    (single,) = native("single-train", eagle_folder, tmp_path / "single")
    rank0, rank1 = native("fsdp", eagle_folder, tmp_path / "fsdp", processes=2)
    # Two ranks of one job, each holding half the parameters and training on its own half of the global batch.
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and rank0["world_size"] == rank1["world_size"] == 2
    for rank in (rank0, rank1):
        assert rank["share"] == pytest.approx(0.5, abs=0.01), rank
    assert not set(rank0["samples"]) & set(rank1["samples"])
    assert sorted(rank0["samples"] + rank1["samples"]) == single["samples"]
    for rank in (rank0, rank1):
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5)
    before = load_file(eagle_folder / "model.safetensors")
    one = load_file(tmp_path / "single" / "weights.safetensors")
    two = load_file(tmp_path / "fsdp" / "weights.safetensors")
    assert one.keys() == two.keys() and sum(not torch.equal(one[k], before[k]) for k in one) > len(one) // 2
    for key in one:
        # atol: CLIP's key biases get a gradient of exactly zero up to rounding (a constant added to every score of
        # a softmax row) and stay near 1e-14, where a relative comparison only compares rounding noise.
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-8, msg=key)


def test_native_tensor_parallel_generates_one_process_greedy_tokens(eagle_folder, tmp_path):
    (single,) = native("single-generate", eagle_folder, tmp_path / "single")
    rank0, rank1 = native("tp", eagle_folder, tmp_path / "tp", processes=2)
    assert (rank0["rank"], rank1["rank"]) == (0, 1) and rank0["world_size"] == rank1["world_size"] == 2
    # The LLM's projections are split between the ranks (the vision experts stay whole, so not half of everything).
    assert rank0["share"] < 0.9 and rank1["share"] < 0.9
    assert len(single["tokens"]) == 8
    assert rank0["tokens"] == rank1["tokens"] == single["tokens"]
