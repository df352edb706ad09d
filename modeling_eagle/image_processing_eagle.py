"""Image processor of Eagle: one image in, one pixel tensor per vision expert out.

Eagle feeds the same picture to several vision experts (CLIP, ConvNeXt, SAM, EVA-02, Pix2Struct). This
processor turns each image into the input every expert expects and returns them as ONE list under
``pixel_values`` (one float32 tensor per expert, in expert order), which is how the pixels travel through
``generate``, pipelines and trainers.

Two modes:

* ``"per_expert"`` (default): every expert gets its own resolution and normalisation. The image is padded to a
  square with the expert's mean colour (``resize_mode="pad"``, LLaVA's ``expand2square``) or stretched
  (``resize_mode="resize"``), then resized with PIL bicubic to the expert's ``image_size``.
* ``"released"``: reproduces the authors' ``process_images`` for the released checkpoints: one shared tensor
  (pad with the CLIP mean colour, PIL bicubic to ``shared_size``, CLIP normalisation) from which every expert's
  input is derived exactly as the original tower did (bilinear ``align_corners=True`` for other sizes, and
  de-normalisation back to 0..255 for Pix2Struct).

Pix2Struct's input is its flattened patches ``(n_images, max_patches, 2 + 3 * p * p)``: per-image
standardisation, antialiased bilinear resize to the largest patch grid that fits ``max_patches``, patches
flattened row-major with the channel fastest, each row prefixed by its 1-based row and column ids and the rest
zero-padded, as transformers' ``Pix2StructImageProcessor`` computes them.
"""

import copy
import math
import threading
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format
from transformers.processing_utils import ImagesKwargs, Unpack

from .configuration_eagle import (
    CLIP_MEAN,
    CLIP_STD,
    PATCH_EXPERT_TYPES,
    as_three_floats,
    check_expert_input,
    released_expert_specs,
)

MODES = ("per_expert", "released")
RESIZE_MODES = ("pad", "resize")
_EXPERT_KEYS = ("name", "type", "image_size", "image_mean", "image_std", "max_patches", "patch_size")


def expert_inputs(experts: Any) -> list[dict]:
    """The input side of model config expert entries (`EagleVisionConfig.experts`): `name`, `type`, `image_size`,
    `image_mean`, `image_std`, and for Pix2Struct `max_patches` and `config["patch_size"]`."""
    entries = []
    for index, spec in enumerate(experts):
        if not isinstance(spec, dict):
            raise ValueError(f"vision expert {index} must be a dict, got {type(spec).__name__}")
        entry = {key: copy.deepcopy(spec.get(key)) for key in ("name", "type", "image_size", "image_mean")}
        entry["image_std"] = copy.deepcopy(spec.get("image_std"))
        if spec.get("type") in PATCH_EXPERT_TYPES:
            entry["max_patches"] = spec.get("max_patches")
            entry["patch_size"] = (spec.get("config") or {}).get("patch_size", 16)
        entries.append(entry)
    return entries


# The experts of the default `EagleConfig()` (Eagle-X5 at 448 pixels), so that the defaults work together.
DEFAULT_EXPERTS = expert_inputs(released_expert_specs())


