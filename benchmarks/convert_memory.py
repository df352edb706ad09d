"""Peak memory of `eagle convert` against the size of the largest source shard (streaming check).

    python benchmarks/convert_memory.py [--llm-hidden 1024] [--llm-layers 24] [--shards 4]

Writes a synthetic NVEagle checkpoint (the released key layout, a wider LLM so shards are hundreds of MB), converts
it in a fresh process, and prints that process's peak resident memory (sampled every 5 ms) above its resident
memory just before converting, divided by the
largest source shard. Streaming keeps this near 1-2 (one output shard pending plus one tensor); loading the whole
checkpoint would make it about the shard count.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, os, sys, threading, time
from eagle_hub.modeling_eagle.convert_nveagle import convert

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
thread = threading.Thread(target=sample)
thread.start()
convert(sys.argv[1], sys.argv[2], max_shard_size=int(sys.argv[3]))
done.set()
thread.join()
print(json.dumps({"rss_before": before, "peak_rss": peak[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-hidden", type=int, default=1024)
    parser.add_argument("--llm-layers", type=int, default=24)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import nveagle_checkpoints as nc

    dims = {**nc.SMALL, "vicuna": {**nc.SMALL["vicuna"], "hidden": args.llm_hidden, "layers": args.llm_layers}}
    dims["vicuna"].update(heads=args.llm_hidden // 64, kv_heads=args.llm_hidden // 64, mlp=args.llm_hidden * 11 // 4)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        nc.write_checkpoint(src, layout="x5", llm="vicuna", dims=dims, shards=args.shards)
        shard_bytes = max(p.stat().st_size for p in src.glob("*.safetensors"))
        total_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(src), str(dst), str(shard_bytes)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        measured = json.loads(out.stdout.strip().splitlines()[-1])
    growth = measured["peak_rss"] - measured["rss_before"]
    result = {
        "checkpoint_bytes": total_bytes,
        "largest_shard_bytes": shard_bytes,
        "peak_rss_growth_bytes": growth,
        "growth_over_largest_shard": growth / shard_bytes,
        "growth_over_checkpoint": growth / total_bytes,
    }
    print(f"checkpoint {total_bytes / 2**20:.0f} MiB in {args.shards} shards (largest {shard_bytes / 2**20:.0f} MiB)")
    print(f"peak RSS growth while converting: {growth / 2**20:.0f} MiB")
    print(
        f"ratio to the largest shard: {result['growth_over_largest_shard']:.2f}; to the whole checkpoint: "
        f"{result['growth_over_checkpoint']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
