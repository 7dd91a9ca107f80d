"""Run a training stage as a multi-process job: `deepspeed …` or `accelerate launch …` running
`python -m alignpipe.cli stage NAME CONFIG --set … --input KEY=VALUE … --result-json PATH` on every
rank. Upstream inputs (the base model, the SFT model, ...) travel as `--input`, never through files.

The launcher's whole process group is killed on timeout, Ctrl-C or error; every rank's output
is streamed line by line (ranks prefix their own lines with `[rank N]`); rank 0 writes the
stage's result to the JSON the parent reads back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from alignpipe.core import processes
from alignpipe.core.config import PipelineConfig
from alignpipe.core.errors import ConfigError
from alignpipe.core.result import StageResult
from alignpipe.tracking import FOLDER_ENV
from alignpipe.training.models import cache_dir


class LaunchError(RuntimeError):
    """The launched job failed (non-zero exit, timeout, or no result written)."""


def in_rank() -> bool:
    """Whether this process is a rank started by a launcher (deepspeed/torchrun set these)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def deepspeed_args(cfg: PipelineConfig) -> dict:
    """Trainer arguments for DeepSpeed inside a launched rank.

    On a CPU, accelerate sees no GPU backend and takes DeepSpeed's ranks for one process
    (world size 1: wrong batch sizes, unsharded data, every rank 'main'). So the shared state is
    set up as multi-CPU over gloo, marked DeepSpeed, and TrainingArguments told to use it.
    Call it before loading models, so ZeRO-3 partitions them as they load."""
    import torch

    from alignpipe.core.deepspeed_api import alias_fp32_master_weights

    alias_fp32_master_weights()
    args = {"deepspeed": cfg.distributed.deepspeed, "use_cpu": False}
    if not torch.cuda.is_available():
        import deepspeed
        from accelerate.state import AcceleratorState, DistributedType, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)  # e.g. left by config checks
        PartialState(cpu=True).distributed_type = DistributedType.DEEPSPEED
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)  # zero.Init (ZeRO-3 loads) needs it
        args["accelerator_config"] = {"use_configured_state": True}
    return args


def wanted(cfg: PipelineConfig) -> bool:
    """Launch (rather than run in process) when asked for, unless we already are a rank."""
    d = cfg.distributed
    return (d.num_processes > 1 or bool(d.deepspeed)) and not in_rank()


def command(
    cfg: PipelineConfig,
    stage: str,
    config_path: str,
    overrides: list[str],
    result_path: str | os.PathLike,
    inputs: dict[str, str | None] | None = None,
) -> list[str]:
    """The launcher command line for one stage (the CPU accelerator reports one device, so the
    process count is always passed explicitly)."""
    d = cfg.distributed
    bindir = Path(sys.executable).parent
    if d.launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_gpus", str(d.num_processes), "--master_port", str(d.master_port)]
        if d.hostfile:
            cmd += ["--hostfile", d.hostfile]
        if d.node_rank is not None:  # this node's ranks only; the other nodes start theirs
            cmd += ["--no_ssh", "--node_rank", str(d.node_rank), "--master_addr", d.master_addr]
        cmd += ["--no_local_rank", "--module"]
    else:
        cmd = [str(bindir / "accelerate"), "launch"]
        if d.deepspeed:
            cmd += ["--use_deepspeed", "--deepspeed_config_file", d.deepspeed]
            if d.hostfile:
                cmd += ["--deepspeed_hostfile", d.hostfile]
        elif d.num_processes > 1:
            cmd += ["--multi_gpu"]
        cmd += [
            "--num_processes",
            str(d.num_processes * d.nodes),
            "--num_machines",
            str(d.nodes),
            "--main_process_port",
            str(d.master_port),
        ]
        if d.node_rank is not None:
            cmd += ["--machine_rank", str(d.node_rank), "--main_process_ip", d.master_addr]
        cmd += ["-m"]
    cmd += ["alignpipe.cli", "stage", stage, str(config_path)]
    for item in overrides:
        cmd += ["--set", item]
    for key, value in (inputs or {}).items():
        if value is not None:
            cmd += ["--input", f"{key}={value}"]
    return cmd + ["--result-json", str(result_path)]


