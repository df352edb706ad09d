"""ChartQA's own functions: relaxed accuracy (numbers within 5 %, other answers exact, case ignored)."""

from lmms_eval.tasks.chartqa.utils import chartqa_doc_to_text, chartqa_doc_to_visual, chartqa_process_results

__all__ = ["chartqa_doc_to_text", "chartqa_doc_to_visual", "chartqa_process_results"]
