"""EagleModel / EagleForConditionalGeneration: forward, backward, splicing, generation, errors (tiny, CPU)."""

import pytest
import torch
from conftest import chat, make_image, pix2struct_patches, tiny_model


class EagleModelTester:
    """Builds tiny inputs for a model: prompts through the real processor, images made here."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    def inputs(self, questions=("What colour is it?",), images_per_prompt=(1,), **kwargs):
        texts, images = [], []
        for i, (question, n_images) in enumerate(zip(questions, images_per_prompt)):
            texts.append(self.processor.apply_chat_template(chat(question, n_images), add_generation_prompt=True))
            images += [make_image(40 + 8 * i + j, 32 + 4 * j, seed=10 * i + j) for j in range(n_images)]
        return self.processor(images=images or None, text=texts, return_tensors="pt", padding=True, **kwargs)


@pytest.fixture
def tester(model, processor):
    return EagleModelTester(model, processor)


def test_forward_shapes_and_image_outputs(tester, model):
    inputs = tester.inputs()
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    features = out.image_outputs.pooler_output
    assert len(features) == 1 and features[0].shape == (16, model.config.text_config.hidden_size)
    assert out.image_outputs.last_hidden_state.shape == (1, 16, model.model.vision_tower.hidden_size)


def test_image_features_are_spliced_into_image_token_positions(tester, model):
    """The LLM sees the projected features exactly at the image-token positions and token embeddings elsewhere."""
    inputs = tester.inputs()
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
            tower = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state
            projector = model.model.multi_modal_projector
            expected_image = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(tower)))[0]
            text_embeds = model.get_input_embeddings()(inputs["input_ids"])[0]
    finally:
        hook.remove()
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    assert int(is_image.sum()) == 16
    torch.testing.assert_close(captured["embeds"][0][is_image], expected_image)
    torch.testing.assert_close(captured["embeds"][0][~is_image], text_embeds[~is_image])


def test_backward_reaches_every_expert_projector_and_llm(tester, processor):
    model = tiny_model(processor.tokenizer).train()
    inputs = tester.inputs()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("clip", "convnext", "sam", "eva02", "pix2struct"):
        grads = [p.grad for p in model.model.vision_tower.experts[name].parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tester, processor):
    inputs = tester.inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(processor.tokenizer).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
            kinds = {type(m).__name__ for m in flagged}
            for kind in ("CLIPEncoderLayer", "ConvNextExpert", "SamVisionLayer", "Eva02Block", "LlamaDecoderLayer"):
                assert kind in kinds, kind
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_eager_and_sdpa_agree(tester, processor):
    inputs = tester.inputs()
    logits = {}
    for impl in ("eager", "sdpa"):
        model = tiny_model(processor.tokenizer, attn_implementation=impl)
        assert model.model.vision_tower.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(**inputs).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)


def test_generate_with_and_without_cache_is_equal_and_tower_runs_once(tester, model):
    inputs = tester.inputs()
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert len(calls) == 1
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    finally:
        hook.remove()
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 6
    torch.testing.assert_close(cached, uncached)


def sequence_log_probs(model, inputs, sequences) -> torch.Tensor:
    """Sum of the log-probabilities a forward pass gives each sequence's generated tokens, with its prompt's images."""
    prompts, length = inputs["input_ids"].shape
    repeat = sequences.shape[0] // prompts
    pixel_values = [p.repeat_interleave(repeat, dim=0) for p in inputs["pixel_values"]]
    mask = torch.cat([inputs["attention_mask"].repeat_interleave(repeat, dim=0)] * 2, dim=1)[:, : sequences.shape[1]]
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=mask, pixel_values=pixel_values).logits.float()
    steps = torch.log_softmax(logits[:, length - 1 : -1], dim=-1)
    return steps.gather(-1, sequences[:, length:, None])[..., 0].sum(-1)


def test_beam_search_scores_are_the_log_probabilities_of_its_sequences(tester, model):
    """Each returned beam's score is what a plain forward pass over that sequence, with the prompt's image, gives
    (length_penalty 0: the sum of log-probabilities), the beams come best first, and one beam is greedy search."""
    inputs = tester.inputs(("one",), (1,))
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, length_penalty=0.0)
    beams = model.generate(
        **inputs, num_beams=3, num_return_sequences=3, output_scores=True, return_dict_in_generate=True, **settings
    )
    scores = beams.sequences_scores
    assert (scores[:-1] >= scores[1:]).all(), scores
    torch.testing.assert_close(scores, sequence_log_probs(model, inputs, beams.sequences), rtol=0, atol=1e-4)
    greedy = model.generate(**inputs, **settings)
    torch.testing.assert_close(model.generate(**inputs, num_beams=1, **settings), greedy)


def test_sampling_is_seeded_and_top_k_1_is_greedy(tester, model):
    inputs = tester.inputs(("one", "two"), (1, 2))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(model.generate(**inputs, max_new_tokens=6, do_sample=True, top_p=0.9, temperature=1.5))
    torch.testing.assert_close(runs[0], runs[1])
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=1), greedy)


def test_batched_left_padded_generation_equals_one_by_one(tester, model):
    questions, counts = ("Short?", "A much longer question about the picture?", "Two pictures?"), (1, 1, 2)
    batch = tester.inputs(questions, counts)
    assert tester.processor.tokenizer.padding_side == "left"
    assert (batch["attention_mask"][:, 0] == 0).any(), "the batch should need padding"
    batched = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
    images = 0
    for i, (question, n_images) in enumerate(zip(questions, counts)):
        single = tester.inputs((question,), (n_images,))
        # The same images as in the batch: tester numbers them by position, so rebuild them identically.
        single["pixel_values"] = [p[images : images + n_images] for p in batch["pixel_values"]]
        images += n_images
        alone = model.generate(**single, max_new_tokens=5, do_sample=False)[:, -5:]
        torch.testing.assert_close(batched[i : i + 1], alone)


def test_prompts_without_images_and_mixed_batches(tester, model, processor):
    text_only = processor(text=["<s>Hello there"], return_tensors="pt")
    assert "pixel_values" not in text_only
    out = model.generate(**text_only, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == text_only["input_ids"].shape[1] + 3
    mixed = tester.inputs(("with image", "without"), (1, 0))
    assert mixed["pixel_values"][0].shape[0] == 1
    alone = tester.inputs(("without",), (0,))
    with torch.no_grad():
        logits = model(**mixed).logits
        alone_logits = model(**alone).logits
    # The prompt without an image reads the same in the mixed batch (left-padded) as on its own.
    torch.testing.assert_close(logits[1, -1], alone_logits[0, -1], rtol=1e-4, atol=1e-4)


def test_mismatched_image_tokens_and_images_raise_clear_errors(tester, model):
    inputs = tester.inputs(("two images",), (2,))
    one_image = [p[:1] for p in inputs["pixel_values"]]
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 32, features: 16"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=one_image)
    with pytest.raises(ValueError, match="one tensor per vision expert"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:3])
    with pytest.raises(ValueError, match="different image counts per expert"):
        model(input_ids=inputs["input_ids"], pixel_values=[inputs["pixel_values"][0][:1]] + inputs["pixel_values"][1:])


def test_image_placeholders_without_pixel_values_are_ordinary_tokens(tester, model, processor):
    """As in LLaVA, the model embeds image placeholders as tokens when no images come with them (generation's steps
    after the prefill, an assistant model's drafts); the processor refuses a user's placeholders without images."""
    inputs = tester.inputs()
    with torch.no_grad():
        by_ids = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        by_embeds = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    assert torch.isfinite(by_ids).all()
    torch.testing.assert_close(by_ids, by_embeds)
    prompt = processor.apply_chat_template(chat("What colour is it?"), add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder\(s\) but 0 image\(s\)"):
        processor(text=[prompt], return_tensors="pt")


def test_inputs_embeds_path_matches_input_ids(tester, model):
    inputs = tester.inputs()
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        by_embeds = model(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        ).logits
    torch.testing.assert_close(by_ids, by_embeds)


def test_expert_subsets_and_orders(processor):
    tokenizer = processor.tokenizer
    for experts in (["eva02", "clip"], ["pix2struct"], ["sam", "convnext", "clip"]):
        model = tiny_model(tokenizer, experts=experts)
        assert list(model.model.vision_tower.experts) == experts
        assert model.model.vision_tower.hidden_size == 32 * len(experts)


def test_per_expert_features_are_channel_slices_of_the_fused_output(tester, model):
    inputs = tester.inputs()
    with torch.no_grad():
        out = model.model.vision_tower(inputs["pixel_values"], return_expert_features=True)
    start = 0
    for name, channels in model.model.vision_tower.expert_channels().items():
        torch.testing.assert_close(out.expert_features[name], out.last_hidden_state[..., start : start + channels])
        start += channels
    assert start == out.last_hidden_state.shape[-1]


def test_image_path_exports_with_a_dynamic_image_count(model):
    """torch.export of the tower with a symbolic number of images: the per-expert count checks must not hash or
    branch on it (they once built a set of shapes), and the program must handle other counts."""
    tower = model.model.vision_tower

    def pixel_values(n_images):
        return [
            pix2struct_patches(n_images, spec["max_patches"])
            if spec["type"] == "pix2struct"
            else torch.randn(n_images, 3, spec["image_size"], spec["image_size"])
            for spec in tower.config.experts
        ]

    images = pixel_values(2)
    dynamic_shapes = {"pixel_values": [{0: torch.export.Dim.AUTO} for _ in images]}
    program = torch.export.export(tower, (), {"pixel_values": images}, dynamic_shapes=dynamic_shapes)
    other = pixel_values(3)
    with torch.no_grad():
        expected = tower(other).last_hidden_state
    torch.testing.assert_close(program.module()(pixel_values=other).last_hidden_state, expected)


def test_attention_kernel_flags_follow_the_configured_experts(processor):
    """transformers gives the tower a kernel only where every configured expert has it: SDPA always, flash and flex
    attention not with SAM or Pix2Struct (whose masks and biases only eager and SDPA take)."""
    x5 = tiny_model(processor.tokenizer).model.vision_tower
    assert (x5._supports_sdpa, x5._supports_flash_attn, x5._supports_flex_attn) == (True, False, False)
    with pytest.raises(ValueError, match="flex_attention"):
        x5.set_attn_implementation("flex_attention")
    without = tiny_model(processor.tokenizer, experts=["clip", "convnext", "eva02"]).model.vision_tower
    assert (without._supports_sdpa, without._supports_flash_attn, without._supports_flex_attn) == (True, True, True)
