"""DeepSpeed ZeRO: the shipped JSONs against transformers, the launcher, bad input, and real 2-rank
ZeRO-3 SFT / ZeRO-2 DPO jobs on the CPU (gloo). Deselect locally with `-m 'not deepspeed'`.

The first real run compiles DeepSpeed's `fused_adam` and `shm_comm` ops (~2 min each on 2 cores)
into <repo>/.alignpipe/cache/torch_extensions; later runs reuse them.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
import torch

from alignpipe.core import processes
from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config
from alignpipe.core.result import StageResult
from alignpipe.training import launch

from conftest import ROOT, SMALL_CANDIDATE, cli_in_process, run_cli

pytestmark = pytest.mark.deepspeed

TINY = "configs/tiny.yaml"
DS = ROOT / "deepspeed_configs"
FAST = [
    SMALL_CANDIDATE,
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "data.validation_rows=16",
    "sft.max_steps=4",
    "sft.save_steps=100",
    "sft.logging_steps=2",
    "preference.max_steps=4",
    "preference.save_steps=100",
    "preference.logging_steps=2",
    "distributed.num_processes=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the shipped JSONs through transformers' own DeepSpeed integration --------------------------


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_deepspeed_json_fills_from_training_arguments(name, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    path = DS / f"{name}.json"
    raw = json.loads(path.read_text())
    assert (
        raw["train_micro_batch_size_per_gpu"]
        == raw["gradient_accumulation_steps"]
        == raw["gradient_clipping"]
        == "auto"
    )
    assert raw["bf16"]["enabled"] == raw["fp16"]["enabled"] == "auto"
    assert set(raw["optimizer"]["params"].values()) == {"auto"}
    assert raw["zero_optimization"]["reduce_bucket_size"] == "auto"
    if "zero3" in name:
        assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=2,
        report_to="none",
    )
    hf = HfTrainerDeepSpeedConfig(str(path))
    hf.trainer_config_process(args)
    with torch.device("meta"):
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=100
            )
        )
    hf.trainer_config_finalize(args, model, num_training_steps=10)  # raises on any mismatch
    c = hf.config
    assert not hf.mismatches
    assert (
        c["train_micro_batch_size_per_gpu"] == 3
        and c["gradient_accumulation_steps"] == 2
        and c["gradient_clipping"] == 0.5
    )
    assert c["train_batch_size"] == 3 * 2 * args.world_size
    assert c["optimizer"]["params"]["lr"] == 1e-4 and c["optimizer"]["params"]["weight_decay"] == 0.01
    assert c["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert c["bf16"]["enabled"] is False and c["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(c), c
    assert hf.is_zero3() == ("zero3" in name) and hf.is_offload() == ("offload" in name)


def test_deepspeed_json_in_training_arguments():
    """TrainingArguments(deepspeed=...) for real; in a subprocess, as it sets up torch.distributed."""
    import subprocess

    code = (
        "from transformers import TrainingArguments; import tempfile; "
        f"a = TrainingArguments(output_dir=tempfile.mkdtemp(), deepspeed={str(DS / 'zero3.json')!r}, per_device_train_batch_size=2, "  # noqa: E501
        "report_to='none'); print(a.hf_deepspeed_config.config['train_micro_batch_size_per_gpu'])"
    )
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "2", proc.stdout + proc.stderr


# -- the launcher ---------------------------------------------------------------------------------


def _cfg(*extra):
    return load_config(ROOT / TINY, list(extra))


@pytest.mark.parametrize("n", [1, 4])
def test_deepspeed_command(n):
    cfg = _cfg(
        f"distributed.num_processes={n}",
        "distributed.deepspeed=deepspeed_configs/zero3.json",
        "distributed.master_port=29611",
    )
    cmd = launch.command(cfg, "sft", "configs/tiny.yaml", ["sft.max_steps=4"], "/tmp/r.json")
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:] == [
        "--num_gpus",
        str(n),
        "--master_port",
        "29611",
        "--no_local_rank",
        "--module",
        "alignpipe.cli",
        "stage",
        "sft",
        "configs/tiny.yaml",
        "--set",
        "sft.max_steps=4",
        "--result-json",
        "/tmp/r.json",
    ]


def test_deepspeed_command_with_hostfile(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    cfg = _cfg(
        "distributed.num_processes=8",
        f"distributed.hostfile={hosts}",
        "distributed.deepspeed=deepspeed_configs/zero3.json",
    )
    cmd = launch.command(cfg, "dpo", "r.yaml", [], "/tmp/r.json")
    assert cmd[1:8] == ["--num_gpus", "8", "--master_port", "29500", "--hostfile", str(hosts), "--no_local_rank"]
    acc = launch.command(
        load_config(
            ROOT / TINY,
            [
                "distributed.launcher=accelerate",
                "distributed.num_processes=8",
                f"distributed.hostfile={hosts}",
                "distributed.deepspeed=deepspeed_configs/zero3.json",
            ],
        ),
        "dpo",
        "r.yaml",
        [],
        "/tmp/r.json",
    )
    assert ["--deepspeed_hostfile", str(hosts)] == acc[acc.index("--deepspeed_hostfile") :][:2]
    assert acc[acc.index("--num_processes") :][:4] == ["--num_processes", "16", "--num_machines", "2"]


def test_one_node_of_several_without_ssh(tmp_path):
    """node_rank + master_addr: each node's launcher starts only its own ranks (DeepSpeed --no_ssh,
    accelerate --machine_rank); bad combinations are one-line config errors, all reported at once."""
    hosts = tmp_path / "hostfile"
    hosts.write_text("node0 slots=8\nnode1 slots=8\n")
    node = [f"distributed.hostfile={hosts}", "distributed.node_rank=1", "distributed.master_addr=10.0.0.1"]
    cmd = launch.command(_cfg("distributed.num_processes=8", *node), "sft", "r.yaml", [], "/tmp/r.json")
    assert cmd[cmd.index("--no_ssh") :][:5] == ["--no_ssh", "--node_rank", "1", "--master_addr", "10.0.0.1"]
    acc = launch.command(_cfg("distributed.launcher=accelerate", *node), "sft", "r.yaml", [], "/tmp/r.json")
    assert acc[acc.index("--machine_rank") :][:4] == ["--machine_rank", "1", "--main_process_ip", "10.0.0.1"]
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / TINY, [f"distributed.hostfile={hosts}", "distributed.node_rank=2"])
    text = "\n".join(e.value.problems)
    assert "'distributed.node_rank' must be in 0..1" in text and "'distributed.master_addr' is not set" in text
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / TINY, ["distributed.node_rank=0", "distributed.master_addr=10.0.0.1"])
    assert "'distributed.node_rank' needs distributed.hostfile" in "\n".join(e.value.problems)


@pytest.mark.parametrize("n", [1, 2])
def test_accelerate_command(n):
    cfg = _cfg(
        "distributed.launcher=accelerate",
        f"distributed.num_processes={n}",
        "distributed.deepspeed=deepspeed_configs/zero2.json",
    )
    cmd = launch.command(cfg, "sft", "configs/tiny.yaml", [], "/tmp/r.json")
    assert Path(cmd[0]).name == "accelerate"
    assert cmd[1:] == [
        "launch",
        "--use_deepspeed",
        "--deepspeed_config_file",
        cfg.distributed.deepspeed,
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--main_process_port",
        "29500",
        "-m",
        "alignpipe.cli",
        "stage",
        "sft",
        "configs/tiny.yaml",
        "--result-json",
        "/tmp/r.json",
    ]


def test_when_to_launch(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not launch.wanted(_cfg())
    assert launch.wanted(_cfg("distributed.num_processes=2"))
    assert launch.wanted(_cfg("distributed.deepspeed=deepspeed_configs/zero2.json"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not launch.wanted(_cfg("distributed.num_processes=2"))  # already a rank: run in process


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pids"
    child = f"import os,time; open({str(pidfile)!r},'a').write(str(os.getpid())+'\\n'); print('child up', flush=True); time.sleep(600)"  # noqa: E501
    parent = f"import subprocess,sys,time; subprocess.Popen([sys.executable,'-c',{child!r}]); print('parent up', flush=True); time.sleep(600)"  # noqa: E501
    lines = []
    started = time.monotonic()
    with pytest.raises(launch.LaunchError, match="timed out"):
        launch.stream([sys.executable, "-c", parent], None, timeout=3, echo=lines.append)
    assert time.monotonic() - started < 20
    assert "parent up" in lines and "child up" in lines
    pid = int(pidfile.read_text().split()[0])
    time.sleep(0.5)
    stat = Path(f"/proc/{pid}/stat")
    assert (
        not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    )  # gone, or a zombie awaiting its reaper


def test_port_in_use_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            launch.check_port(port)
    assert len(e.value.problems) == 1 and f"port {port} is in use" in e.value.problems[0]


# -- bad input through the CLI: exit 1, one line, before any rank starts ----------------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds_bad")
    (d / "malformed.json").write_text('{"zero_optimization": {"stage": 3,}\n}')
    (d / "both.json").write_text('{"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = {"ALIGNPIPE_HOME": str(d / "state")}
    cases = {
        "missing": ["validate", TINY, "--set", f"distributed.deepspeed={d / 'nope.json'}"],
        "malformed": ["validate", TINY, "--set", f"distributed.deepspeed={d / 'malformed.json'}"],
        "both": [
            "validate",
            TINY,
            "--set",
            f"distributed.deepspeed={d / 'both.json'}",
            "--set",
            "sft.max_grad_norm=0.5",
        ],
        "zero": ["validate", TINY, "--set", "distributed.num_processes=0"],
        "busy": [
            "stage",
            "sft",
            TINY,
            "--set",
            "sft.model_path=./data",
            "--set",
            "distributed.num_processes=2",
            "--set",
            f"distributed.master_port={port}",
        ],
    }
    results = {k: cli_in_process(*args, env=env) for k, args in cases.items()}  # each stops before any compute
    busy.close()
    return {"dir": d, "port": port, **results}


def _one_line(proc, *parts):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("error:") for ln in lines), proc.stderr
    assert any(all(p in ln for p in parts) for ln in lines), (parts, proc.stderr)
    assert "launching" not in out


def test_missing_deepspeed_json(bad):
    _one_line(bad["missing"], "nope.json", "does not exist")


def test_malformed_deepspeed_json(bad):
    _one_line(bad["malformed"], "malformed.json", "invalid JSON at line 1 column 35")


def test_value_set_in_both_places(bad):
    _one_line(
        bad["both"],
        "both.json",
        "'train_micro_batch_size_per_gpu'",
        "sft.per_device_train_batch_size",
        "set in both places",
    )
    _one_line(bad["both"], "'gradient_clipping'", "sft.max_grad_norm", "set in both places")


def test_impossible_process_count(bad):
    _one_line(bad["zero"], "distributed.num_processes", ">= 1")


def test_port_in_use(bad):
    _one_line(bad["busy"], f"port {bad['port']} is in use")


# -- the real thing: 2 CPU ranks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks_state(tmp_path_factory):
    state = tmp_path_factory.mktemp("ds_state")
    proc = run_cli("stage", "select", TINY, *sum((["--set", s] for s in FAST), []), env={"ALIGNPIPE_HOME": str(state)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return state


def _stage_runs(state: Path, stage: str):
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    return mlflow.search_runs(
        experiment_names=["tiny"], filter_string=f"tags.`alignpipe.stage` = '{stage}'", output_format="list"
    )


def _weights(path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in Path(path).glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


def _launched(state, stage, zero, *sets):
    started = time.monotonic()
    proc = run_cli(
        "stage",
        stage,
        TINY,
        *sum((["--set", s] for s in [*FAST, *sets]), []),
        "--set",
        f"distributed.deepspeed=deepspeed_configs/{zero}.json",
        "--set",
        f"distributed.master_port={_free_port()}",
        env={"ALIGNPIPE_HOME": str(state)},
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    print(f"{stage} {zero}: {time.monotonic() - started:.0f}s")
    assert proc.returncode == 0, out[-6000:]
    assert "[rank 0]" in out and "[rank 1]" in out  # both ranks' output came through
    assert f"{stage}: integrity OK" in out
    return StageResult.read(state / "runs" / "tiny" / f"{stage}.json"), out


def test_two_rank_zero3_sft_then_zero2_dpo(ranks_state):
    select = StageResult.read(ranks_state / "runs" / "tiny" / "select.json")
    sft, out = _launched(ranks_state, "sft", "zero3")
    # ZeRO-3 really partitions: each rank holds half of the parameters from the load on
    held = re.findall(r"sft: ZeRO-3 rank (\d): holds ([\d,]+) of ([\d,]+) parameters", out)
    assert sorted(r for r, _, _ in held) == ["0", "1"], out[-3000:]
    assert all(abs(int(h.replace(",", "")) / int(n.replace(",", "")) - 0.5) < 0.01 for _, h, n in held), held
    # ... and the optimizer keeps no second fp32 copy of a rank's (fp32) weights
    master = re.findall(r"sft: ZeRO-3 rank (\d): fp32 master weights apart from the model's: (\d+) MiB", out)
    assert sorted(master) == [("0", "0"), ("1", "0")], master
    runs = _stage_runs(ranks_state, "sft")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == sft.run_id
    before, after = _weights(select.model_path), _weights(sft.model_path)
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape and after[k].numel() for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert "integrity.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(sft.run_id)}

    dpo, _ = _launched(ranks_state, "dpo", "zero2")
    runs = _stage_runs(ranks_state, "dpo")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == dpo.run_id
    assert dpo.lineage["reference_model"] == sft.model_path
    changed = _weights(dpo.model_path)  # ZeRO-2 also writes the tied lm_head.weight
    assert set(after) <= set(changed) and any(not torch.equal(after[k], changed[k]) for k in after)
    assert "train_loss" in dpo.metrics
    # Reference log-probs precomputed on both ranks (the default) and cached: another beta reads them.
    used = dpo.details["ref_logps"]["train"]
    assert Path(used["path"]).is_file()
    variant, out = _launched(ranks_state, "dpo", "zero2", "preference.beta=0.2")
    assert variant.details["ref_logps"]["train"] == {**used, "reused": True}
    assert "[rank 1] reference log-probs for train: reusing" in out
    assert variant.metrics["train_loss"] != dpo.metrics["train_loss"]


def test_two_nodes_run_one_zero2_sft(ranks_state, tmp_path):
    """Two launchers on this machine acting as two nodes of one rank each (`--no_ssh`, each with its
    node_rank, meeting at node 0's address), ZeRO-2 SFT to completion: one MLflow run, written by
    global rank 0 on node 0, and a model that passes the integrity check."""
    select = StageResult.read(ranks_state / "runs" / "tiny" / "select.json")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = _free_port()
    sets = [
        *FAST,
        "distributed.num_processes=1",
        "distributed.deepspeed=deepspeed_configs/zero2.json",
        f"distributed.hostfile={hostfile}",
        "distributed.master_addr=127.0.0.1",
        f"distributed.master_port={port}",
        f"sft.model_path={select.model_path}",
        "experiment=two-nodes",
    ]

    def node(rank: int) -> subprocess.CompletedProcess:
        args = sum((["--set", s] for s in [*sets, f"distributed.node_rank={rank}"]), [])
        return run_cli("stage", "sft", TINY, *args, env={"ALIGNPIPE_HOME": str(ranks_state)}, timeout=1500)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(node, (0, 1))
    print(f"two-node ZeRO-2 sft: {time.monotonic() - started:.0f}s")
    for proc in (first, second):
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "--no_ssh" in first.stdout and "--node_rank 1" in second.stdout
    assert "sft: integrity OK" in first.stdout
    assert "node 1's ranks finished; node 0 reports the result" in second.stdout
    sft = StageResult.read(ranks_state / "runs" / "two-nodes" / "sft.json")
    mlflow.set_tracking_uri(f"sqlite:///{ranks_state / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["two-nodes"], output_format="list")
    assert [(r.info.run_name, r.info.status, r.info.run_id) for r in runs] == [("sft", "FINISHED", sft.run_id)]
    before, after = _weights(select.model_path), _weights(sft.model_path)
    assert before.keys() <= after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


# -- the integrity check on its own -----------------------------------------------------------------


def test_integrity_check_catches_an_empty_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from alignpipe.training import IntegrityError, check_integrity

    tok = Tokenizer(
        models.WordLevel(
            {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate("say hello instruction response ###".split())}},
            unk_token="<unk>",
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=8,
        eos_token_id=1,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    report = check_integrity(tmp_path, config, tokenizer)
    assert (
        report["params"] == report["expected_params"] == sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    )
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.weight"] = torch.empty(0)  # what a bad ZeRO-3 save leaves
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IntegrityError, match="empty tensor model.layers.0.mlp.up_proj.weight"):
        check_integrity(tmp_path, config, tokenizer)


def _launched_by(pid: int) -> list[int]:
    """PIDs of live processes a launched job started for the CLI process `pid` (launcher and ranks)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{processes.WATCH_ENV}={pid}".encode() in env.read_bytes().split(b"\0"):
                stat = (env.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if stat not in "ZX":
                    found.append(int(env.parent.name))
        except OSError:
            continue
    return found


def _sleeper(env: dict | None = None, code: str = "", stdout=None) -> subprocess.Popen:
    """A Python process in its own session that runs `code`, then sleeps."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import time\n{code}\ntime.sleep(300)"],
        env=env,
        start_new_session=True,
        cwd=ROOT,
        stdout=stdout,
    )


def _gone_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        return False


def test_a_killed_owner_takes_its_job_group_with_it():
    """`reap_with(owner, [-group])`, as the launching process starts it for every job: SIGKILL the
    owner and the job's whole process group stops within seconds."""
    owner = _sleeper()
    job = _sleeper()
    try:
        processes.reap_with(owner.pid, [-job.pid])
        owner.kill()
        owner.wait()
        assert _gone_within(job, 15), "the job's process group outlived its owner"
    finally:
        owner.kill()


def test_a_rank_stops_its_group_when_its_launcher_is_gone():
    """`die_with_launcher`, the rank-side second line: a process whose launcher dies kills its own group,
    also when its output went to the dead launcher (a pipe nobody reads: printing raises BrokenPipeError)."""
    launcher = _sleeper()
    env = {**os.environ, processes.WATCH_ENV: str(launcher.pid)}
    code = "from alignpipe.core.processes import die_with_launcher\ndie_with_launcher(0.2)"
    rank = _sleeper(env, code, stdout=subprocess.PIPE)
    try:
        time.sleep(1)
        assert rank.poll() is None, "the rank stopped while its launcher was alive"
        rank.stdout.close()  # the reader of the rank's output is gone with the launcher
        launcher.kill()
        launcher.wait()
        assert _gone_within(rank, 15), "the rank outlived its launcher"
    finally:
        launcher.kill()


@pytest.mark.parametrize(
    "sig, when", [(signal.SIGTERM, "training"), (signal.SIGKILL, "training"), (signal.SIGKILL, "starting")]
)
def test_no_rank_outlives_the_stage(ranks_state, sig, when):
    """The launcher and both ranks die with `alignpipe stage sft` on SIGTERM and on SIGKILL (which
    gives the CLI no chance: a watchdog the CLI started stops the job's process group, and each
    rank watches the process that launched it), also when killed while the ranks still import."""
    cmd = [str(ROOT / ".venv" / "bin" / "alignpipe"), "stage", "sft", TINY, *sum((["--set", s] for s in FAST), [])]
    cmd += ["--set", "sft.max_steps=2000", "--set", f"distributed.master_port={_free_port()}"]
    env = {**os.environ, "ALIGNPIPE_HOME": str(ranks_state)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(_launched_by(proc.pid)) < 3:  # the launcher and two ranks
            assert proc.poll() is None and time.monotonic() < deadline, "the job never started its ranks"
            time.sleep(0.5)
        if when == "training":
            time.sleep(5)  # the ranks are past their start-up
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _launched_by(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _launched_by(proc.pid), "ranks outlived the stage"
    finally:
        for pid in _launched_by(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
