"""Training data loaders: the authors' LLaVA JSON and Hugging Face datasets, both into TRL's vision-language format.

TRL's ``SFTTrainer`` reads rows ``{"images": [PIL.Image, ...], "messages": [...]}`` whose user turns hold one
``{"type": "image"}`` block per image, in order. The authors' records look like
``{"id", "image": "relative/path.png" (or a list), "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}]}``; ``load_llava_json`` converts them, checking every record
and naming the file, index and id of any that is broken.

Images stay undecoded in the loaded datasets (``Image(decode=False)``: a path, or a file's bytes), so a 558k-record
caption set loads in seconds, and ``map``/``filter``/``shuffle`` neither decode nor re-encode them. The training
collator decodes each batch's images with the processor's own ``EagleImageProcessor.load_image`` (:func:`load_images`),
as ``eagle generate``, ``eagle serve`` and ``eagle eval`` do, so that a file gives the model the same pixels
everywhere: ``datasets``' own decoding flattens transparency differently, clips 16-bit images, has no pixel cap, and
accepts a truncated file whenever Pillow's process-wide ``LOAD_TRUNCATED_IMAGES`` is on.
"""

import io
import json
from pathlib import Path

from transformers.utils import logging

from eagle_hub.processing.locations import is_hub_id, resolve_path

logger = logging.get_logger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMATS = ("llava", "hf")
SPEC_KEYS = {"format", "path", "image_folder", "split", "skip_bad", "max_samples"}


class DataFormatError(ValueError):
    """A record (or the file) that cannot be turned into a training row; the message names file, index and id."""


