"""Packing without cross-talk. TRL's packed batches flatten the rows into one sequence with
position_ids restarting at 0 per row and no attention mask; the model must then attend only
within each row. Checked here per token: every example in a packed batch gets the same loss as
that example alone, for the architectures of the project's models and each attention
implementation available (sdpa, the CPU default; eager; flash_attention_2 where installed on a
GPU). Controls: the same rows without the position_ids, or with a KV cache, see each other."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

pytestmark = pytest.mark.fast

ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
LENGTHS = (7, 19, 12)  # three rows of different lengths, packed into one sequence of 38 tokens


def _attention_implementations() -> list:
    found = ["sdpa", "eager"]
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn"):
        found.append("flash_attention_2")
    return found


def _model(arch: str, attn: str, device: str):
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if attn == "flash_attention_2" else torch.float32
    return model_cls._from_config(config, attn_implementation=attn, dtype=dtype).to(device).eval()


def _token_losses(model, batch: dict, use_cache: bool = False) -> torch.Tensor:
    """Per-position next-token loss over the flattened batch (0 where the label is -100). Without a
    KV cache, as TRL's SFTTrainer.compute_loss calls the model (it sets use_cache=False)."""
    inputs = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=use_cache).logits.float()
    labels = batch["labels"].to(model.device)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return losses.flatten().cpu()


@pytest.mark.parametrize("attn", _attention_implementations())
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_packed_example_has_the_same_loss_as_alone(arch, attn):
    device = "cuda" if attn == "flash_attention_2" else "cpu"
    model = _model(arch, attn, device)
    gen = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(3, 320, (n,), generator=gen).tolist()} for n in LENGTHS]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    together = _token_losses(model, packed)
    tolerance = 2e-2 if attn == "flash_attention_2" else 1e-5
    start = 0
    for row, n in zip(rows, LENGTHS):
        alone = _token_losses(model, DataCollatorForLanguageModeling(pad_token_id=0)([row]))
        # positions start .. start+n-2 predict the row's own tokens 1 .. n-1
        torch.testing.assert_close(together[start : start + n - 1], alone, atol=tolerance, rtol=tolerance)
        start += n

    # the control: the same flat sequence with positions 0..37 and a plain causal mask lets the later
    # rows see the earlier ones, and their losses move
    crossed = _token_losses(model, {"input_ids": packed["input_ids"], "labels": packed["labels"]})
    assert (crossed[LENGTHS[0] :] - together[LENGTHS[0] :]).abs().max() > 1e-3
    # and a hazard for code outside TRL's trainer: with a KV cache (use_cache=True, the model's
    # default) transformers does not look for packed rows in position_ids, and they see each other
    cached = _token_losses(model, packed, use_cache=True)
    assert (cached[LENGTHS[0] :] - together[LENGTHS[0] :]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", _attention_implementations())
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_packed_rows_kept_apart_give_each_example_its_own_loss(arch, attn):
    """The CPU layout (trl_api.PackedRowsCollator): packed rows stay rows, each with restarting
    positions, and the shorter row's pad tail is its own block."""
    from alignpipe.core.trl_api import PackedRowsCollator, real_tokens

    device = "cuda" if attn == "flash_attention_2" else "cpu"
    model = _model(arch, attn, device)
    gen = torch.Generator().manual_seed(2)
    examples = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in LENGTHS]
    rows = [
        {"input_ids": examples[0] + examples[1], "seq_lengths": [LENGTHS[0], LENGTHS[1]]},
        {"input_ids": examples[2], "seq_lengths": [LENGTHS[2]]},
    ]
    batch = PackedRowsCollator(pad_token_id=0, padding_free=True)(rows)
    width = LENGTHS[0] + LENGTHS[1]
    assert batch["input_ids"].shape == (2, width) and "attention_mask" not in batch
    assert real_tokens(batch, pad_token_id=0) == sum(LENGTHS)
    together = _token_losses(model, batch).view(2, width - 1)
    tolerance = 2e-2 if attn == "flash_attention_2" else 1e-5
    for row, start, example in ((0, 0, examples[0]), (0, LENGTHS[0], examples[1]), (1, 0, examples[2])):
        alone = _token_losses(model, DataCollatorForLanguageModeling(pad_token_id=0)([{"input_ids": example}]))
        n = len(example)
        torch.testing.assert_close(together[row, start : start + n - 1], alone, atol=tolerance, rtol=tolerance)


def test_the_sft_trainer_keeps_packed_rows_apart_without_flash_attention(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    from alignpipe.core import trl_api

    vocab = {f"w{i}": i for i in range(320)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="w1")), pad_token="w0", eos_token="w2"
    )
    tok.pre_tokenizer = None
    model = _model("llama", "sdpa", "cpu").train()
    gen = torch.Generator().manual_seed(3)
    data = Dataset.from_list(
        [{"input_ids": torch.randint(3, 320, (n,), generator=gen).tolist()} for n in (5, 9, 4, 12, 7, 3, 8, 6)]
    )
    args = trl_api.make_config(
        "sft",
        str(tmp_path),
        {},
        ours={
            "packing": True,
            "max_length": 16,
            "per_device_train_batch_size": 2,
            "num_train_epochs": 1,
            "logging_steps": 1,
        },
    )
    trainer = trl_api.trainer("sft", model=model, args=args, train_dataset=data, processing_class=tok)
    assert isinstance(trainer.data_collator, trl_api.PackedRowsCollator)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape[1] <= 16
    trainer.train()
    # TRL's num_tokens counts every real token of the rows (it would count one row's width)
    assert trainer._total_train_tokens == sum(len(ids) for ids in data["input_ids"])
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    assert logged[-1] == trainer._total_train_tokens
