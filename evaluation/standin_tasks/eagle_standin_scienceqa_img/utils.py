"""ScienceQA's own functions: lettered choices, the answer letter (or "B. ...") scored by exact match."""

from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_target, sqa_doc_to_text, sqa_doc_to_visual, sqa_process_results

__all__ = ["sqa_doc_to_target", "sqa_doc_to_text", "sqa_doc_to_visual", "sqa_process_results"]
