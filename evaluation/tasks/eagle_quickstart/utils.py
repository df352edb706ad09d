"""The eagle_quickstart task: the quickstart's held-out rows (``training.synth``'s ``hf/sft_heldout``: ``images``,
``messages``, ``type``, ``answer``) asked and scored as ``eagle_hub.training.quickstart.evaluate`` does."""

QUESTION_TYPES = ("colour", "count", "position", "shape", "word")


def doc_to_visual(doc):
    return [image.convert("RGB") for image in doc["images"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The first user turn's text (its image block becomes the model's image block, as in the quickstart)."""
    return "".join(block["text"] or "" for block in doc["messages"][0]["content"] if block["type"] == "text")


def process_results(doc, results):
    right = float(results[0].strip().lower() == doc["answer"].strip().lower())
    scores = {"exact_match": right}
    for kind in QUESTION_TYPES:  # None for the other types: each per-type mean counts its own questions only
        scores[f"exact_match_{kind}"] = right if doc["type"] == kind else None
    return scores


def mean_of_answered(scores):
    scores = [score for score in scores if score is not None]
    return sum(scores) / len(scores) if scores else None
