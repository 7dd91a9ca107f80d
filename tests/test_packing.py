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
