"""Input helpers that are not remote code: the chat templates Eagle was trained with and the tokenizer built on this
machine for presets. The image processor and processor are remote code and live with the model
(``eagle_hub.modeling_eagle``)."""