class EagleImageProcessorKwargs(ImagesKwargs, total=False):
    """
    experts (`list[dict]`, *optional*):
        One entry per vision expert, in model order: `name`, `type` (`clip`, `convnext`, `sam`, `eva02`,
        `pix2struct`, `dinov2`), `image_size`, `image_mean`/`image_std` (3 floats; `None` for Pix2Struct), and for
        Pix2Struct `max_patches` and `patch_size` (default 16).
    mode (`str`, *optional*, defaults to `"per_expert"`):
        `"per_expert"` (each expert at its own size and normalisation) or `"released"` (the authors' shared
        1024 tensor, reproducing the released checkpoints' preprocessing).
    resize_mode (`str`, *optional*, defaults to `"pad"`):
        Per-expert mode only: `"pad"` (pad to a square with the mean colour, then resize) or `"resize"` (stretch).
    shared_size (`int`, *optional*, defaults to 1024):
        Released mode only: side of the shared tensor.
    shared_mean (`list[float]`, *optional*, defaults to the OpenAI-CLIP mean):
        Released mode only: normalisation mean of the shared tensor (its pad colour is `int(255 * mean)`).
    shared_std (`list[float]`, *optional*, defaults to the OpenAI-CLIP std):
        Released mode only: normalisation std of the shared tensor.
    """

    experts: list[dict] | None
    mode: str | None
    resize_mode: str | None
    shared_size: int | None
    shared_mean: list[float] | tuple[float, ...] | None
    shared_std: list[float] | tuple[float, ...] | None
    max_image_pixels: int | None


def _composite_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as transformers does); 16-bit and float images are
    scaled to 8 bits rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data (or 32-bit holding it) spans 0..65535: scale down; 8-bit values kept in "I" stay as they are.
        values = values / 257.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else values
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max(initial=0) <= 1.0 else values
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB")


def _check_pixels(width: int, height: int, limit: int, where: str) -> None:
    """Refuse images whose pixels, or the square canvas padding makes of them, exceed the cap: a decompression
    bomb or a 1x10**6 strip would otherwise allocate gigabytes."""
    if width * height > limit:
        raise ValueError(
            f"{where} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{limit / 1e6:.1f} (max_image_pixels); downscale it, or raise the processor's max_image_pixels"
        )
    side = max(width, height)
    if side * side > 4 * limit:
        raise ValueError(
            f"{where} is {width}x{height}: padding it to a square would make {side}x{side}, over 4x the limit of "
            f"{limit / 1e6:.1f} megapixels (max_image_pixels); crop it to a less extreme aspect ratio"
        )


