"""Input helpers that are not remote code, light enough for the command line's parser: where a model or dataset
lives (a Hub id or a path, and the one rule for relative paths), the chat templates Eagle was trained with, and the
tokenizer built on this machine for presets. The image processor and processor are remote code and live with the
model (``eagle_hub.modeling_eagle``)."""
