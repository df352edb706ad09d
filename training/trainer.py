"""``EagleSFTTrainer``: TRL's SFTTrainer with one learning rate per parameter group (vision, projector, LLM), a loss
that is the same per-token mean however the global batch is split across processes, and a record of the samples
each process trained on."""

import torch
from trl import SFTTrainer

from eagle_hub.modeling_eagle.parts import learning_rate_group

from .collator import SAMPLE_INDEX


class EagleSFTTrainer(SFTTrainer):
    """Builds the optimizer from the trainable parameters, one (decay, no-decay) pair per group with its own lr.

    ``group_lr`` maps ``vision``/``projector``/``llm`` to learning rates; the scheduler then scales each group
    from its own base rate. ``trained_samples`` lists the dataset indices this process trained on, in order.
    """

    def __init__(self, *args, group_lr: dict[str, float] | None = None, **kwargs):
        self.group_lr = dict(group_lr or {})
        self.trained_samples: list[int] = []
        super().__init__(*args, **kwargs)
        # TRL's loss is the sum of token losses over ``num_items_in_batch``, the supervised tokens of the whole
        # optimizer step on every process (args.average_tokens_across_devices), times the process count that DDP's
        # gradient average divides out again: a per-token mean over the global batch, so 2 processes x 2 samples
        # step exactly as 1 x 4. The Trainer counts those tokens only for a model it believes takes loss kwargs;
        # without the count each process would average its own tokens and the split would change the step.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.pop(SAMPLE_INDEX, None)
        if indices is not None and model.training:
            self.trained_samples.extend(int(i) for i in indices)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                buckets.setdefault((learning_rate_group(name), name in decay), []).append(parameter)
        groups = []
        for (group, decays), parameters in sorted(buckets.items()):
            lr = self.group_lr.get(group, self.args.learning_rate)
            weight_decay = self.args.weight_decay if decays else 0.0
            groups.append({"params": parameters, "lr": lr, "weight_decay": weight_decay, "group": group})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("params", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
