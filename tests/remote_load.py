"""Run in a fresh process: load a saved Eagle folder with trust_remote_code while this package is NOT importable.

Usage: python remote_load.py FOLDER OUT.pt
Saves logits of every Auto class, generated ids and pipeline answers to OUT.pt for the parent test to compare.
"""

import importlib.abc
import sys

PACKAGES = {"eagle_hub", "modeling_eagle", "processing", "training", "hub_cards"}


class BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in PACKAGES:
            raise ImportError(f"{name} must not be needed to load remote code")


sys.meta_path.insert(0, BlockPackage())
sys.path = [p for p in sys.path if p not in ("", ".")]

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    pipeline,
)

folder, out_path = sys.argv[1], sys.argv[2]
image = Image.new("RGB", (48, 40), (20, 160, 40))
result = {"config_class": type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__}
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
result["processor_class"] = type(processor).__name__
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[image], text=[prompt], return_tensors="pt")
result["input_ids"] = inputs["input_ids"]
with torch.no_grad():
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        result[f"{auto.__name__}.class"] = type(model).__name__
        result[f"{auto.__name__}.logits"] = model(**inputs).logits
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    result["AutoModel.class"] = type(base).__name__
    result["AutoModel.hidden"] = base(**inputs).last_hidden_state
    result["generated"] = model.generate(**inputs, max_new_tokens=5, do_sample=False)

pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
chat_input = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
result["pipeline_chat"] = pipe(text=chat_input, max_new_tokens=3)
result["pipeline_raw"] = pipe(images=image, text="<image>\nDescribe.", max_new_tokens=3)
result["pipeline_batched"] = pipe(text=[chat_input, chat_input], max_new_tokens=3, batch_size=2)
for entry in ("pipeline_chat", "pipeline_batched"):
    result[entry] = repr(result[entry])
torch.save(result, out_path)
print("remote load ok")
