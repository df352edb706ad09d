"""TextVQA's own functions: EvalAI answer normalisation, accuracy min(#matching answers / 3, 1) over 10 answers."""

from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text, textvqa_doc_to_visual, textvqa_process_results

__all__ = ["textvqa_doc_to_text", "textvqa_doc_to_visual", "textvqa_process_results"]
