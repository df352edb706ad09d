"""Chat templates in the conversation styles the released Eagle checkpoints were trained with (LLaVA's ``vicuna_v1``,
``llama3``, ``chatml``).

Every template renders ``{"type": "image"}`` content blocks as ``<image>`` (the first user turn in the original
put the image first, then a newline) and wraps assistant replies in ``{% generation %}`` markers so that
assistant-only loss masks can be computed by ``apply_chat_template(return_assistant_tokens_mask=True)``.
"""

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_CONTENT = (
    "{%- macro render(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for block in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for block in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ block['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)


def _vicuna(system: str) -> str:
    """vicuna_v1: "{system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: ..."."""
    return (
        _CONTENT + "{{- bos_token if bos_token else '' -}}"
        "{%- if messages[0]['role'] == 'system' -%}{{ render(messages[0]) }}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{{ '" + system.replace("'", "\\'") + "' }}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{ ' USER: ' if loop.first else 'USER: ' }}{{ render(message) }}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ASSISTANT: ' }}"
        "{%- generation -%}{{ render(message) }}{{ eos_token }}{%- endgeneration -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
    )


VICUNA_V1 = _vicuna(VICUNA_SYSTEM)
# The same turns without the default system prompt: for LLMs trained from scratch (the quickstart), where those
# 30 tokens teach nothing and cost a third of a short sample's compute.
VICUNA_V1_NO_SYSTEM = _vicuna("")

# llama3: Llama-3 headers, <|eot_id|> after every turn.
LLAMA3 = (
    _CONTENT + "{{- bos_token if bos_token else '' -}}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n" + VICUNA_SYSTEM.replace("'", "\\'") + "<|eot_id|>' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ render(message) }}{{ '<|eot_id|>' }}{%- endgeneration -%}"
    "{%- else -%}{{ render(message) }}{{ '<|eot_id|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

# chatml (Yi-34B's yi_34b_chatml_direct): system "Answer the questions."
CHATML = (
    _CONTENT + "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nAnswer the questions.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ render(message) }}{{ '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}{{ render(message) }}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

CHAT_TEMPLATES = {
    "vicuna_v1": VICUNA_V1,
    "vicuna_v1_no_system": VICUNA_V1_NO_SYSTEM,
    "llama3": LLAMA3,
    "chatml": CHATML,
}
