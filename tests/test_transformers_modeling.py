"""transformers' own common tests on Eagle: `ModelTesterMixin`, `GenerationTesterMixin` and `ConfigTester`.

The tester is modelled on transformers' LLaVA test (tests/models/llava/test_modeling_llava.py): a batch of 3 prompts,
the tiny `eagle-x5-tiny` config, 7 text tokens after the image's 16 placeholders, and `pixel_values` as Eagle takes
it, a list with one tensor per vision expert. Where a common test slices a batch, or reads `.shape`, of tensor-valued
`pixel_values`, this class overrides it with a list-aware version that checks the same property, as transformers'
own test classes do for models with unusual inputs. The only skips are LLaVA's (and those of hardware or optional
packages this machine lacks), listed in README.md's testing section.
"""

import copy
import os
import tempfile
import unittest
from unittest import mock

import pytest
import torch
import transformers_common  # noqa: F401  (puts transformers' test mixins on sys.path)
from conftest import pix2struct_patches
from parameterized import parameterized
from safetensors.torch import load_file
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, compare_state_dicts, floats_tensor, ids_tensor
from transformers import set_seed
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.exporters.base import ExportedModel
from transformers.models.auto import modeling_auto
from transformers.testing_utils import set_config_for_less_flaky_test, set_model_for_less_flaky_test
from transformers.utils import ModelOutput

from eagle_hub.modeling_eagle import EagleConfig, EagleForConditionalGeneration, EagleModel
from eagle_hub.modeling_eagle.presets import eagle_config


def batch_rows(inputs: dict, rows: slice) -> dict:
    """``inputs`` for the prompts in ``rows``: batch tensors and every expert's pixel tensor are sliced alike (the
    tester gives each prompt one image)."""
    sliced = {}
    for key, value in inputs.items():
        if key == "pixel_values":
            sliced[key] = [pixels[rows] for pixels in value]
        elif isinstance(value, torch.Tensor):
            sliced[key] = value[rows]
        else:
            sliced[key] = value
    return sliced


def expected_hidden_states(spec: dict) -> int:
    """Hidden states an expert reports: its first block's input and every block's output."""
    architecture = spec["config"]
    blocks = sum(architecture["depths"]) if spec["type"] == "convnext" else architecture["num_hidden_layers"]
    return blocks + 1


def expected_attentions(spec: dict) -> int:
    return 0 if spec["type"] == "convnext" else spec["config"]["num_hidden_layers"]


class EagleModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, vocab_size=99, image_token_id=0, pad_token_id=1):
        self.parent = parent
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.image_token_id = image_token_id
        self.pad_token_id = pad_token_id
        self.is_training = True
        config = self.get_config()
        self.num_image_tokens = config.image_seq_length
        self.seq_length = seq_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length
        self.hidden_size = config.text_config.hidden_size
        self.num_hidden_layers = config.text_config.num_hidden_layers
        self.num_attention_heads = config.text_config.num_attention_heads

    def get_config(self):
        config = eagle_config("eagle-x5-tiny", vocab_size=self.vocab_size, image_token_id=self.image_token_id)
        config.text_config.pad_token_id = self.pad_token_id
        return config

    def pixel_values(self, config, n_images):
        pixel_values = []
        for spec in config.vision_config.experts:
            if spec["type"] == "pix2struct":
                pixel_values.append(pix2struct_patches(n_images, spec["max_patches"]))
            else:
                pixel_values.append(floats_tensor([n_images, 3, spec["image_size"], spec["image_size"]]))
        return pixel_values

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        # Text ids avoid the image token (0) and padding (1). The first prompt is left-padded by one token, the same in
        # every run (LLaVA's tester pads where its random ids happen to hit the pad id, so its padding-free tests run
        # in some runs and skip in others).
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        attention_mask = torch.ones_like(input_ids)
        input_ids[:, 1 : 1 + self.num_image_tokens] = self.image_token_id
        input_ids[0, 0], attention_mask[0, 0] = self.pad_token_id, 0
        inputs = {
            "pixel_values": self.pixel_values(config, self.batch_size),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        return config, inputs


class EagleModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (EagleModel, EagleForConditionalGeneration)
    _is_composite = True
    # The mixin exempts models whose config file says they were added before 2023 (Eagle's carries no copyright
    # line, which reads as "old"); Eagle's `_init_weights` covers every weight, so the test runs.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        # The common tests find a model's task classes by name in transformers' auto mappings (to add labels, to
        # pick the base model of the RoPE tests, to run the causal-LM loss test). Registering Eagle with the Auto
        # classes at run time adds no names there, so the class adds them as an in-tree model has them.
        cls.patches = [
            mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"eagle": "EagleModel"}),
            mock.patch.dict(
                modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, {"eagle": "EagleForConditionalGeneration"}
            ),
        ]
        # The shared export tests come from a transformers fork older than 5.24, whose exporter returns an
        # ExportedModel: they call `.module()` on it, which 5.24 spells `.program.module()` (LLaVA's export tests
        # fail the same way without this).
        cls.patches.append(
            mock.patch.object(ExportedModel, "module", lambda exported: exported.program.module(), create=True)
        )
        for patch in cls.patches:
            patch.start()
        # Every op of the tiny model is microseconds of work: a second thread only adds synchronisation (on a busy
        # 2-core machine it doubled the run's CPU time).
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        for patch in cls.patches:
            patch.stop()
        torch.set_num_threads(cls.threads)

    def setUp(self):
        self.model_tester = EagleModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=EagleConfig, has_text_modality=False, common_properties=["image_token_id"]
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def prepare_config_and_inputs_for_generate(self, batch_size=2):
        config, inputs = super().prepare_config_and_inputs_for_generate(batch_size)
        inputs["pixel_values"] = [pixels[:batch_size] for pixels in inputs["pixel_values"]]
        return config, inputs

    @pytest.mark.slow
    def test_generate_compilation_all_outputs(self):
        # Compiles the model again for every output option (about 20 s on a CPU); fullgraph compilation itself is
        # checked by test_generate_compile_model_forward_fullgraph in the default run.
        super().test_generate_compilation_all_outputs()

    # ------------------------------------------------------------------------------------ list-aware versions

    def test_batching_equivalence(self, atol=1e-5, rtol=1e-5):
        """The first prompt alone, with its image in every expert's tensor, gives the first row of every batched
        output (logits, hidden states, the image outputs), as in the mixin's version."""

        def check(batched, single, key):
            if isinstance(batched, (list, tuple)):
                for batched_value, single_value in zip(batched, single):
                    check(batched_value, single_value, key)
            elif isinstance(batched, dict):
                for name in batched:
                    check(batched[name], single[name], f"{key}.{name}")
            elif isinstance(batched, torch.Tensor) and batched.dim() > 0 and torch.is_floating_point(batched):
                row = batched[tuple(slice(0, size) for size in single.shape)]
                self.assertTrue(torch.isfinite(row).all() and torch.isfinite(single).all(), key)
                torch.testing.assert_close(row, single, atol=atol, rtol=rtol, msg=key)

        set_seed(42)
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        set_config_for_less_flaky_test(config)
        config.output_hidden_states = True
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).eval()
            set_model_for_less_flaky_test(model)
            batched_inputs = self._prepare_for_class(inputs, model_class)
            with torch.no_grad():
                batched = model(**batched_inputs)
                single = model(**batch_rows(batched_inputs, slice(0, 1)))
            for key in batched:
                check(batched[key], single[key], f"{model_class.__name__}.{key}")

    def test_generate_compile_model_forward_fullgraph(self):
        # The mixin splits the batch of prompts into two halves but hands each half every list input unsliced: give
        # it half as many images, so that each half's prompts (different texts) have an image each.
        prepare = self.prepare_config_and_inputs_for_generate

        def images_for_half_the_prompts(batch_size=2):
            config, inputs = prepare(batch_size)
            half = inputs["input_ids"].shape[0] // 2
            inputs["pixel_values"] = [pixels[:half] for pixels in inputs["pixel_values"]]
            return config, inputs

        with mock.patch.object(self, "prepare_config_and_inputs_for_generate", images_for_half_the_prompts):
            super().test_generate_compile_model_forward_fullgraph()

    @parameterized.expand([True, False, None])
    def test_get_image_features_output(self, return_dict: bool | None):
        """A ModelOutput with one row of `last_hidden_state` (grid**2 positions of the experts' concatenated
        channels) and one `pooler_output` entry per image, or a tuple with `return_dict=False`."""
        for model_class in self.all_model_classes:
            config, inputs = self._image_features_prepare_config_and_inputs()
            if return_dict is not None:
                config.return_dict = return_dict
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model.get_image_features(**inputs)
            if return_dict is False:
                self.assertIsInstance(outputs, tuple)
                continue
            self.assertIsInstance(outputs, ModelOutput)
            n_images = inputs["pixel_values"][0].shape[0]
            tower = model.get_submodule("model.vision_tower" if hasattr(model, "model") else "vision_tower")
            self.assertEqual(outputs.last_hidden_state.shape, (n_images, config.image_seq_length, tower.hidden_size))
            self.assertEqual(len(outputs.pooler_output), n_images)

    def test_get_image_features_hidden_states(self):
        """A mixture's hidden states: a dict with each expert's tuple, one more than its blocks, asked for by
        argument or by the config; the features themselves do not change."""

        def check(model, inputs):
            with torch.no_grad():
                hidden_states = model.get_image_features(**inputs).hidden_states
            experts = config.vision_config.experts
            self.assertEqual(list(hidden_states), [spec["name"] for spec in experts])
            for spec in experts:
                states = hidden_states[spec["name"]]
                self.assertEqual(len(states), expected_hidden_states(spec), spec["name"])
                self.assertTrue(all(state.shape[0] == self.model_tester.batch_size for state in states))

        for model_class in self.all_model_classes:
            config, inputs = self._image_features_prepare_config_and_inputs()
            self._check_features_ignore_output_hidden_states(model_class, config, inputs, "get_image_features")
            check(model_class(copy.deepcopy(config)).eval(), {**inputs, "output_hidden_states": True})
            config.output_hidden_states = config.vision_config.output_hidden_states = True
            check(model_class(copy.deepcopy(config)).eval(), inputs)

    def test_get_image_features_attentions(self):
        """A mixture's attention maps: a dict with each expert's tuple, one per attention layer (none for ConvNeXt),
        asked for by argument or by the config."""

        def check(model, inputs):
            model.set_attn_implementation("eager")
            with torch.no_grad():
                attentions = model.get_image_features(**inputs).attentions
            for spec in config.vision_config.experts:
                maps = attentions[spec["name"]]
                self.assertEqual(len(maps), expected_attentions(spec), spec["name"])
                self.assertTrue(all(isinstance(weights, torch.Tensor) for weights in maps), spec["name"])

        for model_class in self.all_model_classes:
            config, inputs = self._image_features_prepare_config_and_inputs()
            check(model_class(copy.deepcopy(config)).eval(), {**inputs, "output_attentions": True})
            config.output_attentions = config.vision_config.output_attentions = True
            check(model_class(copy.deepcopy(config)).eval(), inputs)

    # ------------------------------------------------------------------- checkpoints without key conversions

    def test_reverse_loading_mapping(self):
        """The mixin checks a model's weight renamings and conversions, and skips models without any. Eagle has
        none (checkpoints are saved in the modules' layout): check that, and that a save keeps exactly the model's
        keys and reloads them unchanged."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertEqual(list(get_model_conversion_mapping(model, add_legacy=False)), [])
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                saved = load_file(os.path.join(folder, "model.safetensors"))
                reloaded = model_class.from_pretrained(folder)
            self.assertEqual(sorted(saved), sorted(model.state_dict()))
            self.assertTrue(compare_state_dicts(reloaded.state_dict(), model.state_dict()))

    def test_can_load_from_already_mapped_keys(self):
        """The mixin's version, which it skips for models without conversions: a checkpoint saved with
        `save_original_format=False` reloads unchanged."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder, save_original_format=False)
                reloaded = model_class.from_pretrained(folder)
            self.assertTrue(compare_state_dicts(model.state_dict(), reloaded.state_dict()))
