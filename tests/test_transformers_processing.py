"""transformers' own common processor tests (`ProcessorTesterMixin`) on the EagleProcessor, set up as transformers'
LLaVA processor test is (tests/models/llava/test_processing_llava.py), from local components: the locally built
tokenizer and an image processor for the tiny `eagle-x5-tiny` experts."""

import unittest

import numpy as np
import torch
import transformers_common  # noqa: F401  (puts transformers' test mixins on sys.path)
from parameterized import parameterized
from tests.test_processing_common import MODALITY_INPUT_DATA, ProcessorTesterMixin

from eagle_hub.modeling_eagle import EagleImageProcessor, EagleProcessor
from eagle_hub.modeling_eagle.presets import eagle_config
from eagle_hub.processing.chat_templates import CHAT_TEMPLATES
from eagle_hub.processing.local_tokenizer import build_tokenizer

CONFIG = eagle_config("eagle-x5-tiny")


class EagleProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = EagleProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return build_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return EagleImageProcessor.from_vision_experts(CONFIG.vision_config)

    @staticmethod
    def prepare_processor_dict():
        return {"chat_template": CHAT_TEMPLATES["vicuna_v1"], "num_image_tokens": CONFIG.image_seq_length}

    @parameterized.expand([(1, "pt"), (2, "pt")])
    def test_apply_chat_template_image(self, batch_size: int, return_tensors: str):
        """The mixin's version, list-aware where it counts the image inputs: Eagle's `pixel_values` holds one tensor
        per expert, each with one row per image."""
        processor = self.get_processor()
        batch_messages = [
            [
                {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
                {"role": "user", "content": [{"type": "text", "text": "Describe this."}]},
            ]
        ] * batch_size

        formatted_prompt = processor.apply_chat_template(batch_messages, add_generation_prompt=True, tokenize=False)
        self.assertEqual(len(formatted_prompt), batch_size)

        tokenized = processor.apply_chat_template(
            batch_messages, add_generation_prompt=True, tokenize=True, return_tensors=return_tensors
        )
        add_special_tokens = not formatted_prompt[0].startswith(processor.tokenizer.bos_token or "\0")
        expected = processor.tokenizer(
            formatted_prompt, return_tensors=return_tensors, add_special_tokens=add_special_tokens
        ).input_ids
        self.assertListEqual(expected.tolist(), tokenized.tolist())

        tokenized_100 = processor.apply_chat_template(
            batch_messages,
            add_generation_prompt=True,
            tokenize=True,
            return_tensors=return_tensors,
            processor_kwargs={
                "padding": "max_length",
                "truncation": True,
                "max_length": self.chat_template_max_length,
            },
        )
        self.assertEqual(len(tokenized_100[0]), self.chat_template_max_length)

        out_dict_text = processor.apply_chat_template(
            batch_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors=return_tensors
        )
        self.assertTrue(all(key in out_dict_text for key in ["input_ids", "attention_mask"]))
        self.assertEqual(len(out_dict_text["input_ids"]), batch_size)

        for idx, url in enumerate(MODALITY_INPUT_DATA["images"][:batch_size]):
            batch_messages[idx][1]["content"] = [batch_messages[idx][1]["content"][0], {"type": "image", "url": url}]
        out_dict = processor.apply_chat_template(
            batch_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors=return_tensors
        )
        self.assertEqual(len(out_dict["input_ids"]), batch_size)
        self.assertEqual(len(out_dict["attention_mask"]), batch_size)
        pixel_values = out_dict[self.images_input_name]
        self.assertEqual(len(pixel_values), len(CONFIG.vision_config.experts))
        self.assertTrue(all(pixels.shape[0] == batch_size for pixels in pixel_values))
        for key in out_dict:
            if key in processor.skip_tensor_conversion:
                self.assertNotIsInstance(out_dict[key], (torch.Tensor, np.ndarray))
            else:
                self.assertIsInstance(out_dict[key], torch.Tensor)

        assistant_message = {"role": "assistant", "content": [{"type": "text", "text": "It is the sound of"}]}
        batch_messages = [messages + [assistant_message] for messages in batch_messages]
        continued = processor.apply_chat_template(batch_messages, continue_final_message=True, tokenize=False)
        self.assertTrue(all(prompt.endswith("It is the sound of") for prompt in continued))
