"""Evaluation on the community harness, lmms-eval: the ``eagle`` lmms-eval model, the package's own tasks, and the
``eagle eval`` runner.

    eagle eval eagle-quickstart/model --tasks eagle_quickstart --output eval-out
    lmms-eval --model eagle --model_args pretrained=eagle-quickstart/model --tasks eagle_quickstart ...

lmms-eval is an optional dependency (the ``eval`` extra: ``bash scripts/setup.sh --eval``). This module imports
nothing heavy: ``lmms_plugin`` is what lmms-eval's ``lmms_eval.models`` entry point loads, ``lmms_model`` the model
classes, ``runner`` what ``eagle eval`` runs, ``benchmarks`` the paper's tasks and figures, ``standins`` the local
stand-ins of the paper's benchmarks used by the tests.
"""

from pathlib import Path

# Task folders shipped with the package; ``eagle eval`` always adds it to lmms-eval's include path.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LMMS_EVAL_VERSION = "0.7.3"
SETUP_HINT = "bash scripts/setup.sh --eval (or pip install 'eagle-hub[eval]', then see that script for torchvision)"

__all__ = ["LMMS_EVAL_VERSION", "SETUP_HINT", "TASKS_DIR"]
