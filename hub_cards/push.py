"""Push an Eagle folder to the Hugging Face Hub, after checking that it works for someone without this package.

    from eagle_hub.hub_cards.push import push_folder
    push_folder("runs/tiny/stage3-sft", "me/eagle-tiny", private=True)             # validate, then upload
    push_folder("runs/tiny/stage3-sft", "me/eagle-tiny", dry_run=True)             # validate, list what would go

Validation, in order (every problem is reported, one line each):

1. static checks: ``config.json`` (an Eagle config with experts), ``auto_map`` with the four Auto classes whose
   code files (and the files they import relatively) are in the folder, processor files (processor config,
   tokenizer, chat template), safetensors weights (every shard of an index), and the model card's metadata
   (``pipeline_tag: image-text-to-text``, ``library_name: transformers``, the ``custom_code`` tag);
2. a fresh Python process, in which this package cannot be imported, loads the config, the processor and the model
   with ``trust_remote_code=True`` and runs one forward pass on a small image.

A folder without ``README.md`` gets a generated card (:func:`hub_cards.model_card.write_model_card`) before upload.
The upload is ``HfApi.create_repo(exist_ok=True)`` (+ ``create_branch`` for ``revision``) and
``HfApi.upload_folder``. Errors are :class:`PushError` with a one-line message.
"""

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .fresh_process import run_without_package

REQUIRED_AUTO_MAP = ("AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForCausalLM")
IGNORE_PATTERNS = ["__pycache__", "__pycache__/*", "**/__pycache__/*", "*.pyc", ".ipynb_checkpoints/*", ".DS_Store"]
RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", flags=re.M)
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


class PushError(Exception):
    """A folder that should not be pushed, or an upload that failed; the message is one line."""


@dataclass
class PushResult:
    repo_id: str
    files: list[tuple[str, int]]
    checks: list[str] = field(default_factory=list)
    dry_run: bool = False
    commit_url: str | None = None
    pr_url: str | None = None
    card_generated: bool = False
    token_found: bool | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


# -------------------------------------------------------------------------------------------------- the files


def upload_file_list(folder) -> list[str]:
    """The folder's files as ``upload_folder`` sends them: relative POSIX paths, sorted, ignores applied."""
    folder = Path(folder).expanduser().resolve()
    relpaths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    return list(filter_repo_objects(relpaths, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))


# ------------------------------------------------------------------------------------------------ static checks


def _json(path: Path, problems: list[str]) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path.name} is missing")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} is not valid JSON ({error})")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return value


def _check_code_files(folder: Path, references: dict[str, str], problems: list[str]) -> None:
    """``{where: "module.Class"}`` from auto_maps: each ``module.py`` and every file it imports relatively
    (``from .x import y``) must be in the folder. One problem per missing file, naming who needs it."""
    needed_by: dict[str, list[str]] = {}
    for where, reference in references.items():
        if not isinstance(reference, str) or "--" in reference:  # "org/repo--module.Class": code in another repo
            continue
        module, _, cls = reference.rpartition(".")
        if not module or not cls:
            problems.append(f"{where} = {reference!r} is not 'module.Class'")
            continue
        needed_by.setdefault(f"{module}.py", []).append(where)
    seen: set[str] = set()
    todo = list(needed_by)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = folder / name
        if path.is_file():
            for imported in RELATIVE_IMPORT.findall(path.read_text()):
                needed_by.setdefault(f"{imported}.py", []).append(name)
                todo.append(f"{imported}.py")
    for name in sorted(needed_by):
        if not (folder / name).is_file():
            users = ", ".join(dict.fromkeys(needed_by[name]))
            problems.append(f"{name} is not in the folder (needed by {users})")


def check_config(folder: Path, problems: list[str]) -> dict | None:
    config = _json(folder / "config.json", problems)
    if config is None:
        return None
    if config.get("model_type") != "eagle":
        problems.append(f"config.json: model_type is {config.get('model_type')!r}, not 'eagle'")
    experts = (config.get("vision_config") or {}).get("experts")
    if not isinstance(experts, list) or not experts:
        problems.append("config.json: vision_config.experts is missing or empty")
    else:
        for i, spec in enumerate(experts):
            missing = [
                k for k in ("name", "type", "image_size", "config") if not isinstance(spec, dict) or k not in spec
            ]
            if missing:
                problems.append(f"config.json: vision_config.experts[{i}] lacks {', '.join(missing)}")
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        problems.append(f"config.json has no auto_map (needs {', '.join(REQUIRED_AUTO_MAP)})")
        return config
    missing = [name for name in REQUIRED_AUTO_MAP if name not in auto_map]
    if missing:
        problems.append(f"config.json: auto_map lacks {', '.join(missing)}")
    _check_code_files(folder, {f"auto_map {name}": ref for name, ref in auto_map.items()}, problems)
    return config


