"""Where models come from: hub ids and local dirs (`from_pretrained`), or a tiny spec built here.

A tiny spec becomes a normal Hugging Face model dir: a byte-level BPE tokenizer trained with
`tokenizers` on the project's own text (chat template, pad and eos tokens included) and a small
Llama- or Qwen-style model, briefly pretrained as a plain causal LM on that text so that it is a
real pretrained model. Both are cached under the cache dir by a digest of their spec.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import torch

from alignpipe.core import gguf_api, progress
from alignpipe.core.config import Candidate, ModelSection, PipelineConfig, TinySpec
from alignpipe.core.files import atomic_dir, file_digest, file_lock
from alignpipe.data import demo, templates

BUILDER_VERSION = "2"  # bump when the tiny builder's output would change
STUDENT_VERSION = "1"  # bump when a truncated student's output would change
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD, EOS = "<|pad|>", "<|im_end|>"
# ChatML with {% generation %} markers, so TRL can put the loss on assistant turns only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"  # noqa: E501
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelSourceError(Exception):
    """A model that cannot be found or loaded; the message says which and how to fix it."""


def cache_dir(cfg: PipelineConfig) -> Path:
    return Path(os.environ.get("ALIGNPIPE_CACHE") or cfg.state_path / "cache").resolve()


def resolve(candidate: Candidate, cfg: PipelineConfig) -> str:
    """A loadable location for the candidate: its local dir or hub id, the built tiny model, or
    the model dir converted from its GGUF file."""
    if candidate.tiny is not None:
        return str(build_tiny(candidate.tiny, cache_dir(cfg)))
    path = candidate.source
    if gguf_api.is_gguf(path):
        return str(from_gguf(path, cache_dir(cfg)))
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{path}: not a model directory (no config.json); point to a save_pretrained dir")
        return str(local.resolve())
    return path  # a hub id: from_pretrained fetches it (needs network or a warm HF cache)


def named_source(cfg: PipelineConfig, name: str) -> str:
    """A loadable location for `name`: a model.candidates name (its dir, hub id or built tiny
    model), else a model dir or hub id."""
    found = next((c for c in cfg.model.candidates if c is not None and c.name == name), None)
    return resolve(found or Candidate(name=name, path=name), cfg)


def from_gguf(source: str, root: Path) -> Path:
    """The fp32 model dir dequantised from a GGUF file: converted once, cached by the file's sha256."""
    try:
        path = gguf_api.locate(source)
    except gguf_api.GGUFError as e:
        raise ModelSourceError(str(e)) from None
    sha = _sha256(str(path), *_stat(path))
    out = root / "gguf" / f"{path.stem}-{sha[:16]}"
    if (out / "config.json").is_file():
        return out
    problem = gguf_api.problem(source)
    if problem:
        raise ModelSourceError(problem)
    with file_lock(root / "gguf" / f".{out.name}.lock", f"model: waiting for another process converting {path.name}"):
        if not (out / "config.json").is_file():
            mb = path.stat().st_size / 2**20
            label = f"model: converting {path.name} ({mb:.0f} MiB, sha256 {sha[:12]}) to an fp32 model dir"
            with progress.step(label), atomic_dir(out, replace=False) as tmp:
                gguf_api.convert(source, path, sha, tmp)
    return out


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per process for the same size and mtime."""
    return file_digest(path)


def load_tokenizer(source: str, model: ModelSection):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=model.trust_remote_code)
    except Exception as e:
        raise ModelSourceError(_cannot_load(source, e).replace("cannot load model", "cannot load tokenizer")) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: str, model: ModelSection, **kwargs):
    """Load a causal LM: safetensors only, remote code only when the config allows it."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, model.dtype),
            use_safetensors=True,
            trust_remote_code=model.trust_remote_code,
            **kwargs,
        )
    except Exception as e:  # missing, damaged (a truncated safetensors file), or needing remote code
        raise ModelSourceError(_cannot_load(source, e)) from None


def _cannot_load(source: str, e: Exception) -> str:
    """One line: which model, what went wrong, and the fix."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if "trust_remote_code" in str(e):
        fix = "it needs its own code: set model.trust_remote_code=true only if you trust its source"
    elif isinstance(e, OSError) and not Path(source).exists():
        fix = "check the path, or the hub id and your network"
    else:
        fix = "its files may be damaged or incomplete: re-create or re-download it"
    return f"{source}: cannot load model ({type(e).__name__}: {first}); {fix}"


def load_scorer(source: str, model: ModelSection, pad_token_id: int | None = None):
    """A single-score sequence classifier (reward or value model) from a causal LM or a saved
    reward model; a new score head starts random."""
    from transformers import AutoModelForSequenceClassification

    try:
        scorer = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=1,
            dtype=getattr(torch, model.dtype),
            use_safetensors=True,
            trust_remote_code=model.trust_remote_code,
        )
    except Exception as e:
        raise ModelSourceError(_cannot_load(source, e)) from None
    if pad_token_id is not None:
        scorer.config.pad_token_id = pad_token_id
    return scorer


def count_parameters(source: str, model: ModelSection) -> int:
    """Parameters from the config alone (built on the meta device: no weights are read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=model.trust_remote_code)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    except Exception as e:
        raise ModelSourceError(_cannot_load(source, e)) from None
    return sum(p.numel() for p in m.parameters())


