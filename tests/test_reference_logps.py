"""DPO/KTO reference log-probs computed once and cached (alignpipe.training.reference): a re-run or
another DPO variant reads the artifact and runs no reference pass; the key follows the SFT weights,
the tokenized pairs and the template, not beta or loss_type; a damaged artifact is recomputed; the
losses with the artifact equal those computed fresh and those with a reference model in memory."""

import math
import os
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import torch

from alignpipe import data, training
from alignpipe.core import trl_api
from alignpipe.core.recipe import load_config
from alignpipe.core.registry import METHODS
from alignpipe.flows.runner import run_stage
from alignpipe.training import models, reference

from conftest import ROOT, SMALL_CANDIDATE

pytestmark = pytest.mark.slow

FAST = [
    SMALL_CANDIDATE,
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=12",
    "sft.save_steps=6",
    "sft.logging_steps=4",
    "preference.max_steps=4",
    "preference.per_device_train_batch_size=8",
    "preference.logging_steps=1",
    "preference.max_length=128",
    "data.preference.max_rows=96",
    "data.validation_rows=16",
    "tracking.log_model_weights=false",
]
REF = {"dpo": ("ref_chosen_logps", "ref_rejected_logps"), "kto": ("ref_logps", "ref_KL_logps")}


def config(*extra):
    return load_config(ROOT / "configs" / "tiny.yaml", FAST + list(extra))


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(tmp_path_factory.mktemp("state")))
        cfg = config()
        yield run_stage(cfg, "sft", {"base": run_stage(cfg, "select", {}).model_path})


def build(sft, cache: Path, *extra, template=None, rows=None, lora=False, out=None):
    """The stage's trainer (as stages/offline.py builds it) and the number of model forwards its
    construction ran (the reference pass, when there is one)."""
    cfg = config(*extra)
    method = METHODS[cfg.preference.method]
    train = data.training_rows(cfg, "preference")
    args = trl_api.make_config(
        method.trl_kind,
        str(out or cache / "out"),
        cfg.preference.trl,
        ours={**training.common_args(cfg), **method.defaults, **method.locked},
    )
    store = reference.cache_for(cache, method.trl_kind, sft.model_path, args, cfg.model.dtype)
    model = models.load_model(sft.model_path, cfg.model)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    lora_cfg = load_config(ROOT / "configs" / "tiny.yaml", FAST + ["preference.lora={r: 4, alpha: 8}"])
    trainer = trl_api.trainer(
        method.trl_kind,
        ref_logps_cache=store,
        model=model,
        args=args,
        train_dataset=training.pair_dataset(rows or train.train, template or sft.template),
        eval_dataset=training.pair_dataset(train.validation, template or sft.template),
        processing_class=models.load_tokenizer(sft.model_path, cfg.model),
        peft_config=training.lora_config(lora_cfg.preference.lora) if lora else None,
    )
    return trainer, store, len(forwards)


def ref_values(trainer, kind="dpo") -> dict[str, list[float]]:
    return {c: list(trainer.train_dataset[c]) for c in REF[kind]}


def first_batch_loss(trainer, n=8) -> float:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_cached_reference_runs_no_reference_pass_and_gives_the_same_loss(sft, tmp_path):
    fresh, store, forwards = build(sft, tmp_path)
    assert forwards > 0 and fresh.ref_model is None and not store.used["train"]["reused"]
    path = Path(store.used["train"]["path"])
    assert path.parent == tmp_path / "ref_logps" and path.name == store.used["train"]["key"] + ".parquet"
    stamp = path.stat().st_mtime_ns

    # Another DPO variant (beta, loss_type) on the same pairs: reads the artifact, no forward at all.
    cached, store2, forwards = build(sft, tmp_path, "preference.beta=0.5", "preference.loss_type=[ipo]")
    assert forwards == 0 and cached.ref_model is None
    assert store2.used["train"]["reused"] and store2.used["eval"]["reused"]
    assert store2.used["train"]["key"] == store.used["train"]["key"] and path.stat().st_mtime_ns == stamp
    assert ref_values(cached) == ref_values(fresh)

    # The same recipe from the artifact, fresh, and with TRL's reference model in memory: one loss.
    same, _, forwards = build(sft, tmp_path)
    assert forwards == 0
    held, _, _ = build(sft, tmp_path / "none", "preference.precompute_ref_log_probs=false")
    assert held.ref_model is not None and "ref_chosen_logps" not in held.train_dataset.column_names
    losses = [first_batch_loss(t) for t in (fresh, same, held)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[1] == pytest.approx(losses[0], abs=1e-5) and losses[2] == pytest.approx(losses[0], abs=1e-5)


def test_key_follows_template_pairs_and_weights_not_hyperparameters(sft, tmp_path):
    _, alpaca, _ = build(sft, tmp_path)
    _, chat, _ = build(sft, tmp_path, template="chat")
    rows = data.training_rows(config(), "preference").train
    _, fewer, _ = build(sft, tmp_path, rows=rows[:-1])
    _, edited, _ = build(sft, tmp_path, rows=[{**rows[0], "chosen": rows[0]["chosen"] + " (edited)"}, *rows[1:]])
    _, shorter, _ = build(sft, tmp_path, "preference.max_length=64")
    keys = [s.used["train"]["key"] for s in (alpaca, chat, fewer, edited, shorter)]
    assert len(set(keys)) == len(keys), keys
    assert chat.used["eval"]["key"] != alpaca.used["eval"]["key"]
    assert fewer.used["eval"]["key"] == alpaca.used["eval"]["key"] and fewer.used["eval"]["reused"]
    assert {p.stem for p in (tmp_path / "ref_logps").glob("*.parquet")} >= set(keys)
    # The SFT weights by content: a byte changed in the safetensors is another reference.
    copy = tmp_path / "sft-copy"
    copy.mkdir()
    for f in Path(sft.model_path).iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    assert reference.weights_digest(str(copy)) == reference.weights_digest(sft.model_path)
    st = next(copy.glob("*.safetensors"))
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 1
    st.write_bytes(bytes(raw))
    assert reference.weights_digest(str(copy)) != reference.weights_digest(sft.model_path)


def test_damaged_or_mismatched_artifact_is_recomputed(sft, tmp_path, capsys):
    fresh, store, _ = build(sft, tmp_path)
    path = Path(store.used["train"]["path"])
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 3), path)  # right key, too few rows
    again, store2, forwards = build(sft, tmp_path)
    assert forwards > 0 and not store2.used["train"]["reused"]
    assert "recomputing it" in capsys.readouterr().out
    for c, values in ref_values(fresh).items():
        assert ref_values(again)[c] == pytest.approx(values, abs=1e-6)
    assert pq.read_table(path).num_rows == len(fresh.train_dataset)
    os.replace(Path(store.used["eval"]["path"]), path)  # another key's file under this key's name
    _, store3, forwards = build(sft, tmp_path)
    assert forwards > 0 and "recomputing it" in capsys.readouterr().out and not store3.used["train"]["reused"]


