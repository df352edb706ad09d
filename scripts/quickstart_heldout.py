"""Write docs/quickstart-heldout.json: the quickstart's held-out questions per type and their blind baselines.

Computed from the synthetic data generator with the quickstart's settings and seed (nothing trained, nothing written
but the record); the README's and docs/quickstart.md's "held-out questions" and "blind baseline" columns are read
from it, and tests/test_quickstart.py recomputes it. Usage: python scripts/quickstart_heldout.py
"""

import json
from pathlib import Path

from eagle_hub.training.quickstart import DATA, Budget, held_out_summary

RECORD = Path(__file__).resolve().parents[1] / "docs" / "quickstart-heldout.json"


def record(seed: int = 0) -> dict:
    n_images = Budget().n_images
    return {
        "command": "python scripts/quickstart_heldout.py",
        "what": "eagle quickstart's held-out split (seed 0, its default data): questions per type, the most frequent "
        "answer, and the blind baseline (always giving that answer)",
        "seed": seed,
        "n_images": n_images,
        "scene": "uniform",
        "data": {key: list(value) if isinstance(value, tuple) else value for key, value in DATA.items()},
        "types": held_out_summary(n_images, seed, "uniform"),
    }


if __name__ == "__main__":
    RECORD.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {RECORD}")
