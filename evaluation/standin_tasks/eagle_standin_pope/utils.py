"""POPE's own functions: an exact "yes"/"no" answer, accuracy, precision, recall, F1 and the ratio of "yes"."""

from lmms_eval.tasks.pope.utils import (
    pope_aggregate_accuracy,
    pope_aggregate_f1_score,
    pope_aggregate_precision,
    pope_aggregate_recall,
    pope_aggregate_yes_ratio,
    pope_doc_to_text,
    pope_doc_to_visual,
    pope_process_results,
)

__all__ = [
    "pope_aggregate_accuracy",
    "pope_aggregate_f1_score",
    "pope_aggregate_precision",
    "pope_aggregate_recall",
    "pope_aggregate_yes_ratio",
    "pope_doc_to_text",
    "pope_doc_to_visual",
    "pope_process_results",
]
