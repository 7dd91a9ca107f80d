"""Stage `self_instruct`: bootstrap instruction data from a small seed set (Wang et al., 2023).

Each round, the generator model (any model source: the base model itself or a larger teacher)
sees a few instructions from the pool (seed tasks, plus up to two it generated earlier) as a
numbered list and continues it. A proposed instruction is kept only if it passes the length and
format filters and its ROUGE-L against every instruction already in the pool is below
`self_instruct.rouge_threshold` (0.7, the paper's rule); then the generator writes its input
and output from a seed example. Rows are written as Alpaca triples with provenance (round,
generator, the seed ids shown) and join the SFT mixture (`run_sft(..., generated=)`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re

import torch

from alignpipe import data, tracking
from alignpipe.core import progress
from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import file_digest
from alignpipe.core.result import StageResult
from alignpipe.training import models

# The paper's format filters: tasks a text model cannot do, and prompts that are not a task.
_BLOCKED = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_TOKEN = re.compile(r"[a-z0-9]+")
_NUMBERED = re.compile(r"\n\s*\d+\s*[.)]\s*")


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts (lowercased alphanumeric tokens, as rouge_score tokenises)."""
    x, y = _TOKEN.findall(a.lower()), _TOKEN.findall(b.lower())
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def instruction_problem(text: str, min_words: int, max_words: int) -> str | None:
    """Why a proposed instruction fails the length/format filters ('length' or 'format'), or None."""
    n = len(text.split())
    if n < min_words or n > max_words:
        return "length"
    low = text.lower()
    if any(re.search(rf"\b{re.escape(k)}\b", low) for k in _BLOCKED) or low.startswith("write a program"):
        return "format"
    if not text[0].isalnum() or not text[0].isascii():
        return "format"
    return None


def instructions_prompt(shown: list[str]) -> str:
    lines = "".join(f"{i}. {t}\n" for i, t in enumerate(shown, start=1))
    return f"Come up with a series of tasks:\n{lines}{len(shown) + 1}."


def parse_instructions(text: str, truncated: bool = False) -> list[str]:
    """The numbered items a generator wrote after '{n}.' (the first has no number of its own);
    when generation hit the token limit, the last item is cut off and dropped (as in the paper)."""
    items = [" ".join(t.split()) for t in _NUMBERED.split(text)]
    items = [t for t in items if t]
    return items[:-1] if truncated and items else items


def instance_prompt(example: dict, instruction: str) -> str:
    def block(task, inp, out=None):
        text = f"Task: {task}\n" + (f"Input: {inp}\n" if inp else "")
        return text + (f"Output: {out}\n\n" if out is not None else "")

    head = "Come up with an example for the task. If it needs no input, write the output directly.\n\n"
    return head + block(example["instruction"], example["input"], example["output"]) + f"Task: {instruction}\n"


def parse_instance(text: str) -> tuple[str, str]:
    """(input, output) from a generated 'Input: ... Output: ...' continuation."""
    text = re.split(r"\n\s*Task:", text)[0].strip()
    if "Output:" in text:
        before, _, output = text.partition("Output:")
        inp = before.strip()
        inp = inp[len("Input:") :].strip() if inp.startswith("Input:") else inp
        return inp, output.strip()
    return "", text[len("Input:") :].strip() if text.startswith("Input:") else text


@torch.no_grad()
def sample(model, tok, prompts: list[str], si, seed: int, label: str = "") -> list[tuple[str, bool]]:
    """(continuation, whether it hit max_new_tokens) per prompt; sampled with temperature/top_p,
    each prompt cut from the left to fit the context. Progress is printed under `label`."""
    limit = getattr(model.config, "max_position_embeddings", 2048) - si.max_new_tokens
    torch.manual_seed(seed)
    out = []
    with progress.Progress(label, len(prompts), "prompts") as prog:
        for prompt in prompts:
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -limit:].to(model.device)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=si.max_new_tokens,
                do_sample=True,
                temperature=si.temperature,
                top_p=si.top_p,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = gen[0, ids.shape[1] :]
            out.append(
                (
                    tok.decode(new, skip_special_tokens=True),
                    len(new) >= si.max_new_tokens and new[-1].item() != tok.eos_token_id,
                )
            )
            prog.advance()
    return out


