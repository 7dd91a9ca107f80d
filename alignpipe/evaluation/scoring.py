"""Scoring a causal LM on prompts: response-only log-probabilities and batched greedy generation.

Each function reports its progress under `label` (`evaluate sft: generating 300 answers (batch 32) ...`,
then alignpipe.core.progress's lines); `label=None` keeps it silent (inside a training step)."""

from __future__ import annotations

import math

import torch

from alignpipe.core import progress


@torch.no_grad()
def response_logprobs(
    model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16, label: str | None = "scoring"
) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each response (plus EOS) given its prompt."""
    eos = tokenizer.eos_token or ""
    out: list[tuple[float, int]] = []
    with _progress(label, "log-probs of", len(prompts), batch_size) as prog:
        for start in range(0, len(prompts), batch_size):
            ids, labels = [], []
            for prompt, response in zip(prompts[start : start + batch_size], responses[start : start + batch_size]):
                p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                r = tokenizer(response + eos, add_special_tokens=False)["input_ids"]
                ids.append(p + r)
                labels.append([-100] * len(p) + r)
            width = max(len(x) for x in ids)
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            target = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = target[:, 1:].to(model.device)
            keep = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
            for s, n in zip(picked.sum(-1).tolist(), keep.sum(-1).tolist()):
                out.append((s, n))
            prog.advance(len(ids))
    return out


def _progress(label: str | None, what: str, n: int, batch_size: int, more: str = "") -> progress.Progress:
    return progress.Progress(f"{label}: {what} {n} answers (batch {batch_size}{more})" if label else "", n, "answers")


def perplexity(scores: list[tuple[float, int]]) -> tuple[float, float]:
    """(mean token NLL, perplexity) over all response tokens."""
    total = sum(s for s, _ in scores)
    count = sum(n for _, n in scores)
    nll = -total / max(count, 1)
    return nll, math.exp(min(nll, 50.0))


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 32, label: str | None = "scoring"
) -> list[str]:
    """Greedy continuations of the prompts, decoded without special tokens."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts: list[str] = []
    try:
        with _progress(label, "generating", len(prompts), batch_size, f", up to {max_new_tokens} new tokens") as prog:
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(model.device)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                texts.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
                prog.advance(len(out))
    finally:
        tokenizer.padding_side = side
    return [t.strip() for t in texts]


@torch.no_grad()
def reward_scores(
    model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16, label: str | None = "scoring"
) -> list[float]:
    """A reward model's score of each prompt + response (+ EOS), tokenised as TRL's RewardTrainer
    tokenises its training pairs."""
    eos = tokenizer.eos_token or ""
    texts = [p + r + eos for p, r in zip(prompts, responses)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # sequence classifiers read the last non-pad token
    out: list[float] = []
    try:
        with _progress(label, "reward-model scores of", len(texts), batch_size) as prog:
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
                out.extend(model(**enc).logits[:, 0].float().tolist())
                prog.advance(len(enc["input_ids"]))
    finally:
        tokenizer.padding_side = side
    return out
