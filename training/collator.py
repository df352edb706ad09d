"""The data path's loss mask: assistant tokens only, never image tokens.

TRL 1.16 computes the loss through the base model and ``lm_head``, not through the model's
forward, so the mask must be in the labels the collator makes.
"""

import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

# The dataset column ``build_trainer`` adds (each row's position in the stage's data) and the batch key the collator
# passes it on under, so the trainer can record which samples each process trained on.
SAMPLE_INDEX = "sample_index"


class EagleDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language collator with ``assistant_only_loss`` plus image tokens masked out of the labels."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["labels"][batch["input_ids"] == self.processor.image_token_id] = -100
        if SAMPLE_INDEX in examples[0]:
            batch[SAMPLE_INDEX] = torch.tensor([example[SAMPLE_INDEX] for example in examples])
        return batch


def make_collator(processor, max_length=None) -> EagleDataCollator:
    return EagleDataCollator(processor=processor, max_length=max_length, assistant_only_loss=True)
