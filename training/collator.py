"""The data path's loss mask: assistant tokens only, never image tokens; and the images decoded by the processor.

TRL 1.16 computes the loss through the base model and ``lm_head``, not through the model's
forward, so the mask must be in the labels the collator makes.
"""

import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .data import load_images

# The dataset column ``build_trainer`` adds (each row's position in the stage's data) and the batch key the collator
# passes it on under, so the trainer can record which samples each process trained on.
SAMPLE_INDEX = "sample_index"


class EagleDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language collator with ``assistant_only_loss`` plus image tokens masked out of the labels.

    The loaders leave images undecoded (:mod:`.data`); each batch's are decoded here, by the processor's own
    ``load_image`` (:func:`.data.load_images`), so that training sees the pixels generation, serving and evaluation
    see."""

    def torch_call(self, examples):
        batch = super().torch_call([self._decoded(example, row) for row, example in enumerate(examples)])
        batch["labels"][batch["input_ids"] == self.processor.image_token_id] = -100
        if SAMPLE_INDEX in examples[0]:
            batch[SAMPLE_INDEX] = torch.tensor([example[SAMPLE_INDEX] for example in examples])
        return batch

    def _decoded(self, example: dict, row: int) -> dict:
        # A copy: TRL pops and rewrites keys of the examples it is given, which the dataset may still hold.
        example = dict(example)
        if example.get("id") is not None:
            where = f"training sample {example['id']!r}"
        else:
            where = f"the training sample in row {row} of its batch (the data has no id column)"
        image_processor = self.processor.image_processor
        if example.get("image") is not None:
            example["image"] = load_images(image_processor, [example["image"]], where)[0]
        if "images" in example:
            example["images"] = load_images(image_processor, example["images"], where)
        return example


def make_collator(processor, max_length=None) -> EagleDataCollator:
    return EagleDataCollator(processor=processor, max_length=max_length, assistant_only_loss=True)
