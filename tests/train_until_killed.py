"""Run a recipe and SIGKILL this process right after optimizer step STEP of stage STAGE (a test harness).

Usage: python train_until_killed.py RECIPE OUTPUT DATA_ROOT STAGE STEP
"""

import os
import signal
import sys

from transformers import TrainerCallback

import eagle_hub.training.runner as runner
from eagle_hub.training.recipe import load_recipe

recipe_path, output, data_root, kill_stage, kill_step = sys.argv[1:6]


class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(kill_step):
            os.kill(os.getpid(), signal.SIGKILL)


original = runner.build_trainer


def build_trainer(model, processor, stage, *args, **kwargs):
    trainer = original(model, processor, stage, *args, **kwargs)
    if stage.name == kill_stage:
        trainer.add_callback(KillAt())
    return trainer


runner.build_trainer = build_trainer
recipe = load_recipe(recipe_path)
recipe.data_root = data_root
runner.run_recipe(recipe, output, resume=os.path.isdir(output))
print("finished without being killed")