def features(*extra: str, decode: bool = True):
    """The column schema of every dataset the package writes, in TRL's vision-language format: ``id``, ``images``
    (decoded as RGB by ``datasets`` when read directly; ``decode=False``, as the training loaders read them, leaves
    them for :func:`load_images`), ``messages`` (content blocks of type ``image``/``text``), plus ``extra`` string
    columns (the question ``type`` and ``answer`` that evaluation reads)."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    block = {"type": Value("string"), "text": Value("string")}
    columns = {
        "id": Value("string"),
        "images": List(ImageFeature(mode="RGB") if decode else ImageFeature(decode=False)),
        "messages": List({"role": Value("string"), "content": List(block)}),
    }
    columns.update({name: Value("string") for name in extra})
    return Features(columns)


def _read_records(path: Path):
    """Yield ``(where, record_or_error)``; ``where`` is e.g. ``"record 3"`` or ``"record 3 (line 5)"`` for JSONL."""
    text = path.read_text(encoding="utf-8")
    as_lines = path.suffix.lower() == ".jsonl"
    if not as_lines:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg == "Extra data" and text.lstrip().startswith("{"):
                as_lines = True  # JSON lines under a .json name
            else:
                raise DataFormatError(
                    f"{path.name}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
                ) from error
        else:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataFormatError(f"{path.name}: expected a JSON list of records, got {type(data).__name__}")
            for index, record in enumerate(data):
                yield f"record {index}", record
            return
    index = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            record = DataFormatError(f"malformed JSON line ({error.msg} at column {error.colno})")
        yield f"record {index} (line {line_number})", record
        index += 1


def _split_placeholders(value: str) -> list[dict]:
    """``"a <image>\\nb"`` -> text "a ", image, text "b": the newline right after each placeholder is dropped."""
    pieces = value.split(IMAGE_PLACEHOLDER)
    content = []
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image", "text": None})
            if piece.startswith("\r\n"):
                piece = piece[2:]
            elif piece.startswith("\n"):
                piece = piece[1:]
        if piece:
            content.append({"type": "text", "text": piece})
    return content or [{"type": "text", "text": ""}]


def convert_llava_record(record, image_folder: Path) -> dict:
    """One LLaVA record -> ``{"id", "images": [absolute paths], "messages": [...]}``; raises ``ValueError`` if bad.

    The caller adds the record's position to the message.
    """
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    conversations = record.get("conversations")
    if conversations is None:
        raise ValueError('missing "conversations"')
    if not isinstance(conversations, list) or not conversations:
        raise ValueError('"conversations" must be a non-empty list of {"from", "value"} turns')

    messages, n_placeholders = [], 0
    for turn_index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f'turn {turn_index} is not a {{"from", "value"}} object: {str(turn)[:80]!r}')
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"turn {turn_index} has unknown role {turn['from']!r} (expected one of {sorted(ROLES)})")
        value = turn["value"]
        if not isinstance(value, str):
            raise ValueError(f'turn {turn_index} "value" must be a string, got {type(value).__name__}')
        count = value.count(IMAGE_PLACEHOLDER)
        if count and role != "user":
            raise ValueError(f"turn {turn_index} ({turn['from']}) holds {IMAGE_PLACEHOLDER}; only human turns may")
        n_placeholders += count
        content = _split_placeholders(value) if role == "user" else [{"type": "text", "text": value}]
        messages.append({"role": role, "content": content})

    images = record.get("image", [])
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    elif not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise ValueError(f'"image" must be a path or a list of paths, got {images!r}')
    if n_placeholders != len(images):
        raise ValueError(
            f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the conversation but {len(images)} image(s)"
        )
    paths = []
    for image in images:
        path = resolve_path(image, image_folder)
        if not path.is_file():
            raise FileNotFoundError(f"image {image!r} not found under {image_folder}")
        paths.append(str(path))
    return {"images": paths, "messages": messages}


def load_llava_json(json_path, image_folder=None, skip_bad: bool = False, max_samples: int | None = None):
    """Read the authors' LLaVA JSON (a list) or JSON lines (``.jsonl``) into TRL's vision-language format.

    Args:
        json_path: the ``.json`` / ``.jsonl`` file.
        image_folder: where the records' relative ``"image"`` paths start (default: the JSON file's folder).
        skip_bad: skip (and count) broken records instead of raising; a warning says how many.
        max_samples: stop after this many good records.

    Returns:
        ``(dataset, n_skipped)``: a ``datasets.Dataset`` with columns ``id``, ``images`` (undecoded, for
        :func:`load_images`), ``messages`` and, when the records have one, ``type``.

    Raises:
        DataFormatError: naming the file, record index (and JSONL line) and id of the first broken record.
    """
    from datasets import Dataset

    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"LLaVA data file {json_path} not found")
    image_folder = Path(image_folder) if image_folder is not None else json_path.parent
    if not image_folder.is_dir():
        raise FileNotFoundError(f"image folder {image_folder} (for {json_path.name}) not found")
    image_folder = image_folder.resolve()

    rows, skipped, first_errors = [], 0, []
    for where, record in _read_records(json_path):
        if max_samples is not None and len(rows) >= max_samples:
            break
        record_id = record.get("id") if isinstance(record, dict) else None
        label = f"{json_path.name} {where}" + (f" (id {str(record_id)!r})" if record_id is not None else "")
        try:
            row = convert_llava_record(record, image_folder)
        except (ValueError, FileNotFoundError) as error:
            if not skip_bad:
                raise DataFormatError(f"{label}: {error}") from error
            skipped += 1
            if len(first_errors) < 3:
                first_errors.append(f"{label}: {error}")
            continue
        row["id"] = str(record_id) if record_id is not None else str(len(rows) + skipped)
        if isinstance(record.get("type"), str):
            row["type"] = record["type"]
        rows.append(row)

    if skipped:
        logger.warning(
            "Skipped %d bad record(s) of %s (kept %d), e.g. %s", skipped, json_path, len(rows), "; ".join(first_errors)
        )
    if not rows:
        raise DataFormatError(f"{json_path.name}: no usable records" + (f" ({skipped} skipped)" if skipped else ""))
    with_type = any("type" in row for row in rows)
    table = {
        "id": [row["id"] for row in rows],
        "images": [[{"path": path, "bytes": None} for path in row["images"]] for row in rows],
        "messages": [row["messages"] for row in rows],
    }
    if with_type:
        table["type"] = [row.get("type") for row in rows]
    dataset = Dataset.from_dict(table, features=features(*(["type"] if with_type else []), decode=False))
    logger.info("Loaded %d records from %s (images under %s)", len(dataset), json_path, image_folder)
    return dataset, skipped


def _validate_columns(dataset, where: str):
    columns = set(dataset.column_names)
    missing = [name for name in ("images", "messages") if name not in columns]
    if "images" in missing and "image" in columns:
        missing.remove("images")  # TRL also reads a single "image" column
    if missing:
        raise DataFormatError(
            f"{where}: missing column(s) {missing}; found {sorted(columns)}. Expected TRL's vision-language format: "
            '"images" (a list of images) and "messages" ([{"role", "content": [{"type": "image"}, '
            '{"type": "text", "text": ...}]}, ...])'
        )


def _undecoded_images(dataset, root: Path | None):
    """Make the ``images`` (or TRL's single ``image``) column undecoded ``Image`` features, for :func:`load_images`
    (string paths resolved against ``root``). Image columns change their schema only: nothing is copied."""
    from datasets import Image as ImageFeature
    from datasets import List, Value

    undecoded = ImageFeature(decode=False)
    if "image" in dataset.column_names and isinstance(dataset.features["image"], ImageFeature):
        dataset = dataset.cast_column("image", undecoded)
    if "images" not in dataset.column_names:
        return dataset
    feature = dataset.features["images"]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ImageFeature):
        return _relabelled(dataset, "images", List(undecoded)) if inner.decode else dataset
    if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):

        def absolute(batch):
            resolved = [[str(resolve_path(p, root)) for p in paths or []] for paths in batch["images"]]
            return {"images": resolved}

        dataset = dataset.map(absolute, batched=True, desc="Resolving image paths")
        return dataset.cast_column("images", List(undecoded))
    raise DataFormatError(f'the "images" column has type {feature}; expected a list of images or of image paths')


def _relabelled(dataset, column: str, feature):
    """``dataset.cast_column(column, feature)`` for a feature whose Arrow storage is the column's own (a list of
    images, decoded or not), without a copy. ``cast_column`` re-labels a top-level ``Image`` column in place of
    rewriting it, but sends a list of them through ``cast``: a ``map`` that writes every image's bytes again into a
    cache file (the whole dataset, when the images are embedded). This is ``cast_column``'s own shortcut, on the
    Dataset's private fields as it does (tests/test_image_paths.py checks that nothing is written)."""
    import copy

    from datasets.arrow_dataset import update_metadata_with_features
    from datasets.fingerprint import Hasher

    relabelled = copy.deepcopy(dataset)  # shares the (immutable) Arrow tables
    relabelled._info.features[column] = feature
    relabelled._data = update_metadata_with_features(
        relabelled._data.cast(relabelled._info.features.arrow_schema), relabelled._info.features
    )
    relabelled._fingerprint = Hasher.hash((dataset._fingerprint, "relabelled", column, str(feature)))
    return relabelled


