"""DocVQA's own functions; the score is lmms-eval's registered ANLS metric against the ``answers`` list."""

from lmms_eval.tasks.docvqa.utils import docvqa_doc_to_text, docvqa_doc_to_visual

__all__ = ["docvqa_doc_to_text", "docvqa_doc_to_visual"]
