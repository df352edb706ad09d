"""One SGD step or one greedy generation of an Eagle folder loaded with transformers' native DistributedConfig (a
test harness for tests/test_distributed.py). Under ``torchrun --nproc_per_node N`` each rank writes what it saw;
run plainly, it is the single-process reference.

Usage: python native_distributed.py {fsdp,tp,single-train,single-generate} FOLDER OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import eagle_hub.modeling_eagle  # noqa: F401  (registers the Auto classes)
from eagle_hub.training.collator import make_collator

mode, folder, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
GLOBAL_BATCH, LR = 4, 0.5
ANSWERS = ["red.", "A blue square on noise.", "Green, I think, and quite large.", "yellow"]


def image(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 255, (40, 48, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def example(index: int) -> dict:
    """Samples of different answer lengths, so that a per-rank mean would differ from the global per-token one."""
    return {
        "images": [image(index)],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[index]}]},
        ],
    }


def load(config=None):
    kwargs = {"distributed_config": config} if config is not None else {}
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, **kwargs)


def parameter_share(model) -> float:
    """The fraction of the model's parameter elements this rank stores."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())


def train(model, rank: int, world: int) -> dict:
    processor = AutoProcessor.from_pretrained(folder)
    collate = make_collator(processor)
    per_rank = GLOBAL_BATCH // world
    samples = list(range(rank * per_rank, (rank + 1) * per_rank))
    batch = collate([example(i) for i in samples])
    # Every rank counts the whole global batch's supervised tokens, so that each token weighs the same wherever it
    # was computed: sum of token losses / global count, times the world size FSDP's gradient average divides out.
    tokens = sum((collate([example(i)])["labels"][:, 1:] != -100).sum() for i in range(GLOBAL_BATCH))
    model.eval()  # no dropout: the comparison is of arithmetic, not of random masks
    loss = model(**batch, num_items_in_batch=tokens).loss
    (loss * world).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= LR * parameter.grad
    if world > 1:
        torch.distributed.all_reduce(loss := loss.detach().clone())
    return {"samples": samples, "loss": loss.item()}


def generate(model) -> list[int]:
    processor = AutoProcessor.from_pretrained(folder)
    prompt = processor.apply_chat_template([example(0)["messages"][0]], add_generation_prompt=True)
    inputs = processor(images=[image(0)], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return generated[0, inputs["input_ids"].shape[1] :].tolist()


out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
if mode.startswith("single"):
    model = load()
    record = {"world_size": 1, "rank": 0}
    if mode == "single-train":
        record.update(train(model, 0, 1))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "weights.safetensors")
    else:
        record["tokens"] = generate(model)
    (out / "single.json").write_text(json.dumps(record))
    sys.exit(0)

from transformers.distributed import DistributedConfig, gather_full_state_dict  # noqa: E402

world = int(os.environ["WORLD_SIZE"])
config = DistributedConfig(fsdp_size=world) if mode == "fsdp" else DistributedConfig(tp_size=world)
model = load(config)
rank = torch.distributed.get_rank()
record = {"world_size": torch.distributed.get_world_size(), "rank": rank, "share": parameter_share(model)}
if mode == "fsdp":
    record.update(train(model, rank, world))
    full = gather_full_state_dict(model)  # collective: every rank takes part, rank 0 gets the tensors
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, out / "weights.safetensors")
else:
    record["tokens"] = generate(model)
(out / f"rank{rank}.json").write_text(json.dumps(record))
torch.distributed.destroy_process_group()
