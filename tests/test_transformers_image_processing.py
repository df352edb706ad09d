"""transformers' own common image-processor tests (`ImageProcessingTestMixin`) on the EagleImageProcessor, with the
experts of the tiny `eagle-x5-tiny` config.

The mixin's `test_call_*` read `.shape` of `pixel_values`; Eagle's is a list with one tensor per expert, so this
class overrides them with list-aware versions that check the same shapes per expert. Eagle's image processor has a
single (PIL) backend: the mixin's two-backend tests skip, and so does its policy test asking new models for a
torchvision backend.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import unittest

import numpy as np
import pytest
import torch
import transformers_common  # noqa: F401  (puts transformers' test mixins on sys.path)
from PIL import Image
from tests.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin

from eagle_hub.modeling_eagle import EagleImageProcessor
from eagle_hub.modeling_eagle.image_processing_eagle import expert_inputs
from eagle_hub.modeling_eagle.presets import eagle_config

EXPERTS = expert_inputs(eagle_config("eagle-x5-tiny").vision_config.experts)


class EagleImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("experts", EXPERTS)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # The mixin looks the classes up by the test's folder name (tests/models/<model>/ in transformers).
        return {"pil": EagleImageProcessor}

    def expected_output_shapes(self, n_images: int) -> list[tuple[int, ...]]:
        """One tensor per expert: (n, 3, S, S) images, or Pix2Struct's (n, max_patches, 2 + 3 * p * p) patches."""
        shapes = []
        for spec in self.experts:
            if spec["type"] == "pix2struct":
                max_patches = spec.get("max_patches") or (spec["image_size"] // 16) ** 2
                shapes.append((n_images, max_patches, 2 + 3 * spec.get("patch_size", 16) ** 2))
            else:
                shapes.append((n_images, self.num_channels, spec["image_size"], spec["image_size"]))
        return shapes


class EagleImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = EagleImageProcessingTester

    def check_call(self, image_inputs):
        """The mixin's `test_call_*` checks, per expert: one image gives a batch of 1, the list a batch of all."""
        tester = self.image_processor_tester
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            single = image_processor(image_inputs[0], return_tensors="pt").pixel_values
            self.assertEqual([tuple(pixels.shape) for pixels in single], tester.expected_output_shapes(1))
            batched = image_processor(image_inputs, return_tensors="pt").pixel_values
            self.assertEqual(
                [tuple(pixels.shape) for pixels in batched], tester.expected_output_shapes(len(image_inputs))
            )

    def test_call_pil(self):
        image_inputs = self.image_processor_tester.prepare_image_inputs(equal_resolution=False)
        self.assertTrue(all(isinstance(image, Image.Image) for image in image_inputs))
        self.check_call(image_inputs)

    def test_call_numpy(self):
        image_inputs = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, numpify=True)
        self.assertTrue(all(isinstance(image, np.ndarray) for image in image_inputs))
        self.check_call(image_inputs)

    def test_call_pytorch(self):
        image_inputs = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, torchify=True)
        self.assertTrue(all(isinstance(image, torch.Tensor) for image in image_inputs))
        self.check_call(image_inputs)

    @unittest.skip(reason="As LLaVA's: 4-channel images are not processed as such (RGBA is composited onto white)")
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip(
        reason="Eagle's image processor has one backend (PIL, with torch for Pix2Struct's patches); transformers "
        "asks in-tree models added after 2025-09 for a torchvision one (LLaVA passes as an older model)"
    )
    def test_new_models_require_torchvision_backend(self):
        pass

    @pytest.mark.slow
    def test_pil_can_run_without_torchvision(self):
        """The mixin's version, in a fresh process that imports this package first, as an installed model registers
        itself there (the mixin's script relies on transformers knowing in-tree models); torchvision is blocked."""
        image_processor = EagleImageProcessor(**self.image_processor_tester.prepare_image_processor_dict())
        processor_inputs = self.image_processor_tester.prepare_processor_inputs(equal_resolution=False)
        expected = image_processor(**processor_inputs, return_tensors=None)
        script = textwrap.dedent(
            """
            import pickle, sys
            sys.modules["torchvision"] = None  # raises ImportError on `import torchvision`

            import eagle_hub.modeling_eagle  # registers Eagle with the Auto classes
            from transformers import AutoImageProcessor

            folder, class_name, inputs_path, outputs_path = sys.argv[1:]
            processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            assert type(processor).__name__ == class_name, type(processor)
            with open(inputs_path, "rb") as f:
                inputs = pickle.load(f)
            with open(outputs_path, "wb") as f:
                pickle.dump(processor(**inputs, return_tensors=None).data, f)
            """
        )
        with tempfile.TemporaryDirectory() as folder:
            image_processor.save_pretrained(folder)
            inputs_path, outputs_path = os.path.join(folder, "inputs.pkl"), os.path.join(folder, "outputs.pkl")
            with open(inputs_path, "wb") as f:
                pickle.dump(processor_inputs, f)
            arguments = [folder, EagleImageProcessor.__name__, inputs_path, outputs_path]
            result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(outputs_path, "rb") as f:
                outputs = pickle.load(f)
        self.assertEqual(list(outputs), list(expected.data))
        for got, want in zip(outputs["pixel_values"], expected["pixel_values"]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