def check_port(port: int) -> None:
    """ConfigError (one line) if the rendezvous port is taken, before any rank starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers of a past run are fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ConfigError(
                [
                    f"distributed.master_port: port {port} is in use on 127.0.0.1 ({e.strerror}); "
                    f"pick another with --set distributed.master_port=N"
                ]
            ) from None


def environment(cfg: PipelineConfig) -> dict[str, str]:
    """The ranks' environment: compiled DeepSpeed ops cached under the project's cache dir; glibc
    returns every allocation of 64 KiB or more to the system when it is freed (ZeRO-3 gathers and
    frees each layer's weights and gradients at every step: with glibc's growing default threshold,
    the freed buffers stayed in each rank's heap, ~1 GiB a rank on the 220M model of
    benchmarks/zero_memory.py)."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    ext = cache_dir(cfg) / "torch_extensions"
    ext.mkdir(parents=True, exist_ok=True)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ext))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    cwd = str(Path.cwd())  # ranks must import this checkout's code, as we do
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    env[processes.WATCH_ENV] = str(os.getpid())  # the ranks die with this process (`processes.die_with_launcher`)
    return env


def check_ranks(cfg: PipelineConfig) -> None:
    """More ranks than this machine has GPUs (else CPU cores) for: LaunchError, before anything
    starts. Checked when a recipe runs, not by `validate`: a GPU recipe validates on any machine."""
    d = cfg.distributed
    if d.hostfile or not isinstance(d.num_processes, int) or d.num_processes <= 1:
        return
    if torch.cuda.is_available():
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = len(os.sched_getaffinity(0)), "CPU cores"
    if d.num_processes > have:
        raise LaunchError(
            f"distributed.num_processes is {d.num_processes} but this machine has {have} {what}: "
            f"one rank per {what[:-1]} at most (or give distributed.hostfile to use several machines)"
        )


def run(
    cfg: PipelineConfig,
    stage: str,
    inputs: dict[str, str | None] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    timeout: float | None = None,
    echo=print,
    folder: Path | None = None,
) -> StageResult | None:
    """Launch the stage on every rank (of this node, with `node_rank`), stream their output through
    `echo`, return rank 0's result (None on a node other than node 0). `folder`: the stage's output
    folder, which the ranks use (alignpipe.flows.runner picked it by the stage's identity)."""
    config_path = config_path or cfg.source
    overrides = cfg.overrides if overrides is None else overrides
    if not config_path:
        raise ConfigError(
            [f"{stage}: a launched stage needs the recipe file (load the config with load_config(path))"]
        )
    check_ranks(cfg)
    if not cfg.distributed.node_rank:  # node 0 (or the only node) listens on the port
        check_port(cfg.distributed.master_port)
    result_path = cfg.run_dir / f".{stage}-launch-result.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    cmd = command(cfg, stage, config_path, overrides, result_path, inputs)
    echo(f"{stage}: launching {cfg.distributed.num_processes} process(es): {' '.join(cmd)}")
    env = environment(cfg) | ({FOLDER_ENV: str(folder)} if folder else {})
    rc = stream(cmd, env, timeout, echo)
    if rc != 0:
        raise LaunchError(f"{stage}: the {cfg.distributed.launcher} job exited with code {rc} (rank output above)")
    if cfg.distributed.node_rank:
        return None  # rank 0 runs on node 0, which writes the result and the MLflow run
    if not result_path.is_file():
        raise LaunchError(f"{stage}: the job finished but rank 0 wrote no result to {result_path}")
    return StageResult.read(result_path)


def stream(cmd: list[str], env: dict[str, str] | None, timeout: float | None, echo=print) -> int:
    """Run `cmd` in its own process group, echo its output line by line, return its exit code.

    On timeout, Ctrl-C or any error the whole group (launcher and every rank) is killed."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        errors="replace",
    )
    processes.reap_with(os.getpid(), [-proc.pid])  # a SIGKILLed caller takes the job with it
    deadline = None if timeout is None else time.monotonic() + timeout
    timer = None
    if deadline is not None:  # a reader blocked on a silent child still gets killed on time
        timer = threading.Timer(timeout, _killpg, args=(proc,))
        timer.daemon = True
        timer.start()
    try:
        for line in proc.stdout:
            echo(line.rstrip("\n"))
        rc = proc.wait()
        if deadline is not None and time.monotonic() >= deadline:
            raise LaunchError(f"timed out after {timeout:.0f}s: killed the launcher and every rank")
        return rc
    finally:
        if timer is not None:
            timer.cancel()
        _killpg(proc)
        proc.stdout.close()


def _killpg(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure no rank outlived it
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