def open_image(source, where: str, limit: int) -> Image.Image:
    """Open a path or a binary file object (or take a PIL image), check its size before decoding, use its first
    frame, apply its EXIF orientation and decode it; every failure names the input."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if hasattr(source, "read"):
            # An image file in memory (`datasets` embeds images as bytes): opened here, so it meets a path's checks.
            text, stream = "the image data given", source
        else:
            text = stream = str(source)
            if text.startswith(("http://", "https://")):
                raise ValueError(f"{where} is a URL ({text}); download it and pass the file or a PIL image")
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as error:
            raise ValueError(
                f"{where}: {text} is refused as a decompression bomb by Pillow ({error}); a larger max_image_pixels "
                "also needs PIL.Image.MAX_IMAGE_PIXELS raised"
            ) from None
        except FileNotFoundError:
            raise ValueError(f"{where}: file not found: {text}") from None
        except IsADirectoryError:
            raise ValueError(f"{where}: {text} is a folder, not an image file") from None
        except (UnidentifiedImageError, OSError) as error:
            # Pillow names the stream in this message; an in-memory one's repr says nothing to the reader.
            unnamed = isinstance(error, UnidentifiedImageError) and not isinstance(stream, str)
            detail = "no image format Pillow reads" if unnamed else error
            raise ValueError(f"{where}: {text} is not a readable image ({detail})") from None
        if isinstance(stream, str):
            where = f"{where} ({text})"
    _check_pixels(image.width, image.height, limit, where)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP/APNG: the first frame
    try:
        with _strict_decoding():
            image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{where} cannot be decoded ({error}); the file is corrupt or truncated") from None
    return image


_DECODING = threading.Lock()


@contextmanager
def _strict_decoding():
    """Decode with Pillow's LOAD_TRUNCATED_IMAGES off. It is process-wide, and harnesses turn it on (lmms-eval does
    when imported), after which a file cut short decodes with its missing rows filled in grey: here that must stay
    an error, whatever else the process imported."""
    with _DECODING:
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive int, got {value!r}")
    return value


def _normalize_expert(spec: Any, index: int) -> dict:
    """Check one expert entry (the config's rules for an expert's input) and fill its defaults."""
    where = f"experts[{index}]"
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_EXPERT_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {list(_EXPERT_KEYS)}")
    patch = _positive_int(16 if spec.get("patch_size") is None else spec["patch_size"], f"{where}.patch_size")
    entry = check_expert_input({key: value for key, value in spec.items() if key != "patch_size"}, where, patch)
    if entry["type"] in PATCH_EXPERT_TYPES:
        entry["patch_size"] = patch
    return entry


def _pix2struct_grid(height: int, width: int, max_patches: int, patch: int) -> tuple[int, int]:
    """Rows and columns of the largest patch grid that keeps the aspect ratio and fits ``max_patches``."""
    if height == width:
        # Same value as the float formula below, without the risk of float error dropping a row.
        side = max(min(math.isqrt(max_patches), max_patches), 1)
        return side, side
    scale = math.sqrt(max_patches * (patch / height) * (patch / width))
    rows = max(min(math.floor(scale * height / patch), max_patches), 1)
    cols = max(min(math.floor(scale * width / patch), max_patches), 1)
    return rows, cols


def _pix2struct_patches(pixels: torch.Tensor, max_patches: int, patch: int, standardize: bool = True) -> torch.Tensor:
    """Pix2Struct's flattened patches of ``pixels`` (n, 3, H, W) float 0..255 -> (n, max_patches, 2 + 3*p*p).
    ``standardize`` (the processor's ``do_normalize``) standardises each image first, as Pix2Struct's processor."""
    n, channels, height, width = pixels.shape
    if standardize:
        # Per-image standardisation over every pixel and channel; std floored at 1/sqrt(N) (computed in float64).
        flat = pixels.reshape(n, -1).double()
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, correction=0).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        pixels = ((pixels - mean.float().view(n, 1, 1, 1)) / std.float().view(n, 1, 1, 1)).float()

    rows, cols = _pix2struct_grid(height, width, max_patches, patch)
    pixels = F.interpolate(
        pixels, size=(rows * patch, cols * patch), mode="bilinear", align_corners=False, antialias=True
    )
    # (n, C, rows, p, cols, p) -> (n, rows, cols, p_h, p_w, C): patches row-major, channel fastest.
    patches = pixels.reshape(n, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(n, rows * cols, patch * patch * channels)
    row_ids = torch.arange(1, rows + 1, dtype=torch.float32).repeat_interleave(cols)
    col_ids = torch.arange(1, cols + 1, dtype=torch.float32).repeat(rows)
    ids = torch.stack([row_ids, col_ids], dim=-1).expand(n, -1, -1)
    out = torch.zeros(n, max_patches, 2 + patch * patch * channels, dtype=torch.float32)
    out[:, : rows * cols, :2] = ids
    out[:, : rows * cols, 2:] = patches
    return out


def _expand2square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square: centre the image on a square canvas of ``color``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _mean_colour(mean: list[float] | tuple[float, ...]) -> tuple[int, int, int]:
    return tuple(int(m * 255) for m in mean)


def _to_uint8_hwc(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def _channels(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def _rescale_and_normalize(
    batch: np.ndarray, rescale_factor: float | None, mean: list[float] | None, std: list[float] | None
) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32: times ``rescale_factor`` (in float64, as transformers rescales),
    then (x - mean) / std. ``None`` skips a step (``do_rescale`` / ``do_normalize`` off)."""
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).double()
    if rescale_factor is not None:
        pixels = pixels.mul(rescale_factor)
    pixels = pixels.float()
    if mean is not None:
        pixels = (pixels - _channels(mean)) / _channels(std)
    return pixels.contiguous()


