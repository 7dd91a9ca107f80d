"""Prompt templates: Alpaca (with and without the Input block) and the model's chat template.

Training rows become TRL prompt/completion rows, so the loss falls on the response only.
"""

from __future__ import annotations

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def template_texts() -> list[str]:
    """The fixed text of every template, for tokenizer training."""
    return [ALPACA_WITH_INPUT.format(instruction="", input=""), ALPACA_NO_INPUT.format(instruction="")]


def alpaca_prompt(instruction: str, input: str = "") -> str:
    if input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def plain_prompt(instruction: str, input: str = "") -> str:
    """Question line(s) then the answer line: how base models are scored zero-shot by `select`."""
    return f"{instruction}\n{input}\n" if input.strip() else f"{instruction}\n"


def user_message(instruction: str, input: str = "") -> list[dict[str, str]]:
    content = f"{instruction}\n\n{input}" if input.strip() else instruction
    return [{"role": "user", "content": content}]


def training_prompt(template: str, instruction: str, input: str = ""):
    """The prompt column of a TRL row: a string (Alpaca) or a message list (chat)."""
    if template == "chat":
        return user_message(instruction, input)
    return alpaca_prompt(instruction, input)


def training_completion(template: str, text: str):
    """The completion column: TRL appends EOS to string completions; chat turns end themselves."""
    if template == "chat":
        return [{"role": "assistant", "content": text}]
    return text


def generation_prompt(template: str, tokenizer, instruction: str, input: str = "") -> str:
    """The exact text a model is given at generation time, matching how it was trained."""
    if template == "chat":
        return tokenizer.apply_chat_template(user_message(instruction, input), add_generation_prompt=True, tokenize=False)
    return alpaca_prompt(instruction, input)
