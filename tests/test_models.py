"""The tiny model builder and model sources (alignpipe.training.models)."""

import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignpipe.core.config import Candidate, ModelSection, PipelineConfig, TinySpec
from alignpipe.training import models

pytestmark = pytest.mark.slow  # builds and pretrains tiny models

# Very small on purpose; one tokenizer (same vocab_size) is shared by every build in this module.
SMALL = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    vocab_size=512,
    pretrain_batch_size=4,
    pretrain_block_size=64,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def built(root):
    return models.build_tiny(TinySpec(pretrain_steps=5, **SMALL), root)


@pytest.fixture(scope="module")
def tok(built):
    return AutoTokenizer.from_pretrained(built)


@pytest.fixture(scope="module")
def model(built):
    return AutoModelForCausalLM.from_pretrained(built)


def test_model_dir_contents(built):
    names = {p.name for p in built.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "alignpipe_tiny.json",
    } <= names
    has_template = "chat_template.jinja" in names or "chat_template" in json.loads(
        (built / "tokenizer_config.json").read_text()
    )
    assert has_template, names
    assert not [n for n in names if n.endswith((".bin", ".pt"))]  # safetensors only
    assert not list(built.parent.glob(".*.tmp"))  # the atomic build left no temp dir


def test_tokenizer_pad_and_eos(tok):
    assert tok.pad_token is not None and tok.eos_token is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == models.EOS and tok.pad_token == models.PAD


def test_chat_template_generation_prompt(tok):
    messages = [{"role": "user", "content": "Say hi."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Say hi." in prompt
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": "hi"}], tokenize=False)
    assert "hi" + models.EOS in full


def test_model_reloads(built, tok, model):
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().num_embeddings == len(tok)
    ids = tok("The opposite of dry is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    again = models.load_model(str(built), ModelSection())
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def test_build_is_cached(root, built):
    files = {name: (built / name).stat().st_mtime_ns for name in ("model.safetensors", "config.json")}
    started = time.time()
    again = models.build_tiny(TinySpec(pretrain_steps=5, **SMALL), root)
    assert again == built
    assert {name: (built / name).stat().st_mtime_ns for name in files} == files
    assert time.time() - started < 5


def test_other_spec_builds_elsewhere(root, built):
    other = models.build_tiny(TinySpec(arch="qwen2", pretrain_steps=5, **SMALL), root)
    assert other != built
    assert json.loads((other / "config.json").read_text())["model_type"] == "qwen2"
    m = AutoModelForCausalLM.from_pretrained(other)
    assert m.config.model_type == "qwen2"
    tok = AutoTokenizer.from_pretrained(other)
    assert tok.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    ).endswith("<|im_start|>assistant\n")


def test_pretraining_lowers_loss(root):
    out = models.build_tiny(TinySpec(pretrain_steps=30, **SMALL), root)
    meta = json.loads((out / "alignpipe_tiny.json").read_text())
    assert meta["spec"]["pretrain_steps"] == 30
    assert meta["pretrain_loss_last"] < meta["pretrain_loss_first"]


def test_count_parameters(built, model):
    real = sum(p.numel() for p in model.parameters())
    assert models.count_parameters(str(built), ModelSection()) == real
    assert json.loads((built / "alignpipe_tiny.json").read_text())["parameters"] == real


def test_resolve_tiny_uses_cache(root, built, monkeypatch):
    monkeypatch.setenv("ALIGNPIPE_CACHE", str(root))
    cand = Candidate(name="t", tiny=TinySpec(pretrain_steps=5, **SMALL))
    assert models.resolve(cand, PipelineConfig()) == str(built)


def test_resolve_hub_id_unchanged():
    hub_id = "no-such-org-alignpipe/no-such-model-xyz"
    assert models.resolve(Candidate(name="x", path=hub_id), PipelineConfig()) == hub_id


def test_resolve_local_dir(built, tmp_path):
    assert models.resolve(Candidate(name="x", path=str(built)), PipelineConfig()) == str(built.resolve())
    with pytest.raises(models.ModelSourceError, match="config.json"):
        models.resolve(Candidate(name="x", path=str(tmp_path)), PipelineConfig())


def test_a_damaged_or_custom_code_model_is_one_line_with_the_fix(tmp_path):
    """A truncated safetensors file and a config that needs its own code: ModelSourceError, no traceback."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignpipe.core.config import ModelSection
    from alignpipe.training.models import ModelSourceError, count_parameters, load_model

    good = tmp_path / "model"
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
        )
    ).save_pretrained(good)
    weights = good / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match=r"cannot load model .*files may be damaged"):
        load_model(str(good), ModelSection())
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(
        '{"model_type": "my-own", "auto_map": {"AutoConfig": "my_code.MyConfig", '
        '"AutoModelForCausalLM": "my_code.MyModel"}}'
    )
    with pytest.raises(ModelSourceError, match=r"set model.trust_remote_code=true only if you trust"):
        count_parameters(str(custom), ModelSection())


def test_batched_greedy_generation_matches_one_by_one(model, tok):
    """Evaluation generates in left-padded batches: the greedy outputs are those of one prompt at a time."""
    from alignpipe.evaluation import scoring

    prompts = [
        "Instruction: name a colour.\nResponse:",
        "Instruction: write the word cat backwards, then explain what you did in one sentence.\nResponse:",
        "Q: 2+2?\nA:",
        "Instruction: list three fruits, separated by commas, without any other words at all.\nResponse:",
        "Say hi.",
        "Instruction: summarise the plot of a story about a small dog that finds its way home.\nResponse:",
    ]
    one_by_one = [scoring.generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert scoring.generate(model, tok, prompts, max_new_tokens=12, batch_size=4) == one_by_one
    assert len(set(one_by_one)) > 1  # not one string for every prompt: the comparison has teeth