def truncated(source: str, layers: int, model: ModelSection, cache: Path) -> Path:
    """A model dir of `source`'s first `layers` decoder layers with its embeddings, final norm and LM
    head (tied embeddings stay tied) and its tokenizer, plus `student.json` naming both. Built once
    into `cache`, keyed by the source's weights (a hub id by its name), `layers` and the dtype."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=model.trust_remote_code)
    except Exception as e:
        raise ModelSourceError(_cannot_load(source, e)) from None
    total = config.get_text_config().num_hidden_layers
    if not 1 <= layers < total:  # the config alone: no weights are read
        raise ModelSourceError(
            f"{source}: cannot keep its first {layers} decoder layers (it has {total}); "
            f"set distill.student.layers between 1 and {total - 1}"
        )
    local = Path(source)
    files = [*sorted(local.glob("*.safetensors")), local / "config.json"] if local.is_dir() else []
    origin = [[f.name, _sha256(str(f), *_stat(f))] for f in files] or source
    out = cache / f"student-{local.name}-{layers}of{total}-{_digest([STUDENT_VERSION, origin, layers, model.dtype])}"
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{out.name}.lock", f"waiting for another process building {out.name}"):
        if (out / "student.json").is_file():
            return out
        m = load_model(source, model)
        decoder = m.get_decoder()
        decoder.layers = torch.nn.ModuleList(decoder.layers[:layers])
        text = m.config.get_text_config()
        text.num_hidden_layers = layers
        for name, value in list(vars(text).items()):  # per-layer lists: layer_types, no_rope_layers, ...
            if "layer" in name and isinstance(value, list) and len(value) == total:
                setattr(text, name, value[:layers])
        parameters = sum(p.numel() for p in m.parameters())
        print(f"student: {source}'s first {layers} of {total} decoder layers, {parameters:,} parameters -> {out}")
        with atomic_dir(out, replace=False) as tmp:
            m.save_pretrained(tmp)
            load_tokenizer(source, model).save_pretrained(tmp)
            facts = {"source": source, "layers": layers, "source_layers": total, "parameters": parameters}
            (tmp / "student.json").write_text(json.dumps(facts, indent=2))
    return out


# ---------------------------------------------------------------------------------------------
# The tiny builder


def _corpus() -> list[str]:
    return demo.pretrain_corpus()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def build_tokenizer(vocab_size: int, root: Path, corpus: list[str]) -> Path:
    """Byte-level BPE trained on the corpus plus the prompt templates' text; cached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = root / f"tokenizer-{_digest([BUILDER_VERSION, vocab_size, corpus])}"
    if (out / "tokenizer.json").is_file():
        return out
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus + templates.template_texts() * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    with atomic_dir(out, replace=False) as tmp:
        fast.save_pretrained(tmp)
    return out


def build_tiny(spec: TinySpec, root: Path) -> Path:
    """A tiny pretrained model dir for this spec (built once, then read from the cache)."""
    corpus = _corpus()
    key = _digest([BUILDER_VERSION, dataclasses.asdict(spec), _digest(corpus)])
    out = root / f"tiny-{spec.arch}-{spec.hidden_size}x{spec.num_layers}-{key}"
    if (out / "config.json").is_file():
        return out
    # Runs started together build each model once: the others wait, then read it.
    with file_lock(root / f".{out.name}.lock", f"waiting for another process building {out.name}"):
        if not (out / "config.json").is_file():
            _build_tiny(spec, root, corpus, out)
    return out


def _build_tiny(spec: TinySpec, root: Path, corpus: list[str], out: Path) -> None:
    from transformers import AutoTokenizer

    name = f"tiny-{spec.arch}-{spec.hidden_size}x{spec.num_layers}"
    with progress.Progress(
        f"model: building {name} (pretraining {spec.pretrain_steps} steps)", spec.pretrain_steps, "steps"
    ) as p:
        tok = AutoTokenizer.from_pretrained(build_tokenizer(spec.vocab_size, root, corpus))
        model = _init_model(spec, tok)
        started = time.time()
        losses = _pretrain(model, tok, corpus, spec, p)
        _save_tiny(spec, corpus, out, tok, model, losses, time.time() - started)


def _save_tiny(spec: TinySpec, corpus: list[str], out: Path, tok, model, losses: list[float], seconds: float) -> None:
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(EOS)
    model.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(out, replace=False) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "alignpipe_tiny.json").write_text(
            json.dumps(
                {
                    "spec": dataclasses.asdict(spec),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "pretrain_loss_first": losses[0],
                    "pretrain_loss_last": losses[-1],
                    "pretrain_seconds": round(seconds, 1),
                    "corpus_texts": len(corpus),
                },
                indent=2,
            )
        )


def _init_model(spec: TinySpec, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size or 3 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        bos_token_id=None,
    )
    torch.manual_seed(spec.seed)
    if spec.arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def _pretrain(model, tok, corpus: list[str], spec: TinySpec, steps: progress.Progress) -> list[float]:
    """Plain causal-LM training on the corpus, packed into fixed-size blocks; each step advances `steps`."""
    rng = random.Random(spec.seed)
    texts = list(corpus)
    rng.shuffle(texts)
    doc_end = tok.convert_tokens_to_ids(EOS)  # documents end with EOS, as in real base models
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [doc_end])
    block = spec.pretrain_block_size
    blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    warmup = max(1, spec.pretrain_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(s, spec.pretrain_steps) / spec.pretrain_steps))
        ),
    )
    gen = torch.Generator().manual_seed(spec.seed)
    model.train()
    losses = []
    for _ in range(spec.pretrain_steps):
        batch = blocks[torch.randint(len(blocks), (spec.pretrain_batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        steps.advance(detail=f"loss {losses[-1]:.3f}")
    model.eval()
    return losses
