"""Hub-native Eagle (arXiv 2408.15998): a mixture of vision experts feeding a Llama-family LLM.

This folder is the model's folder, laid out as transformers' ``models/llava/``: configuration, model, experts, image
processor and processor are the remote code a Hub repo carries (flat siblings, relative imports only); the presets,
the Hub folder writer and the NVEagle converter sit beside them. Importing the package registers Eagle with
transformers' Auto classes, so local folders load without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_eagle import EagleConfig, EagleVisionConfig
from .image_processing_eagle import EagleImageProcessor
from .modeling_eagle import (
    EagleForConditionalGeneration,
    EagleModel,
    EaglePreTrainedModel,
    EagleVisionTower,
)
from .processing_eagle import EagleProcessor

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
AutoImageProcessor.register(EagleConfig, image_processor_classes={"pil": EagleImageProcessor}, exist_ok=True)
AutoProcessor.register(EagleConfig, EagleProcessor, exist_ok=True)

# Marks the classes so save_pretrained copies their source files next to the weights.
EagleConfig.register_for_auto_class()
EagleForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
EagleImageProcessor.register_for_auto_class("AutoImageProcessor")
EagleProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "AUTO_MAP",
    "EagleConfig",
    "EagleForConditionalGeneration",
    "EagleImageProcessor",
    "EagleModel",
    "EaglePreTrainedModel",
    "EagleProcessor",
    "EagleVisionConfig",
    "EagleVisionTower",
]