def check_processor(folder: Path, problems: list[str]) -> None:
    names = [n for n in ("processor_config.json", "preprocessor_config.json") if (folder / n).is_file()]
    if not names:
        problems.append("no processor config (processor_config.json or preprocessor_config.json)")
    chat_template = any((folder / n).is_file() for n in ("chat_template.jinja", "chat_template.json"))
    processor_auto = None
    for name in names:
        data = _json(folder / name, problems) or {}
        processor_auto = processor_auto or (data.get("auto_map") or {}).get("AutoProcessor")
        chat_template = chat_template or bool(data.get("chat_template"))
    if names and processor_auto is None:
        problems.append(f"{names[0]}: auto_map has no AutoProcessor")
    elif isinstance(processor_auto, str):
        _check_code_files(folder, {"the processor's auto_map": processor_auto}, problems)
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        problems.append("no tokenizer (tokenizer.json or tokenizer.model)")
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        problems.append("tokenizer_config.json is missing")
    else:
        chat_template = chat_template or bool((_json(tokenizer_config, problems) or {}).get("chat_template"))
    if not chat_template:
        problems.append("no chat template (chat_template.jinja); the pipeline's chat mode needs one")


def check_weights(folder: Path, problems: list[str]) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = (_json(index, problems) or {}).get("weight_map") or {}
        if not weight_map:
            problems.append("model.safetensors.index.json has no weight_map")
        missing = sorted({shard for shard in weight_map.values() if not (folder / shard).is_file()})
        if missing:
            problems.append(f"weight shards listed in the index are missing: {', '.join(missing)}")
    elif not (folder / "model.safetensors").is_file():
        legacy = [p.name for p in folder.glob("*.bin")]
        hint = f" (found {', '.join(legacy)}: save with safetensors)" if legacy else ""
        problems.append(f"no weights: model.safetensors or model.safetensors.index.json{hint}")


def check_card(folder: Path, problems: list[str]) -> bool:
    """Checks ``README.md``'s metadata; returns False when there is no card (one is generated before upload)."""
    from huggingface_hub import ModelCard

    path = folder / "README.md"
    if not path.is_file():
        return False
    try:
        card = ModelCard.load(path)
    except Exception as error:  # YAML or model-index errors: ModelCard raises several types
        problems.append(f"README.md: the card's metadata does not parse ({str(error).splitlines()[0]})")
        return True
    data = card.data
    if data.pipeline_tag != "image-text-to-text":
        problems.append(f"README.md: pipeline_tag is {data.pipeline_tag!r}, not 'image-text-to-text'")
    if data.library_name != "transformers":
        problems.append(f"README.md: library_name is {data.library_name!r}, not 'transformers'")
    if "custom_code" not in (data.tags or []):
        problems.append("README.md: tags lack 'custom_code' (the model loads with trust_remote_code)")
    return True


def static_problems(folder) -> list[str]:
    """Every problem the static checks find (an empty list: the folder looks Hub-ready)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems: list[str] = []
    check_config(folder, problems)
    check_processor(folder, problems)
    check_weights(folder, problems)
    check_card(folder, problems)
    return problems


# ---------------------------------------------------------------------------------------- fresh-process loading

LOAD_CHECK = r"""
import json, traceback
stage = "import"
try:
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = sys.argv[1]
    stage = "config"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    stage = "processor"
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    stage = "model"
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    stage = "forward"
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits
    if not torch.isfinite(logits).all():
        raise ValueError("the forward pass produced non-finite logits")
    print("LOAD-CHECK-OK " + json.dumps({"config": type(config).__name__, "model": type(model).__name__,
          "processor": type(processor).__name__, "logits": list(logits.shape),
          "parameters": sum(p.numel() for p in model.parameters())}))
except BaseException as error:
    message = (str(error).strip().splitlines() or [""])[0]
    print(f"LOAD-CHECK-ERROR {stage}: {type(error).__name__}: {message}")
    traceback.print_exc()
    sys.exit(1)
