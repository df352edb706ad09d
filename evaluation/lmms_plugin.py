"""The payload of lmms-eval's ``lmms_eval.models`` entry point (pyproject.toml): registers the model ``eagle``.

lmms-eval imports this while ``lmms_eval.models`` is still initialising, so it imports only the leaf module
``registry_v2`` (not ``lmms_eval.models``) and neither torch nor transformers; the classes are imported when a run
asks for them. A failure here is only logged by lmms-eval (as a warning), so keep it trivial.

``--model eagle`` resolves to the chat class (lmms-eval prefers it when both exist); ``--force_simple`` selects the
simple one, which also serves ``multiple_choice`` / ``loglikelihood`` tasks (``eagle eval`` uses it).
"""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(
    model_id="eagle",
    simple_class_path="eagle_hub.evaluation.lmms_model.EagleLmms",
    chat_class_path="eagle_hub.evaluation.lmms_model.EagleLmmsChat",
)