def _array_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Bring an HWC array of any numeric dtype to uint8 0..255 (floats in [0, 1] are scaled by 255)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"{where} has integer values outside 0..255 ([{array.min()}, {array.max()}])")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{where} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            array = array.astype(np.float64) * 255.0
        elif low < 0.0 or high > 255.0:
            raise ValueError(
                f"{where} has float values in [{low}, {high}]; expected [0, 1] or [0, 255] (un-normalised pixels)"
            )
        return np.clip(np.round(array), 0, 255).astype(np.uint8)
    raise ValueError(f"{where} has unsupported dtype {array.dtype}")


class EagleImageProcessor(PilBackend):
    r"""
    Image processor of Eagle (mixture of vision experts). `__call__(images, return_tensors="pt")` returns
    `BatchFeature({"pixel_values": [tensor_expert0, tensor_expert1, ...]})`: one float32 tensor per expert, in
    `experts` order, `(n_images, 3, S, S)` for image experts and `(n_images, max_patches, 2 + 3 * p * p)` for
    Pix2Struct. `images` may be one image, a list, or a nested list (one list per prompt, flattened in order) of
    PIL images, numpy arrays or torch tensors (HWC or CHW; 1, 3 or 4 channels; converted to RGB).

    Args:
        experts (`list[dict]`, *optional*, defaults to the experts of `EagleConfig()`): see
            `EagleImageProcessorKwargs`.
        mode (`str`, *optional*, defaults to `"per_expert"`): `"per_expert"` or `"released"`.
        resize_mode (`str`, *optional*, defaults to `"pad"`): `"pad"` or `"resize"` (per-expert mode).
        shared_size (`int`, *optional*, defaults to 1024): side of the shared tensor (released mode).
        shared_mean / shared_std (`list[float]`, *optional*, default OpenAI CLIP): its normalisation.
    """

    valid_kwargs = EagleImageProcessorKwargs
    model_input_names = ["pixel_values"]
    do_convert_rgb = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True

    experts = DEFAULT_EXPERTS
    mode = "per_expert"
    resize_mode = "pad"
    shared_size = 1024
    max_image_pixels = 1024**3 // 4 // 3  # 89.5 M: Pillow's default PIL.Image.MAX_IMAGE_PIXELS
    shared_mean = list(CLIP_MEAN)
    shared_std = list(CLIP_STD)

    def __init__(self, **kwargs: Unpack[EagleImageProcessorKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def from_vision_experts(cls, experts: Any, **kwargs) -> "EagleImageProcessor":
        """Build the processor from the model config's expert entries (`EagleVisionConfig.experts`).

        Each entry gives `name`, `type`, `image_size`, `image_mean`, `image_std`, and for Pix2Struct
        `max_patches` and `config["patch_size"]`. An `EagleVisionConfig` (anything with `.experts`) is accepted too.
        """
        if hasattr(experts, "experts"):
            experts = experts.experts
        return cls(experts=expert_inputs(experts), **kwargs)

    # ----------------------------------------------------------------------------------------- kwargs
    def _standardize_kwargs(self, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        experts = kwargs.get("experts")
        if experts is not None:
            if not isinstance(experts, (list, tuple)) or len(experts) == 0:
                raise ValueError(f"experts must be a non-empty list of expert dicts, got {experts!r}")
            kwargs["experts"] = [_normalize_expert(spec, i) for i, spec in enumerate(experts)]
        mode = kwargs.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        resize_mode = kwargs.get("resize_mode")
        if resize_mode is not None and resize_mode not in RESIZE_MODES:
            raise ValueError(f"Unknown resize_mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
        if kwargs.get("shared_size") is not None:
            _positive_int(kwargs["shared_size"], "shared_size")
        if kwargs.get("max_image_pixels") is not None:
            _positive_int(kwargs["max_image_pixels"], "max_image_pixels")
        for key in ("shared_mean", "shared_std"):
            if kwargs.get(key) is not None:
                kwargs[key] = as_three_floats(kwargs[key], key)
        return kwargs

    def _validate_preprocess_kwargs(self, **kwargs):
        # The standard resize and crop flags are unused (each expert has its own size), `do_rescale` and
        # `do_normalize` apply per expert, and `_standardize_kwargs` has checked the experts' settings.
        pass

    # ----------------------------------------------------------------------------------------- inputs
    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        """Flatten one image / a list / a nested list (or a 4-D batch array) into a flat list, keeping order."""

        def flatten(item: Any) -> list:
            if isinstance(item, (list, tuple)):
                return [image for sub in item for image in flatten(sub)]
            if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == expected_ndims + 1:
                return list(item)
            return [item]

        flat = flatten(images)
        if not flat:
            raise ValueError("No images were given to EagleImageProcessor")
        return flat

    def _prepare_image_like_inputs(
        self, images: Any, *args, expected_ndims: int = 3, input_data_format=None, **kwargs
    ) -> list[Image.Image]:
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        return [
            self.process_image(image, input_data_format=input_data_format, index=i) for i, image in enumerate(images)
        ]

    def load_image(self, source, where: str = "image") -> Image.Image:
        """The RGB image in a file (a path or a binary file object) or a PIL image, as every Eagle command opens one:
        size checked against ``max_image_pixels`` before decoding, first frame, EXIF orientation applied,
        transparency over white. Every failure is a ``ValueError`` that names ``where`` and the file."""
        image = open_image(source, where, self.max_image_pixels)
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{where} has size {image.width}x{image.height} (width x height); it must not be empty")
        return image if image.mode == "RGB" else _composite_to_rgb(image)

    def process_image(self, image: Any, input_data_format=None, index: int = 0, **kwargs) -> Image.Image:
        """Convert one input (a path, PIL image, numpy array or torch tensor) to an RGB PIL image; errors name the
        input."""
        where = f"image {index}"
        if isinstance(image, (str, Image.Image)) or hasattr(image, "__fspath__"):
            return self.load_image(image, where)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.dtype == torch.bfloat16 or image.dtype == torch.float16:
                image = image.float()
            image = image.numpy()
        if not isinstance(image, np.ndarray):
            raise ValueError(f"{where} has unsupported type {type(image).__name__}; give a PIL image, array or tensor")
        if image.ndim == 2:
            image = image[..., None]
            layout = ChannelDimension.LAST
        elif image.ndim == 3:
            if input_data_format is not None:
                layout = ChannelDimension(input_data_format)
            else:
                try:
                    layout = infer_channel_dimension_format(image, num_channels=(1, 3, 4))
                except ValueError:
                    raise ValueError(
                        f"{where} has shape {tuple(image.shape)}: expected 1, 3 or 4 channels (HWC or CHW)"
                    ) from None
        else:
            raise ValueError(f"{where} has {image.ndim} dimensions (shape {tuple(image.shape)}); expected 2 or 3")
        if layout == ChannelDimension.FIRST:
            image = np.moveaxis(image, 0, -1)
        height, width, channels = image.shape
        if height == 0 or width == 0:
            raise ValueError(f"{where} has size {width}x{height} (width x height); it must not be empty")
        _check_pixels(width, height, self.max_image_pixels, where)
        if channels not in (1, 3, 4):
            raise ValueError(f"{where} has {channels} channels (shape {tuple(image.shape)}); expected 1, 3 or 4")
        image = _array_to_uint8(np.ascontiguousarray(image), where)
        if channels == 1:
            image = np.repeat(image, 3, axis=-1)
        elif channels == 4:
            return _composite_to_rgb(Image.fromarray(image, mode="RGBA"))
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")

    # ----------------------------------------------------------------------------------------- processing
    def _preprocess(
        self,
        images: list[Image.Image],
        experts: list[dict],
        mode: str,
        resize_mode: str,
        shared_size: int,
        shared_mean: list[float],
        shared_std: list[float],
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        # transformers' generic flags: `do_rescale` multiplies 0..255 pixels by `rescale_factor`; `do_normalize`
        # applies each expert's mean and std (Pix2Struct: its per-image standardisation).
        rescale_factor = rescale_factor if do_rescale else None
        if mode == "released":
            pixel_values = self._released(
                images, experts, shared_size, shared_mean, shared_std, rescale_factor, do_normalize
            )
        else:
            pixel_values = self._per_expert(images, experts, resize_mode, rescale_factor, do_normalize)
        if return_tensors is not None and str(getattr(return_tensors, "value", return_tensors)) == "np":
            pixel_values = [tensor.numpy() for tensor in pixel_values]
        return BatchFeature(data={"pixel_values": pixel_values}, skip_tensor_conversion=["pixel_values"])

    def _per_expert(
        self,
        images: list[Image.Image],
        experts: list[dict],
        resize_mode: str,
        rescale_factor: float | None,
        do_normalize: bool,
    ) -> list[torch.Tensor]:
        squares: dict[tuple, np.ndarray] = {}  # (side, pad colour) -> (n, side, side, 3) uint8, shared by experts

        def square_batch(side: int, colour: tuple[int, int, int]) -> np.ndarray:
            key = (side, colour if resize_mode == "pad" else None)
            if key not in squares:
                out = []
                for image in images:
                    if resize_mode == "pad":
                        image = _expand2square(image, colour)
                    out.append(_to_uint8_hwc(image.resize((side, side), resample=Image.Resampling.BICUBIC)))
                squares[key] = np.stack(out)
            return squares[key]

        pixel_values = []
        for spec in experts:
            side = spec["image_size"]
            if spec["type"] in PATCH_EXPERT_TYPES:
                colour = _mean_colour(spec["image_mean"] or CLIP_MEAN)
                pixels = torch.from_numpy(square_batch(side, colour)).permute(0, 3, 1, 2).float()
                patches = _pix2struct_patches(pixels, spec["max_patches"], spec["patch_size"], do_normalize)
                pixel_values.append(patches)
            else:
                batch = square_batch(side, _mean_colour(spec["image_mean"]))
                mean, std = (spec["image_mean"], spec["image_std"]) if do_normalize else (None, None)
                pixel_values.append(_rescale_and_normalize(batch, rescale_factor, mean, std))
        return pixel_values

    def _released(
        self,
        images: list[Image.Image],
        experts: list[dict],
        shared_size: int,
        shared_mean: list[float],
        shared_std: list[float],
        rescale_factor: float | None,
        do_normalize: bool,
    ) -> list[torch.Tensor]:
        # The authors' process_images: expand2square with int(255 * mean), then CLIPImageProcessor (bicubic
        # shortest edge -> shared_size, centre crop shared_size; the image is square so both are one resize).
        colour = _mean_colour(shared_mean)
        batch = np.stack(
            [
                _to_uint8_hwc(
                    _expand2square(image, colour).resize((shared_size, shared_size), resample=Image.Resampling.BICUBIC)
                )
                for image in images
            ]
        )
        mean, std = (shared_mean, shared_std) if do_normalize else (None, None)
        shared = _rescale_and_normalize(batch, rescale_factor, mean, std)
        pixel_values = []
        for spec in experts:
            if spec["type"] in PATCH_EXPERT_TYPES:
                # The original Pix2Struct tower un-normalised its input back to 0..255 before its processor.
                pixels = shared * _channels(std) + _channels(mean) if do_normalize else shared
                if rescale_factor is not None:
                    pixels = pixels * (1 / rescale_factor)
                patches = _pix2struct_patches(pixels, spec["max_patches"], spec["patch_size"], do_normalize)
                pixel_values.append(patches)
            elif spec["image_size"] == shared_size:
                pixel_values.append(shared)
            else:
                size = (spec["image_size"], spec["image_size"])
                pixel_values.append(F.interpolate(shared, size=size, mode="bilinear", align_corners=True))
        return pixel_values


__all__ = ["EagleImageProcessor"]