"""


def load_check(folder, *, timeout: float = 1800, python: str | None = None) -> dict:
    """Load ``folder`` in a fresh process without this package (trust_remote_code) and run one forward pass.
    Returns what loaded (classes, logits shape, parameters); raises PushError with the failing stage."""
    folder = Path(folder).resolve()
    try:
        done = run_without_package(LOAD_CHECK, folder, timeout=timeout, python=python)
    except subprocess.TimeoutExpired as error:
        raise PushError(f"{folder}: loading in a fresh process took more than {timeout:.0f} s") from error
    for line in done.stdout.splitlines():
        if line.startswith("LOAD-CHECK-OK "):
            return json.loads(line.removeprefix("LOAD-CHECK-OK "))
        if line.startswith("LOAD-CHECK-ERROR "):
            raise PushError(
                f"{folder} does not load with trust_remote_code ({line.removeprefix('LOAD-CHECK-ERROR ')})"
            )
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise PushError(f"{folder}: the load check died (exit {done.returncode}): {tail}")


def validate_folder(folder, *, load: bool = True, timeout: float = 1800) -> list[str]:
    """Run every check; raise PushError listing the problems, else return what was checked (one line each)."""
    folder = Path(folder)
    problems = static_problems(folder)
    if problems:
        raise PushError(f"{folder} is not ready to push: " + "; ".join(problems))
    checks = [
        "config.json: Eagle config, auto_map complete, code files present",
        "processor config, tokenizer and chat template present",
        "safetensors weights present",
        "model card metadata valid" if (folder / "README.md").is_file() else "no README.md: a card will be generated",
    ]
    if load:
        loaded = load_check(folder, timeout=timeout)
        checks.append(
            f"fresh process, trust_remote_code: {loaded['model']} ({loaded['parameters']:,} parameters) and "
            f"{loaded['processor']} load, forward pass gives logits {tuple(loaded['logits'])}"
        )
    return checks


# ----------------------------------------------------------------------------------------------------- upload


def _token(token: str | None) -> str | None:
    from huggingface_hub import get_token

    return token or get_token()


def _http_error(error, repo_id: str) -> PushError:
    status = getattr(getattr(error, "response", None), "status_code", None)
    detail = getattr(error, "server_message", None) or (str(error).splitlines() or [""])[0]
    detail = " ".join(str(detail).split())
    if status == 401:
        return PushError(f"the Hub rejected the token (401 Unauthorized): {LOGIN_HINT} ({detail})")
    if status == 403:
        owner = repo_id.split("/")[0]
        return PushError(
            f"the Hub refused the upload to {repo_id} (403 Forbidden): the token cannot write to {owner!r}; "
            f"use a token with write access there ({detail})"
        )
    if status == 404:
        return PushError(f"the Hub answered 404 for {repo_id}: check the repo id and revision ({detail})")
    return PushError(f"the Hub rejected the upload to {repo_id} (HTTP {status}): {detail}")


def push_folder(
    folder,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    load: bool = True,
    commit_message: str | None = None,
    timeout: float = 1800,
) -> PushResult:
    """Validate ``folder`` (see the module doc), then upload it to ``repo_id``; ``dry_run`` uploads nothing."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--repo-id {repo_id!r} is not a Hub repo id like ORG/NAME ({error})") from error
    if "/" not in repo_id:
        raise PushError(f"--repo-id {repo_id!r}: name the owner too, as ORG/NAME or USER/NAME")
    if create_pr and revision not in (None, "main"):
        raise PushError(
            "--create-pr opens a pull request against the main branch; it cannot be combined with --revision"
        )
    access = _token(token)
    if not access and not dry_run:  # before the checks: they can take minutes on a large model
        raise PushError(f"no Hugging Face token found: {LOGIN_HINT}")
    checks = validate_folder(folder, load=load, timeout=timeout)
    card = None
    if not (folder / "README.md").is_file():
        from .model_card import CardError, model_card_for_folder

        try:
            card = model_card_for_folder(folder, repo_id=repo_id)
        except CardError as error:
            raise PushError(f"{folder}: cannot write its model card: {error}") from error
    sizes = {name: (folder / name).stat().st_size for name in upload_file_list(folder)}
    if card is not None:
        sizes["README.md"] = len(str(card).encode())
    result = PushResult(repo_id, sorted(sizes.items()), checks, dry_run=dry_run, card_generated=card is not None)
    result.token_found = bool(access)
    if dry_run:
        return result
    if card is not None:
        card.save(folder / "README.md")
        result.files = [(name, (folder / name).stat().st_size) for name in upload_file_list(folder)]
    result.commit_url, result.pr_url = _upload(
        folder, repo_id, access, private=private, revision=revision, create_pr=create_pr, message=commit_message
    )
    return result


def _transport_error() -> type:
    try:  # huggingface_hub 2.x speaks httpx2, 1.x httpx
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.TransportError


def _upload(folder, repo_id, token, *, private, revision, create_pr, message) -> tuple[str | None, str | None]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=message or f"Upload Eagle model from {Path(folder).resolve().name}",
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except OfflineModeIsEnabled as error:
        raise PushError("HF_HUB_OFFLINE is set: unset it to push to the Hub") from error
    except HfHubHTTPError as error:
        raise _http_error(error, repo_id) from error
    except (_transport_error(), ConnectionError, TimeoutError) as error:
        raise PushError(f"could not reach the Hub at {api.endpoint}: {error}") from error
    except ValueError as error:  # e.g. the Hub's YAML validation of README.md
        raise PushError(f"the Hub rejected the upload to {repo_id}: {' '.join(str(error).split())}") from error
    return getattr(info, "commit_url", None), getattr(info, "pr_url", None)