def test_kto_and_lora_reuse_the_artifact(sft, tmp_path):
    kto, store, _ = build(sft, tmp_path, "preference.method=kto")
    again, store2, forwards = build(sft, tmp_path, "preference.method=kto", "preference.beta=0.3")
    assert forwards == 0 and again.ref_model is None and store2.used["train"]["reused"]
    assert ref_values(again, "kto") == ref_values(kto, "kto")
    # LoRA: the reference is the policy with its adapter disabled, i.e. the same SFT weights.
    full, dpo, _ = build(sft, tmp_path)
    assert dpo.used["train"]["key"] != store.used["train"]["key"]  # dpo and kto define a row's logp differently
    lora, lora_store, forwards = build(sft, tmp_path, lora=True)
    assert forwards == 0 and lora.ref_model is None and lora_store.used["train"]["key"] == dpo.used["train"]["key"]
    scored, _, forwards = build(sft, tmp_path / "lora-fresh", lora=True)  # LoRA computing its own
    assert forwards > 0
    for c, values in ref_values(full).items():
        assert ref_values(scored)[c] == pytest.approx(values, abs=1e-5)


def test_stage_rerun_and_variant_reuse_the_artifact_with_the_same_loss(sft, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path / "first"))
    first = run_stage(config(), "preference", {"sft": sft.model_path, "template": sft.template})
    used = first.details["ref_logps"]
    assert set(used) == {"train", "eval"} and not used["train"]["reused"]
    path = Path(used["train"]["path"])
    assert path.is_relative_to(tmp_path / "cache" / "ref_logps")
    stamp = path.stat().st_mtime_ns

    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path / "second"))  # the same recipe, trained again
    again = run_stage(config(), "preference", {"sft": sft.model_path, "template": sft.template})
    assert again.details["ref_logps"]["train"] == {**used["train"], "reused": True}
    for key in ("train_loss", "eval_loss"):
        assert again.metrics[key] == pytest.approx(first.metrics[key], abs=1e-5), key
    variant = run_stage(
        config("preference.beta=0.3", "preference.loss_type=[ipo]"),
        "preference",
        {"sft": sft.model_path, "template": sft.template},
    )
    assert variant.details["ref_logps"]["train"]["reused"] and path.stat().st_mtime_ns == stamp

    cfg = config()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = mlflow.get_run(variant.run_id)
    assert run.data.params["ref_logps_train_key"] == used["train"]["key"]
    assert run.data.params["ref_logps_train_reused"] == "True"
    contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert {"reference_logps_train", "reference_logps_eval"} <= contexts, contexts


def test_precompute_default_gives_way_to_liger_and_sync_ref_model(capsys):
    fixed = METHODS["dpo"].defaults
    assert fixed["precompute_ref_log_probs"] and METHODS["kto"].defaults == fixed
    assert reference.precompute_default(fixed, {"beta": 0.2}, "dpo") == fixed
    off = reference.precompute_default(fixed, {"sync_ref_model": True}, "dpo")
    assert off["precompute_ref_log_probs"] is False
    assert capsys.readouterr().out.count("\n") == 1  # one line says why
    asked = {"use_liger_kernel": True, "precompute_ref_log_probs": True}  # asked for both: TRL's own error
    assert reference.precompute_default(fixed, asked, "dpo") == fixed
