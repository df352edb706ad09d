"""SEED-Bench's own functions: lettered choices, the first character of the answer against the letter; and the
multiple-choice (perplexity) variant's choices and target."""

from lmms_eval.tasks.seedbench.utils import (
    seed_aggregation_result,
    seed_doc_to_choice,
    seed_doc_to_mc_target,
    seed_doc_to_text,
    seed_doc_to_text_mc,
    seed_doc_to_visual,
    seed_process_result,
)

__all__ = [
    "seed_aggregation_result",
    "seed_doc_to_choice",
    "seed_doc_to_mc_target",
    "seed_doc_to_text",
    "seed_doc_to_text_mc",
    "seed_doc_to_visual",
    "seed_process_result",
]
