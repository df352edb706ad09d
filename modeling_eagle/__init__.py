"""Hub-native Eagle (arXiv 2408.15998): a mixture of vision experts feeding a Llama-family LLM.

Importing the package registers Eagle with transformers' Auto classes, so local folders load without
``trust_remote_code``; folders saved by this package also carry the remote code for those who do not have it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_eagle import EagleConfig, EagleVisionConfig
from .modeling_eagle import (
    EagleForConditionalGeneration,
    EagleModel,
    EaglePreTrainedModel,
    EagleVisionTower,
)

AUTO_MAP = {
    "AutoConfig": "configuration_eagle.EagleConfig",
    "AutoModel": "modeling_eagle.EagleModel",
    "AutoModelForImageTextToText": "modeling_eagle.EagleForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_eagle.EagleForConditionalGeneration",
}

AutoConfig.register(EagleConfig.model_type, EagleConfig, exist_ok=True)
AutoConfig.register(EagleVisionConfig.model_type, EagleVisionConfig, exist_ok=True)
AutoModel.register(EagleConfig, EagleModel, exist_ok=True)
AutoModel.register(EagleVisionConfig, EagleVisionTower, exist_ok=True)
AutoModelForImageTextToText.register(EagleConfig, EagleForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(EagleConfig, EagleForConditionalGeneration, exist_ok=True)

# Marks the classes so save_pretrained copies their source files next to the weights.
EagleConfig.register_for_auto_class()
EagleForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "AUTO_MAP",
    "EagleConfig",
    "EagleForConditionalGeneration",
    "EagleModel",
    "EaglePreTrainedModel",
    "EagleVisionConfig",
    "EagleVisionTower",
]
