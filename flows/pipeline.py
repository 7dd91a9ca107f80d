"""The pipeline, read top to bottom: select -> sft -> preference -> evaluate.

Stages pass only paths, run ids and metrics to each other; each stage's result is also kept
under the state dir (`<state>/runs/<experiment>/<stage>.json`) so one stage can be run alone.
With `distributed.num_processes > 1` or a DeepSpeed config, sft and dpo run as launched jobs
(`alignpipe.launch`), each rank running `alignpipe stage NAME` on these same results.
"""

from __future__ import annotations

import json

from alignpipe.config import PipelineConfig


def run_pipeline(cfg: PipelineConfig) -> dict:
    from stages.dpo import run_dpo
    from stages.evaluate import run_evaluate
    from stages.select import run_select
    from stages.sft import run_sft

    from alignpipe import launch

    selected = run_select(cfg) if not cfg.sft.model_path else None
    base = cfg.sft.model_path or selected["model_path"]
    if launch.wanted(cfg):  # ranks read select.json / sft.json, just written, like `alignpipe stage`
        sft = launch.run(cfg, "sft")
        dpo = launch.run(cfg, "dpo")
    else:
        sft = run_sft(cfg, base)
        dpo = run_dpo(cfg, sft["model_path"], sft["template"])
    paths = {"base": base, "sft": sft["model_path"], "dpo": dpo["model_path"]}
    evaluation = run_evaluate(cfg, {k: v for k, v in paths.items() if k in cfg.evaluate.models}, sft["template"])
    return {"select": selected, "sft": sft, "dpo": dpo, "evaluate": evaluation}


def previous_result(cfg: PipelineConfig, stage: str) -> dict | None:
    path = cfg.run_dir / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(cfg: PipelineConfig, name: str) -> dict:
    """Run one stage; inputs from the config, else from earlier stages' results (run if missing)."""
    from stages.dpo import run_dpo
    from stages.evaluate import run_evaluate
    from stages.select import run_select
    from stages.sft import run_sft

    from alignpipe import launch

    def upstream(stage: str) -> dict:
        found = previous_result(cfg, stage)
        if found is None:
            print(f"{name}: no earlier `{stage}` result for experiment '{cfg.experiment}'; running `{stage}` first")
            found = run_stage(cfg, stage)
        return found

    if name == "select":
        return run_select(cfg)
    if name in ("sft", "dpo") and launch.wanted(cfg):
        if name == "sft" and not cfg.sft.model_path:
            upstream("select")  # prerequisites run here, once, before any rank starts
        if name == "dpo" and not cfg.preference.model_path:
            upstream("sft")
        return launch.run(cfg, name)
    if name == "sft":
        return run_sft(cfg, cfg.sft.model_path or upstream("select")["model_path"])
    if name == "dpo":
        if cfg.preference.model_path:
            return run_dpo(cfg, cfg.preference.model_path)
        sft = upstream("sft")
        return run_dpo(cfg, sft["model_path"], sft["template"])
    if name == "evaluate":
        paths = {}
        for model, stage in (("base", "select"), ("sft", "sft"), ("dpo", "dpo")):
            found = previous_result(cfg, stage)
            if model in cfg.evaluate.models and found:
                paths[model] = found["model_path"]
        if "base" not in paths and cfg.sft.model_path and "base" in cfg.evaluate.models:
            paths["base"] = cfg.sft.model_path
        if not paths:
            paths["sft"] = upstream("sft")["model_path"]
        paths = {m: paths[m] for m in ("base", "sft", "dpo") if m in paths}
        template = (previous_result(cfg, "sft") or {}).get("template")
        return run_evaluate(cfg, paths, template)
    raise ValueError(f"unknown stage {name!r}")


STAGES = ("select", "sft", "dpo", "evaluate")
