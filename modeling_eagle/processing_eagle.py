"""EagleProcessor: the tokenizer and the per-expert image processor, and image-token expansion.

Each ``<image>`` in the text becomes ``num_image_tokens`` image tokens before tokenisation: the model config's
``image_seq_length``, which its fusion strategy decides (``grid_size**2`` for the default ``channel_concat``, one per
position of the fused grid); the model scatters the fused image features into exactly those positions.
"""

from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, Unpack
from transformers.tokenization_utils_base import PreTokenizedInput, TextInput

from .image_processing_eagle import EagleImageProcessor


def _count_images(images) -> int:
    if images is None:
        return 0
    if isinstance(images, (list, tuple)):
        return sum(_count_images(image) for image in images)
    if getattr(images, "ndim", 3) == 4:  # a batch array or tensor
        return images.shape[0]
    return 1


def _is_empty(media) -> bool:
    """None, or lists (nested or not) holding nothing: what a harness passes for a sample without that medium."""
    if media is None:
        return True
    if isinstance(media, (list, tuple)):
        return all(_is_empty(item) for item in media)
    return False


class EagleProcessor(ProcessorMixin):
    skip_tensor_conversion = ["pixel_values", "video_metadata", "text_replacement_offsets"]

    def __init__(
        self,
        image_processor: EagleImageProcessor | None = None,
        tokenizer=None,
        chat_template=None,
        image_token: str = "<image>",
        num_image_tokens: int = 1024,
        **kwargs,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.num_image_tokens = num_image_tokens
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token) if tokenizer is not None else None
        if tokenizer is not None and self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {self.image_token!r} token; add it with "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{self.image_token!r}]}}) "
                "and resize the model's embeddings"
            )
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | PreTokenizedInput | list[TextInput] | list[PreTokenizedInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        # Harnesses such as lmms-eval's generic model pass videos= and audios= with every request, empty for image
        # tasks: empty ones are accepted and dropped; Eagle has no video or audio input, so anything else is refused.
        # They stay out of the signature, which tells callers (transformers' processor tests too) what Eagle takes.
        for name in ("videos", "audio", "audios"):
            if not _is_empty(kwargs.pop(name, None)):
                raise ValueError(
                    f"Eagle takes images and text only, but {name}= was given; pass video frames as images "
                    f"(one {self.image_token} each) and leave {name} empty"
                )
        output = super().__call__(images=None if _is_empty(images) else images, text=text, **kwargs)
        self._check_length(output, kwargs)
        return output

    def validate_inputs(self, images=None, text=None, **kwargs) -> None:
        """Refuse image placeholders without images (and images without placeholders): the model would embed the
        placeholders as text, or find no place for the images."""
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            n_tokens = sum(t.count(self.image_token) for t in texts)
            n_images = _count_images(images)
            if n_tokens != n_images:
                raise ValueError(
                    f"The number of {self.image_token!r} tokens in the prompts should be the same as the number of "
                    f"images: the text has {n_tokens} {self.image_token!r} placeholder(s) but {n_images} image(s) "
                    f"were given; put one {self.image_token} in the text for each image, in the images' order"
                )
        super().validate_inputs(images=images, text=text, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Saving records the remote code's `auto_map` on the processor; it belongs in the saved file, not in this
        # object (transformers cleans the tokenizer up the same way), so that the saved processor and the one loaded
        # back are equal.
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)

    def _check_length(self, output, kwargs) -> None:
        """Refuse prompts longer than the tokenizer's limit: truncating them would cut through image tokens."""
        limit = getattr(self.tokenizer, "model_max_length", None)
        if not limit or limit >= 10**8 or "attention_mask" not in output or kwargs.get("truncation"):
            return
        for index, (mask, ids) in enumerate(zip(output["attention_mask"], output["input_ids"])):
            length = int(mask.sum()) if hasattr(mask, "sum") else sum(mask)
            if length > limit:
                image_tokens = sum(int(token == self.image_token_id) for token in ids)
                raise ValueError(
                    f"prompt {index} is {length} tokens ({image_tokens} of them image tokens) but the model takes at "
                    f"most {limit} (tokenizer.model_max_length); shorten the text or give fewer images"
                )

    def _adjust_assistant_masks_indices(self, processed_dict, generation_indices):
        # transformers walks the offsets token by token; as a tensor (return_tensors="pt", as TRL's collator asks)
        # every step makes a 0-d tensor, and for multi-turn samples the walk took longer than a CPU training step.
        offsets = processed_dict.get("offset_mapping")
        if hasattr(offsets, "tolist"):
            processed_dict["offset_mapping"] = offsets.tolist()
        return super()._adjust_assistant_masks_indices(processed_dict, generation_indices)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens per image for serving engines: fixed, since nothing is tiled."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.num_image_tokens] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["EagleProcessor"]
