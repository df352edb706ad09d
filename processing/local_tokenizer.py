"""A small byte-level BPE tokenizer built on this machine, for presets that ship no tokenizer.

Byte-level BPE encodes any text without unknown tokens, so a model initialised from a preset can be
trained and served end to end with nothing downloaded. The merges are learnt from a fixed built-in corpus,
so the same call always yields the same vocabulary.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT: What is in the image? Describe the
picture. How many shapes are there? What colour is the circle? Where is the square? What word is written?
The image shows a red circle, a blue square, a green triangle and a yellow star on a white background.
There are one two three four five six seven eight nine ten objects. It is on the left, right, top, bottom,
centre of the picture. black white grey orange purple pink brown cyan magenta. 0 1 2 3 4 5 6 7 8 9.
The quick brown fox jumps over the lazy dog. Yes. No. I don't know. This is a photo of a cat, a dog, a car,
a house, a tree, a person, a chart, a document, a table, a diagram, text, a sign, a menu, a map.
"""


def build_tokenizer(extra_corpus: list[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the built-in corpus (plus ``extra_corpus``) and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line] + list(extra_corpus or [])
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=2048,
    )