def load_seeds(path: str) -> list[dict]:
    """Seed tasks: {id, instruction, input, output} (the first instance of each task)."""
    records, where = data.read_table(path)
    seeds = []
    for i, (rec, at) in enumerate(zip(records, where)):
        row = data.normalise("sft", "self_instruct", f"{path}: {at}", rec)[0]
        seeds.append(
            {"id": str(rec.get("id") or f"seed_{i}"), **{k: row[k] for k in ("instruction", "input", "output")}}
        )
    return seeds


def run_self_instruct(cfg: PipelineConfig, generator: str) -> StageResult:
    """Grow instructions from the seed tasks with `self_instruct.generator`, else `generator`."""
    si = cfg.self_instruct
    if not si.seed_tasks:
        raise data.DataError("self_instruct.seed_tasks is not set: give a seed task file in the Self-Instruct format")
    seeds = load_seeds(si.seed_tasks)
    generator = si.generator or generator
    section = {"self_instruct": dataclasses.asdict(si), "generator": generator}
    rng = random.Random(cfg.seed)
    counts = {
        "proposed": 0,
        "filtered_length": 0,
        "filtered_format": 0,
        "filtered_rouge": 0,
        "filtered_instance": 0,
        "kept": 0,
    }
    with tracking.open_stage(cfg, "self_instruct", section) as stage:
        tracking.log_dataset(si.seed_tasks, "seed", rows=len(seeds))
        tracking.log_model_input(generator, "generator")
        tok = models.load_tokenizer(generator, cfg.model)
        model = models.load_model(generator, cfg.model)
        model.eval()
        pool = [s["instruction"] for s in seeds]
        rows: list[dict] = []
        for rnd in range(1, si.rounds + 1):
            shown_sets, prompts = [], []
            for _ in range(si.prompts_per_round):
                machine = rng.sample(rows, min(2, len(rows)))
                shown = rng.sample(seeds, min(len(seeds), si.prompt_instructions - len(machine))) + machine
                shown_sets.append(shown)
                prompts.append(instructions_prompt([s["instruction"] for s in shown]))
            kept_now = []
            at = f"self_instruct: round {rnd} of {si.rounds}"
            proposals = sample(
                model, tok, prompts, si, cfg.seed + rnd, f"{at}: proposing instructions from {len(prompts)} prompts"
            )
            for shown, (text, truncated) in zip(shown_sets, proposals):
                for cand in parse_instructions(text, truncated):
                    counts["proposed"] += 1
                    why = instruction_problem(cand, si.min_words, si.max_words)
                    if why is None and max(rouge_l(cand, p) for p in pool) >= si.rouge_threshold:
                        why = "rouge"
                    if why:
                        counts[f"filtered_{why}"] += 1
                        continue
                    pool.append(cand)
                    seed_ids = sorted({i for s in shown for i in ([s["id"]] if "round" not in s else s["seed_ids"])})
                    kept_now.append({"instruction": cand, "seed_ids": seed_ids})
            examples = [rng.choice(seeds) for _ in kept_now]
            replies = sample(
                model,
                tok,
                [instance_prompt(e, k["instruction"]) for e, k in zip(examples, kept_now)],
                si,
                cfg.seed + 1000 + rnd,
                f"{at}: writing instances of {len(kept_now)} new instructions",
            )
            for k, (reply, _) in zip(kept_now, replies):
                inp, output = parse_instance(reply)
                if not output.strip():
                    counts["filtered_instance"] += 1
                    continue
                counts["kept"] += 1
                rows.append(
                    {
                        "id": f"self_instruct_r{rnd}_{len(rows)}",
                        "instruction": k["instruction"],
                        "input": inp,
                        "output": output,
                        "category": "self_instruct",
                        "round": rnd,
                        "generator": generator,
                        "seed_ids": k["seed_ids"],
                    }
                )
            tracking.log_metrics(
                {f"round{rnd}_kept": float(sum(1 for r in rows if r["round"] == rnd)), "pool_size": float(len(pool))}
            )
        path = stage.out / "self_instruct.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        metrics = {**counts, "seed_tasks": len(seeds), "rounds": si.rounds}
        tracking.log_metrics({k: float(v) for k, v in metrics.items()})
        tracking.log_json(rows[:50], "samples.json")
        tracking.log_artifact(path)  # the generated dataset itself; SFT records it as a train input
        return stage.finish(
            metrics, data_path=str(path), details={"generator": generator, "data_digest": file_digest(path)}
        )
