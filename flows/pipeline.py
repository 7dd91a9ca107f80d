"""The pipeline, read top to bottom: select -> sft -> [reward] -> preference -> evaluate.

`preference.method` picks the preference step; ppo, rloo and grpo need a reward model, so the
`reward` stage runs before them. Stages pass only paths, run ids and metrics to each other; each
stage's result is also kept under the state dir (`<state>/runs/<experiment>/<stage>.json`) so one
stage can be run alone. With `distributed.num_processes > 1` or a DeepSpeed config, sft and the
offline preference methods (dpo, kto, orpo, simpo) run as launched jobs (`alignpipe.launch`),
each rank running `alignpipe stage NAME` on these same results; reward, ppo, rloo and grpo run
in process.
"""

from __future__ import annotations

import json

from alignpipe.config import PREFERENCE_METHODS, PipelineConfig, load_config

LAUNCHABLE = ("sft", "dpo", "kto", "orpo", "simpo")


def run_pipeline(cfg: PipelineConfig) -> dict:
    from stages.evaluate import run_evaluate
    from stages.preference import NEEDS_REWARD, run_preference
    from stages.reward import run_reward
    from stages.select import run_select
    from stages.sft import run_sft

    from alignpipe import launch

    method = cfg.preference.method
    selected = run_select(cfg) if not cfg.sft.model_path else None
    base = cfg.sft.model_path or selected["model_path"]
    sft = launch.run(cfg, "sft") if launch.wanted(cfg) else run_sft(cfg, base)  # ranks read select.json
    start = cfg.preference.model_path or sft["model_path"]
    reward = run_reward(cfg, sft["model_path"], sft["template"]) if method in NEEDS_REWARD else None
    if launch.wanted(cfg) and method in LAUNCHABLE:
        preference = launch.run(cfg, method)
    else:
        preference = run_preference(cfg, start, sft["template"], reward and reward["model_path"])
    paths = {"base": base, "sft": sft["model_path"], method: preference["model_path"]}
    wanted = {m if m != "preference" else method for m in cfg.evaluate.models}
    evaluation = run_evaluate(cfg, {k: v for k, v in paths.items() if k in wanted}, sft["template"], reward and reward["model_path"])
    return {"select": selected, "sft": sft, "reward": reward, "preference": preference, method: preference, "evaluate": evaluation}


def previous_result(cfg: PipelineConfig, stage: str) -> dict | None:
    path = cfg.run_dir / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(cfg: PipelineConfig, name: str) -> dict:
    """Run one stage; inputs from the config, else from earlier stages' results (run if missing).

    A preference method's name runs that method (`preference.method` set to it)."""
    from stages.evaluate import run_evaluate
    from stages.preference import NEEDS_REWARD, run_preference
    from stages.reward import run_reward
    from stages.select import run_select
    from stages.sft import run_sft

    from alignpipe import launch

    if name == "preference":
        name = cfg.preference.method
    if name in PREFERENCE_METHODS and name != cfg.preference.method:
        cfg = load_config(cfg.source or None, [*cfg.overrides, f"preference.method={name}"])

    def upstream(stage: str) -> dict:
        found = previous_result(cfg, stage)
        if found is None:
            print(f"{name}: no earlier `{stage}` result for experiment '{cfg.experiment}'; running `{stage}` first")
            found = run_stage(cfg, stage)
        return found

    if name == "select":
        return run_select(cfg)
    if name in LAUNCHABLE and launch.wanted(cfg):
        if name == "sft" and not cfg.sft.model_path:
            upstream("select")  # prerequisites run here, once, before any rank starts
        if name != "sft" and not cfg.preference.model_path:
            upstream("sft")
        return launch.run(cfg, name)
    if name == "sft":
        return run_sft(cfg, cfg.sft.model_path or upstream("select")["model_path"])
    if name == "reward":
        if cfg.reward.model_path:
            return run_reward(cfg, cfg.reward.model_path)
        sft = upstream("sft")
        return run_reward(cfg, sft["model_path"], sft["template"])
    if name in PREFERENCE_METHODS:
        reward = upstream("reward")["model_path"] if name in NEEDS_REWARD else None
        if cfg.preference.model_path:
            return run_preference(cfg, cfg.preference.model_path, None, reward)
        sft = upstream("sft")
        return run_preference(cfg, sft["model_path"], sft["template"], reward)
    if name == "evaluate":
        method = cfg.preference.method
        paths = {}
        for model, stage in (("base", "select"), ("sft", "sft"), ("preference", method)):
            found = previous_result(cfg, stage)
            if model in cfg.evaluate.models and found:
                paths[method if model == "preference" else model] = found["model_path"]
        if "base" not in paths and cfg.sft.model_path and "base" in cfg.evaluate.models:
            paths["base"] = cfg.sft.model_path
        if not paths:
            paths["sft"] = upstream("sft")["model_path"]
        paths = {m: paths[m] for m in ("base", "sft", method) if m in paths}
        template = (previous_result(cfg, "sft") or {}).get("template")
        reward = previous_result(cfg, "reward")  # any method: a trained reward model also judges
        return run_evaluate(cfg, paths, template, reward and reward["model_path"])
    raise ValueError(f"unknown stage {name!r}")


STAGES = ("select", "sft", "reward", *PREFERENCE_METHODS, "preference", "evaluate")