def load_images(image_processor, images, where: str) -> list:
    """A row's images as the model is given them: each decoded by ``image_processor.load_image`` (the one loader
    every Eagle command uses). ``images`` holds what a loaded dataset gives: ``datasets``' undecoded
    ``{"bytes", "path"}`` entries, paths, or PIL images. A file that cannot be decoded (missing, corrupt,
    truncated, over the pixel cap) raises :class:`DataFormatError` naming ``where``, the image and its file."""
    loaded = []
    for index, image in enumerate(images or []):
        label = f"{where} image {index}"
        if isinstance(image, dict):
            path, data = image.get("path"), image.get("bytes")
            if data is not None:
                label, image = (f"{label} ({path})" if path else label), io.BytesIO(data)
            elif path is not None:
                image = path
            else:
                raise DataFormatError(f"{label} has neither bytes nor a path: {image!r}")
        try:
            loaded.append(image_processor.load_image(image, where=label))
        except ValueError as error:
            raise DataFormatError(f"{error}; replace the image or remove the sample from the data") from None
    return loaded


def load_hf_dataset(path, split: str | None = None):
    """A local ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``), a JSON/JSONL/parquet file or data folder
    that ``datasets.load_dataset`` reads, or a cached Hub dataset id, with ``images`` + ``messages`` columns.

    ``split`` picks a split of a ``DatasetDict`` or a ``load_dataset`` source (default ``"train"``, or the only one).
    Image paths stored as strings are resolved against the data's folder; images are left undecoded for
    :func:`load_images`.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    text = str(path)
    local = Path(path).expanduser()
    root = None
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        dataset, root = load_from_disk(str(local)), local
    elif local.is_file():
        builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
        builder = builders.get(local.suffix.lower())
        if builder is None:
            raise DataFormatError(f"{local}: unsupported file type {local.suffix!r} (expected {sorted(builders)})")
        dataset, root = load_dataset(builder, data_files=str(local), split=split or "train"), local.parent
    elif local.is_dir():
        dataset, root = load_dataset(str(local), split=split), local
    elif is_hub_id(text):
        try:
            dataset = load_dataset(text, split=split)
        except Exception as error:  # offline without a cache, unknown repo, ...
            raise FileNotFoundError(
                f"{text!r} is neither a local folder or file nor a Hub dataset available here: {error}"
            ) from error
    else:
        raise FileNotFoundError(f"dataset {text} not found (a save_to_disk folder, a data file or folder)")

    if isinstance(dataset, (DatasetDict, dict)):
        names = list(dataset)
        if split is None:
            if "train" in dataset:
                split = "train"
            elif len(names) == 1:
                split = names[0]
            else:
                raise DataFormatError(f"{text} has splits {names}; choose one with split=")
        if split not in dataset:
            raise DataFormatError(f"{text} has no split {split!r}; it has {names}")
        dataset = dataset[split]
    elif split is not None and isinstance(dataset, Dataset) and root is not None and (root / "state.json").is_file():
        logger.warning("%s is a single saved split; ignoring split=%r", text, split)

    _validate_columns(dataset, text)
    dataset = _undecoded_images(dataset, root)
    logger.info("Loaded %d rows from %s", len(dataset), text)
    return dataset


def load_data(spec: dict, base_dir=None):
    """Load one training data source described by ``spec`` (e.g. an entry of a stage's ``data`` list).

    Keys: ``format`` ("llava" or "hf"), ``path``, ``image_folder`` (llava; default the JSON file's folder),
    ``split`` (hf), ``skip_bad`` (llava), ``max_samples`` (optional: the first N rows). Relative paths are resolved
    against ``base_dir`` (the config file's folder; default the working directory).
    """
    if not isinstance(spec, dict):
        raise DataFormatError(f"a data spec must be a mapping with 'format' and 'path', got {spec!r}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        logger.warning("Ignoring unknown data spec key(s) %s (known: %s)", unknown, sorted(SPEC_KEYS))
    kind = spec.get("format")
    if kind not in FORMATS:
        raise DataFormatError(f"data spec format must be one of {list(FORMATS)}, got {kind!r} in {spec!r}")
    if not spec.get("path"):
        raise DataFormatError(f"data spec {spec!r} has no 'path'")
    max_samples = spec.get("max_samples")
    if max_samples is not None and (type(max_samples) is not int or max_samples < 1):
        raise DataFormatError(f"max_samples must be a positive integer, got {max_samples!r}")

    def resolve(value):
        return resolve_path(value, base_dir)

    if kind == "llava":
        if spec.get("split") is not None:
            logger.warning("'split' is ignored for llava data (%s)", spec["path"])
        image_folder = spec.get("image_folder")
        dataset, _ = load_llava_json(
            resolve(spec["path"]),
            resolve(image_folder) if image_folder is not None else None,
            skip_bad=bool(spec.get("skip_bad", False)),
            max_samples=max_samples,
        )
        return dataset

    path = resolve(spec["path"])
    if not path.exists():
        if not is_hub_id(str(spec["path"])):
            raise FileNotFoundError(f"dataset {path} not found")
        try:
            return _first(load_hf_dataset(spec["path"], split=spec.get("split")), max_samples)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"dataset {spec['path']!r} not found: no {path}, and {error}") from error
    if spec.get("image_folder") is not None or spec.get("skip_bad"):
        logger.warning("'image_folder' and 'skip_bad' apply to llava data only; ignored for %s", spec["path"])
    return _first(load_hf_dataset(path, split=spec.get("split")), max_samples)


def _first(dataset, max_samples: int | None):
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset
