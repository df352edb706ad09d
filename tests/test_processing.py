"""EagleProcessor: image-token expansion, chat templates with generation markers, decoding, token counts."""

import pytest
import torch
from conftest import chat, make_image
from transformers import AutoProcessor

from eagle_hub.processing.chat_templates import CHAT_TEMPLATES, VICUNA_SYSTEM


def test_each_image_token_expands_to_the_grid(processor):
    text = ["<image>\nOne", "<image><image>\nTwo"]
    images = [make_image(), make_image(seed=1), make_image(seed=2)]
    out = processor(images=images, text=text, return_tensors="pt", padding=True)
    counts = (out["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [16, 32]
    assert processor.num_image_tokens == 16 and processor.image_token == "<image>"
    assert [p.shape[0] for p in out["pixel_values"]] == [3] * 5


def test_processor_refuses_text_and_image_count_mismatch(processor):
    with pytest.raises(ValueError, match="1 '<image>' placeholder\\(s\\) but 2 image\\(s\\)"):
        processor(images=[make_image(), make_image()], text=["<image> only one"], return_tensors="pt")
    with pytest.raises(ValueError, match="2 '<image>' placeholder"):
        processor(text=["<image><image> but no images"], return_tensors="pt")


def test_vicuna_template_renders_the_original_conversation_style(processor):
    messages = chat("What shapes are in the picture?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
        {"role": "user", "content": [{"type": "text", "text": "And colours?"}]},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat shapes are in the picture? ASSISTANT: A square.</s>"
        "USER: And colours? ASSISTANT:"
    )


def test_assistant_mask_covers_only_assistant_replies(processor):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": make_image()}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    mask = out["assistant_masks"][0].bool()
    supervised = processor.tokenizer.decode(out["input_ids"][0][mask])
    assert supervised.strip() == "red</s>"  # byte-level BPE carries the separating space in the token
    assert not (out["input_ids"][0][mask] == processor.image_token_id).any()


def test_assistant_mask_covers_every_reply_of_a_conversation(processor):
    questions, replies = ["Colour?", "Shape?", "How many?"], ["red", "circle", "2"]
    messages = []
    for index, (question, reply) in enumerate(zip(questions, replies)):
        user = [{"type": "text", "text": question}]
        if index == 0:
            user.insert(0, {"type": "image", "image": make_image()})
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        ]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    runs, current = [], []
    for token, supervised in zip(ids, mask):
        if supervised:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    assert [processor.tokenizer.decode(run).strip() for run in runs] == [f"{reply}</s>" for reply in replies]


def test_vicuna_without_system_prompt_renders_the_same_turns(processor):
    messages = [
        *chat("What colour is the circle?"),
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    full = processor.apply_chat_template(messages, chat_template=CHAT_TEMPLATES["vicuna_v1"])
    bare = processor.apply_chat_template(messages, chat_template=CHAT_TEMPLATES["vicuna_v1_no_system"])
    assert VICUNA_SYSTEM in full and VICUNA_SYSTEM not in bare
    assert full.replace(VICUNA_SYSTEM, "") == bare


LLAMA3_RENDERED = (
    f"<s><|start_header_id|>system<|end_header_id|>\n\n{VICUNA_SYSTEM}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat shapes are in the picture?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA square.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd colours?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
CHATML_RENDERED = (
    "<|im_start|>system\nAnswer the questions.<|im_end|>\n"
    "<|im_start|>user\n<image>\nWhat shapes are in the picture?<|im_end|>\n"
    "<|im_start|>assistant\nA square.<|im_end|>\n"
    "<|im_start|>user\nAnd colours?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.mark.parametrize(
    "style, rendered, reply_end",
    [("llama3", LLAMA3_RENDERED, "<|eot_id|>"), ("chatml", CHATML_RENDERED, "<|im_end|>")],
)
def test_other_templates_render_images_and_generation_markers(processor, style, rendered, reply_end):
    messages = chat("What shapes are in the picture?") + [
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
        {"role": "user", "content": [{"type": "text", "text": "And colours?"}]},
    ]
    template = CHAT_TEMPLATES[style]
    assert processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True) == rendered
    # The generation markers cover the reply and its end-of-turn marker, nothing else.
    messages = [
        {"role": "user", "content": [{"type": "image", "image": make_image()}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    out = processor.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
    )
    mask = out["assistant_masks"][0].bool()
    assert processor.tokenizer.decode(out["input_ids"][0][mask]) == f"red{reply_end}"


def test_post_process_and_num_multimodal_tokens(processor):
    ids = processor.tokenizer("a red square", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert processor.post_process_image_text_to_text(ids) == ["a red square"]
    data = processor._get_num_multimodal_tokens(image_sizes=[(480, 640), (10, 10)])
    assert data.num_image_tokens == [16, 16]


def test_processor_round_trip(saved_folder, processor):
    loaded = AutoProcessor.from_pretrained(saved_folder)
    assert type(loaded).__name__ == "EagleProcessor"
    assert loaded.num_image_tokens == processor.num_image_tokens
    assert loaded.image_token_id == processor.image_token_id
    assert loaded.tokenizer.padding_side == "left"
    image = make_image()
    a = processor(images=[image], text=["<image>hi"], return_tensors="pt")
    b = loaded(images=[image], text=["<image>hi"], return_tensors="pt")
    torch.testing.assert_close(a["input_ids"], b["input_ids"])
    for x, y in zip(a["pixel_values"], b["pixel_values"]):
        torch.testing.assert_close(x, y)


def test_tokenizer_without_image_token_is_refused():
    from transformers import PreTrainedTokenizerFast

    from eagle_hub.modeling_eagle import EagleImageProcessor, EagleProcessor
    from eagle_hub.processing.local_tokenizer import build_tokenizer

    plain = build_tokenizer()
    backend = plain.backend_tokenizer
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ValueError, match="has no '<img>' token"):
        EagleProcessor(EagleImageProcessor(), tokenizer, image_token="<img>")
