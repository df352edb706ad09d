"""Which part of Eagle a parameter or state-dict key belongs to: the one classifier that learning-rate groups,
trainable-parameter tables and model cards share."""

EXPERTS = "vision_tower.experts."


def part_of(name: str) -> str:
    """``expert:<name>``, ``projector``, ``llm``, ``lora`` (a PEFT adapter's weights) or ``other``.

    Works on module-relative and full names and under PEFT's prefixes (``base_model.model.``, ``modules_to_save``).
    """
    if "lora_" in name:
        return "lora"
    if EXPERTS in name:
        return "expert:" + name.split(EXPERTS, 1)[1].split(".", 1)[0]
    # Every fusion strategy's module sits at ``multi_modal_projector`` (its cross-attention, per-expert projectors,
    # ...): it is the projector's part, trained and given the projector's learning rate with it.
    if "multi_modal_projector" in name:
        return "projector"
    if "language_model." in name or "lm_head" in name:
        return "llm"
    return "other"


def learning_rate_group(name: str) -> str:
    """The recipe's learning-rate group of a trainable parameter: ``vision``, ``projector`` or ``llm`` (LoRA
    adapters train at the LLM's rate)."""
    part = part_of(name)
    if part.startswith("expert:"):
        return "vision"
    return "projector" if part == "projector" else "llm"
