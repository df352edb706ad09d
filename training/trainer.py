"""``EagleSFTTrainer``: TRL's SFTTrainer with one learning rate per parameter group (vision, projector, LLM)."""

import torch
from trl import SFTTrainer

from eagle_hub.modeling_eagle.parts import learning_rate_group


class EagleSFTTrainer(SFTTrainer):
    """Builds the optimizer from the trainable parameters, one (decay, no-decay) pair per group with its own lr.

    ``group_lr`` maps ``vision``/``projector``/``llm`` to learning rates; the scheduler then scales each group
    from its own base rate.
    """

    def __init__(self, *args, group_lr: dict[str, float] | None = None, **kwargs):
        self.group_lr = dict(group_lr or {})
        super().__init__(*args, **kwargs)

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
