"""What a stage trains: a recipe stage's ``train`` list applied to an Eagle, bare or inside a PEFT wrapper."""

from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration


def eagle_of(model) -> EagleForConditionalGeneration:
    """The EagleForConditionalGeneration inside a (possibly PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def set_trainable(model, train) -> None:
    """Train what ``train`` names: ``experts`` (all) or expert names, ``projector``, ``llm``; freeze the rest.

    Frozen experts also stay in eval mode and build no autograd graph (``EagleVisionTower.freeze_experts``). Under
    PEFT the adapter already decides what of the LLM and the projector trains, so only the experts are set here.
    """
    train = set(train)
    eagle = eagle_of(model)
    tower = eagle.model.vision_tower
    trainable_experts = set(tower.experts) if "experts" in train else train & set(tower.experts)
    tower.freeze_experts(set(tower.experts) - trainable_experts)
    if eagle is model:
        eagle.model.multi_modal_projector.requires_grad_("projector" in train)
        eagle.model.language_model.requires_grad_("llm" in train)
        eagle.lm_head.requires_grad_("llm" in train)
