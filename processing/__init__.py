"""Eagle's processor: per-expert image preprocessing, tokenizer, image-token expansion, chat templates."""

from transformers import AutoImageProcessor, AutoProcessor

from modeling_eagle.configuration_eagle import EagleConfig

from .image_processing_eagle import EagleImageProcessor
from .processing_eagle import EagleProcessor

AutoImageProcessor.register(EagleConfig, image_processor_classes={"pil": EagleImageProcessor}, exist_ok=True)
AutoProcessor.register(EagleConfig, EagleProcessor, exist_ok=True)

EagleImageProcessor.register_for_auto_class("AutoImageProcessor")
EagleProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["EagleImageProcessor", "EagleProcessor"]
