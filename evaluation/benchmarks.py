"""The paper's 15 benchmarks as lmms-eval 0.7.3 names and scores them, the figures published for the released Eagle
models, and what a model card needs to know about a task (its Hub task type and dataset).

Sources of the figures: ``shared/reference/EAGLE-X5.md`` section 6, which copies the authors' repository README
(greedy decoding). Only the models listed there are here; nothing is filled in from elsewhere.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str  # the paper's column
    task: str  # the lmms-eval 0.7.3 task that runs it
    metric: str  # the lmms-eval metric the paper's figure corresponds to
    scale: float  # paper figure = lmms-eval value * scale
    pretty: str  # the dataset's name in a model card
    task_type: str  # the Hub task id in a model card
    needs: str = ""  # what running it through `eagle eval` needs beyond the set-up and the download ("": nothing)
    differs: str = ""  # how lmms-eval's protocol differs from the paper's figure, where known


BENCHMARKS = (
    Benchmark("GQA", "gqa", "exact_match", 100, "GQA", "visual-question-answering"),
    Benchmark("MME", "mme", "mme_perception_score", 1, "MME", "visual-question-answering"),
    Benchmark("MMMU", "mmmu_val", "mmmu_acc", 100, "MMMU", "visual-question-answering"),
    Benchmark("OCRBench", "ocrbench", "ocrbench_accuracy", 1000, "OCRBench", "visual-question-answering"),
    Benchmark("SQA-I", "scienceqa_img", "exact_match", 100, "ScienceQA-IMG", "multiple-choice"),
    Benchmark(
        "POPE",
        "pope",
        "pope_f1_score",
        100,
        "POPE",
        "visual-question-answering",
        "",
        "LLaVA-style papers report the F1 averaged over POPE's three splits; lmms-eval pools the 9000 questions",
    ),
    Benchmark("TextVQA", "textvqa_val", "exact_match", 100, "TextVQA", "visual-question-answering"),
    Benchmark("InfoVQA", "infovqa_val", "anls", 100, "InfographicVQA", "document-question-answering"),
    Benchmark("VizWiz", "vizwiz_vqa_val", "exact_match", 100, "VizWiz-VQA", "visual-question-answering"),
    Benchmark(
        "SEED-I",
        "seedbench",
        "seed_image",
        100,
        "SEED-Bench",
        "multiple-choice",
        "",
        "the task also runs SEED's video questions (8 frames each, more than the context holds: the model keeps "
        "the first frames that fit); seed_image is the paper's column",
    ),
    Benchmark(
        "VQAv2",
        "vqav2_val",
        "exact_match",
        100,
        "VQAv2",
        "visual-question-answering",
        "",
        "the paper's figure is test-dev (scored by the EvalAI server: vqav2_test writes a submission file); "
        "vqav2_val is the validation split",
    ),
    Benchmark(
        "MathVista",
        "mathvista_testmini_format",
        "llm_as_judge_eval",
        1,
        "MathVista",
        "visual-question-answering",
        "OPENAI_API_KEY and network (a GPT judge extracts the answers) and the Levenshtein package",
        "which of lmms-eval's three testmini prompts (cot, solution, format) the paper used is not stated",
    ),
    Benchmark(
        "MMBench",
        "mmbench_en_dev",
        "gpt_eval_score",
        1,
        "MMBench (en)",
        "multiple-choice",
        "OPENAI_API_KEY and network for answers it cannot match by itself (mmbench_en_dev_static never calls the API)",
        "the paper does not say dev or test; test is scored by the MMBench server",
    ),
    Benchmark("ChartQA", "chartqa", "relaxed_overall", 100, "ChartQA", "visual-question-answering"),
    Benchmark("DocVQA", "docvqa_val", "anls", 100, "DocVQA", "document-question-answering"),
)

# Published figures, in the paper's units (MME: perception score out of 2000; OCRBench: out of 1000; the others
# percentages). Source: shared/reference/EAGLE-X5.md section 6 (the authors' repository README).
PAPER = {
    "eagle-x5-7b": {
        "GQA": 64.9,
        "MME": 1528,
        "MMMU": 36.3,
        "OCRBench": 529,
        "SQA-I": 69.8,
        "POPE": 88.8,
        "TextVQA": 71.2,
        "InfoVQA": 47.4,
        "VizWiz": 54.4,
        "SEED-I": 73.9,
        "VQAv2": 83.4,
        "MathVista": 37.0,
        "MMBench": 68.4,
        "ChartQA": 67.8,
        "DocVQA": 78.6,
    },
    "eagle-x5-13b": {
        "GQA": 66.2,
        "MME": 1609,
        "MMMU": 36.6,
        "OCRBench": 574,
        "SQA-I": 72.8,
        "POPE": 87.8,
        "TextVQA": 74.2,
        "InfoVQA": 51.8,
        "VizWiz": 59.3,
        "SEED-I": 74.1,
        "VQAv2": 83.8,
        "MathVista": 38.8,
        "MMBench": 69.2,
        "ChartQA": 69.9,
        "DocVQA": 79.4,
    },
}

# The package's stand-ins (standins.py) are scored like these benchmarks: --compare-paper shows the paper's figure
# beside them too, to try the output offline (the stand-ins' own figures say nothing about the benchmark).
STANDINS = {
    "eagle_standin_textvqa": "TextVQA",
    "eagle_standin_pope": "POPE",
    "eagle_standin_scienceqa_img": "SQA-I",
    "eagle_standin_seedbench": "SEED-I",
    "eagle_standin_docvqa": "DocVQA",
    "eagle_standin_chartqa": "ChartQA",
}

BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}
BY_TASK = {benchmark.task: benchmark for benchmark in BENCHMARKS}


def benchmark_for(task: str) -> Benchmark | None:
    """The paper benchmark an lmms-eval task measures (its stand-ins included), or None."""
    if task in BY_TASK:
        return BY_TASK[task]
    if task in STANDINS:
        return BY_NAME[STANDINS[task]]
    return None


def paper_models() -> list[str]:
    return sorted(PAPER)


def compare(summary: dict, model: str) -> list[dict]:
    """Rows ``{task, benchmark, metric, measured, paper, difference}`` for the tasks of ``summary`` (task -> metric
    -> value) that measure one of the paper's benchmarks; ``measured`` is in the paper's units."""
    if model not in PAPER:
        raise ValueError(
            f"--compare-paper {model}: the published figures known here are for {', '.join(paper_models())}"
        )
    rows = []
    for task, metrics in summary.items():
        benchmark = benchmark_for(task)
        if benchmark is None or benchmark.metric not in metrics or metrics[benchmark.metric] is None:
            continue
        measured = metrics[benchmark.metric] * benchmark.scale
        paper = PAPER[model][benchmark.name]
        rows.append(
            {
                "task": task,
                "benchmark": benchmark.name,
                "metric": benchmark.metric,
                "measured": measured,
                "paper": paper,
                "difference": measured - paper,
            }
        )
    return rows


__all__ = ["BENCHMARKS", "PAPER", "STANDINS", "Benchmark", "benchmark_for", "compare", "paper_models"]
