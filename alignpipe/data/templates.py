"""Prompt templates: Alpaca (with and without the Input block) and the model's chat template.

Training rows become TRL prompt/completion rows, so the loss falls on the response only.
Format variation: a configurable share of training rows gets another preamble, other field
headers, or the input folded into the instruction (`VARIANTS`); evaluation scores the same
held-out prompts under templates never used in training (`UNSEEN`) to measure robustness.
Earlier turns of a conversation (`history`) become chat messages, or a transcript in Alpaca.
"""

from __future__ import annotations

import hashlib

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


# (preamble, instruction header, input header or None = fold the input into the instruction, response header)
VARIANTS = [
    ("Complete the task below.", "### Task:", "### Context:", "### Answer:"),
    ("Here is a request. Answer it well.", "Instruction:", "Input:", "Response:"),
    (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        "### Instruction:",
        None,
        "### Response:",
    ),
    ("You are a helpful assistant.", "## Instruction", "## Input", "## Response"),
]
UNSEEN = {  # evaluation only: never used to format a training row
    "qa": ("Answer the question.", "Question:", "Details:", "Answer:"),
    "plain": ("", "Request -", None, "Reply -"),
}
CHAT_SYSTEMS = ["You are a helpful assistant.", "Answer the user's request accurately and briefly."]
CHAT_UNSEEN_SYSTEM = "You are an AI model. Follow the user's instructions."


def alpaca_prompt(instruction: str, input: str = "", history: list[dict] | None = None) -> str:
    instruction = _with_history(instruction, history)
    if input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def _with_history(instruction: str, history: list[dict] | None) -> str:
    """Earlier turns as a transcript before the instruction (Alpaca has no turns of its own)."""
    if not history:
        return instruction
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in history]
    return "Conversation so far:\n" + "\n".join(lines) + f"\n\n{instruction}"


def variant_prompt(variant: tuple, instruction: str, input: str = "", history: list[dict] | None = None) -> str:
    """An Alpaca-like prompt with another preamble and headers (input folded in when its header is None)."""
    preamble, ins_head, in_head, resp_head = variant
    instruction = _with_history(instruction, history)
    if input.strip() and in_head is None:
        instruction, input = f"{instruction}\n\n{input}", ""
    body = f"{ins_head}\n{instruction}\n\n" + (f"{in_head}\n{input}\n\n" if input.strip() else "") + f"{resp_head}\n"
    return f"{preamble}\n\n{body}" if preamble else body


def pick_variant(row: dict, rate: float, seed: int) -> int | None:
    """Which VARIANTS entry formats this training row (None: the standard template); by hash, so stable."""
    if rate <= 0:
        return None
    h = int(hashlib.sha256(f"{seed}\x00{row['instruction']}\x00{row['input']}".encode()).hexdigest()[:12], 16)
    if (h % 10_000) / 10_000 >= rate:
        return None
    return (h // 10_000) % len(VARIANTS)


def plain_prompt(instruction: str, input: str = "") -> str:
    """Question line(s) then the answer line: how base models are scored zero-shot by `select`."""
    return f"{instruction}\n{input}\n" if input.strip() else f"{instruction}\n"


def user_message(
    instruction: str, input: str = "", history: list[dict] | None = None, system: str | None = None
) -> list[dict[str, str]]:
    content = f"{instruction}\n\n{input}" if input.strip() else instruction
    head = (
        [{"role": "system", "content": system}] if system and not (history and history[0]["role"] == "system") else []
    )
    return head + list(history or []) + [{"role": "user", "content": content}]


def training_prompt(
    template: str, instruction: str, input: str = "", history: list[dict] | None = None, variant: int | None = None
):
    """The prompt column of a TRL row: a string (Alpaca) or a message list (chat).

    `variant` (see pick_variant) formats the row with VARIANTS[variant] (chat: another system turn)."""
    if template == "chat":
        system = CHAT_SYSTEMS[variant % len(CHAT_SYSTEMS)] if variant is not None else None
        return user_message(instruction, input, history, system)
    if variant is not None:
        return variant_prompt(VARIANTS[variant], instruction, input, history)
    return alpaca_prompt(instruction, input, history)


def training_completion(template: str, text: str):
    """The completion column: TRL appends EOS to string completions; chat turns end themselves."""
    if template == "chat":
        return [{"role": "assistant", "content": text}]
    return text


def generation_prompt(
    template: str, tokenizer, instruction: str, input: str = "", history: list[dict] | None = None
) -> str:
    """The exact text a model is given at generation time, matching how it was trained."""
    if template == "chat":
        return tokenizer.apply_chat_template(
            user_message(instruction, input, history), add_generation_prompt=True, tokenize=False
        )
    return alpaca_prompt(instruction, input, history)


def unseen_prompt(
    name: str, template: str, tokenizer, instruction: str, input: str = "", history: list[dict] | None = None
) -> str:
    """The prompt under an evaluation-only template (UNSEEN[name]; chat: an unseen system turn)."""
    if template == "chat":
        messages = user_message(instruction, input, history, CHAT_UNSEEN_SYSTEM if name == "qa" else None)
        if name != "qa":  # input first, then the instruction after a label
            messages[-1]["content"] = f"{input}\n\nTask: {instruction}" if input.strip() else f"Task: {instruction}"
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return variant_prompt(UNSEEN[name], instruction, input, history)
