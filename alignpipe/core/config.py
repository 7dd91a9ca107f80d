"""The recipe's schema: every section and field, with its default and what it means, declared
once here. Loading and overrides live in `alignpipe.core.recipe`, value checks in
`alignpipe.core.recipe_checks`. The `sft`, `reward` and `preference` sections also accept any field of
TRL's own config class for the stage (SFTConfig, RewardConfig, the chosen method's config): those
pass straight through to TRL (`trl`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignpipe.core.files import state_home
from alignpipe.core.registry import PREFERENCE_METHODS, STAGES, StagePolicy

# Allowed values of the fields that take a choice.
TEMPLATES = ("alpaca", "chat")
DTYPES = ("float32", "bfloat16", "float16")
EVAL_MODELS = ("base", "sft", "preference")
DISTILL_MODES = ("sequence", "logits")
DISTILL_STARTS = ("sft", "base")
# The evaluation labels of the distillation branch (distill.enabled), in the order they are compared.
DISTILL_LABELS = ("teacher", "student_sft", "student_distill")
LAUNCHERS = ("deepspeed", "accelerate")
EVAL_CHECKS = ("exact", "refusal", "comply")  # how an eval row's answer is graded (alignpipe.evaluation.graders)
# Data formats by kind; alignpipe.data.formats holds one normaliser for each.
SFT_FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "self_instruct")
PREFERENCE_FORMATS = ("explicit", "implicit", "hh", "sharegpt")
# eval also reads HH pairs as prompts: the first Human turn, answered by the chosen first Assistant turn.
DATA_FORMATS = {"sft": SFT_FORMATS, "eval": (*SFT_FORMATS, "hh"), "preference": PREFERENCE_FORMATS}

__all__ = ["PREFERENCE_METHODS", "StagePolicy"]  # re-exported: the choices for preference.method, a policy


@dataclass
class TinySpec:
    """A small Llama- or Qwen-style model built and briefly pretrained locally (no Hub)."""

    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int | None = None  # default: 3 x hidden_size
    max_position_embeddings: int = 512
    vocab_size: int = 2048  # upper bound for the BPE trainer; the model uses len(tokenizer)
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 16
    pretrain_block_size: int = 128
    seed: int = 0


@dataclass
class Candidate:
    """A pretrained model to consider: a hub id, local dir or GGUF file (`path`; a `.gguf` file, or
    `pkg:DIST/FILE` inside an installed package), or a `tiny` spec."""

    name: str = ""
    path: str | None = None
    gguf_file: str | None = None  # a GGUF file inside the `path` dir

    @property
    def source(self) -> str | None:
        """`path`, or the GGUF file `gguf_file` inside it."""
        return str(Path(self.path) / self.gguf_file) if self.path and self.gguf_file else self.path

    tiny: TinySpec | None = None
    revision: str | None = None


@dataclass
class ModelSection:
    candidates: list[Candidate] = field(default_factory=list)
    max_params: int | None = None  # budget: candidates above it are not scored
    max_memory_gb: float | None = None  # budget on the estimated full fine-tuning memory
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class DataSource:
    """One data file, `save_to_disk` folder or hub id, and its share of the stage's mixture.

    Eval sources (`data.eval`, `data.eval_preference`) take the fixed slice offset .. offset+max_rows of
    their rows in file order (no sampling, no weight: the suite does not move with the seed), so one
    file listed twice with offsets gives disjoint rows. `check` is for `data.eval` sources only: set on
    any other source it is a config error, not ignored."""

    path: str | None = None
    format: str = "auto"  # auto-detected from the fields; one of DATA_FORMATS
    split: str = "train"  # for hub ids and saved DatasetDicts
    weight: float = 1.0  # share of its rows used (0.5: half, 2: each row twice)
    max_rows: int | None = None  # cap on its rows after weighting (eval: the first max_rows after offset)
    offset: int = 0  # rows skipped from the start (after bad rows are dropped), before weight and max_rows
    category: str | None = None  # category of rows that carry none
    category_field: str = "category"  # the field holding a row's category (e.g. task_type)
    check: str | None = None  # data.eval only: check of rows that carry none (EVAL_CHECKS; default exact)


@dataclass
class SafetyMix:
    """Refusal rows mixed into SFT so they make up `fraction` of the training rows."""

    path: str | None = None
    format: str = "auto"
    split: str = "train"
    category: str | None = None  # only rows of this category (e.g. safety); None: all rows
    fraction: float = 0.0


@dataclass
class DataSection:
    sft: DataSource | list[DataSource] = field(default_factory=DataSource)
    preference: DataSource | list[DataSource] = field(default_factory=DataSource)
    eval: DataSource | list[DataSource] = field(default_factory=DataSource)
    eval_preference: DataSource | list[DataSource] = field(default_factory=DataSource)
    validation_rows: int = 64  # rows hashed out of the SFT/preference data for select and eval_loss
    on_bad_rows: str = "fail"  # fail | skip (skipped rows are counted by reason and logged)
    dedup: bool = True  # drop exact duplicate training rows
    decontaminate: str = "remove"  # remove | fail | off: training rows overlapping any eval set
    ngram: int = 13  # n-gram length for decontamination
    heldout_categories: list[str] = field(default_factory=list)  # kept out of training entirely
    safety: SafetyMix = field(default_factory=SafetyMix)


@dataclass
class FormatsSection:
    """Format variation in training, and format robustness in evaluation."""

    variation: float = 0.0  # share of training rows rendered with a varied template
    robustness_rows: int = 48  # eval rows also scored under templates never used in training (0: off)


@dataclass
class SelfInstructSection:
    """Self-Instruct bootstrapping (Wang et al. 2023) before SFT; its rows join the SFT mixture."""

    enabled: bool = False
    seed_tasks: str | None = None  # seed tasks in the Self-Instruct format ({instruction, instances, ...})
    generator: str | None = None  # model path or hub id; default: the selected base model
    rounds: int = 2
    prompts_per_round: int = 8  # generation prompts per round
    prompt_instructions: int = 8  # instructions shown per prompt (paper: 6 seed + 2 generated)
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.5
    rouge_threshold: float = 0.7  # keep an instruction only if ROUGE-L < this against every one in the pool
    min_words: int = 3
    max_words: int = 150


@dataclass
class SelectSection:
    perplexity_rows: int = 64
    generation_rows: int = 24
    max_new_tokens: int = 16
    tie_tolerance: float = 0.02  # perplexities within 2% count as tied; generation score decides


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    layers_to_transform: list[int] | None = None  # adapt only these decoder layers (e.g. the last 8); default all


@dataclass
class SFTSection:
    """Our keys; any other key must be a field of trl.SFTConfig and passes through."""

    model_path: str | None = None  # default: the model picked by `select`
    template: str = "alpaca"  # alpaca | chat
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferenceSection:
    """Our keys; any other key must be a field of the chosen method's TRL config and passes through.

    A sub-section named after a method (`dpo: {...}`, `ppo: {...}`) holds that method's TRL fields
    for this recipe; it is used only when that method runs, and keys set directly under
    `preference` win over it. `trl` is the result for the chosen method."""

    method: str = "dpo"  # a Method of alignpipe.core.registry: dpo | ipo | kto | orpo | simpo | ppo | rloo | grpo
    model_path: str | None = None  # default: the SFT stage's output
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardSection:
    """The reward model (for ppo, rloo, grpo). Our keys; any other key must be a field of
    trl.RewardConfig and passes through."""

    model_path: str | None = None  # start from this model; default: the SFT stage's output
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateSection:
    models: list[str] = field(
        default_factory=lambda: ["base", "sft", "preference"]
    )  # preference: labelled by its method
    max_new_tokens: int = 24
    batch_size: int = 32
    num_samples: int = 24  # sample generations logged per model
    beta: float = 0.1  # for implicit reward margins against the SFT reference


@dataclass
class StudentSpec:
    """A student cut from a larger model (`distill.student: {from: <model>, layers: k}`): its first
    `layers` decoder layers, with its embeddings, final norm and LM head."""

    from_: str | None = field(default=None, metadata={"key": "from"})  # a candidates name, model dir or hub id
    layers: int | None = None  # decoder layers kept: 1 <= layers < the source's


@dataclass
class DistillSection:
    """Teacher-to-student distillation (`distill` stage). The student is trained twice on the same
    SFT data: SFT-only (`student_sft`) and distilled (`student_distill`); evaluate scores both
    beside the teacher.

    sequence: the teacher writes answers to the SFT prompts; they are filtered like any SFT data
    and the student is trained on them with the SFT stage's settings (`sft`), overlaid with
    `distill.sequence` (trl.SFTConfig fields).
    logits: the student matches the teacher's token distributions: TRL's DistillationTrainer
    (on-policy, `lmbda` 1) or GKDTrainer (`lmbda` < 1: that share of batches on-policy, the rest
    the dataset's answers), with `distill.logits` (fields of that TRL config)."""

    enabled: bool = False
    mode: str = "sequence"  # sequence | logits
    teacher: str | None = None  # hub id or model dir; default: this pipeline's SFT model
    # a model.candidates name, a model dir or hub id, or {from: <one of those>, layers: k} (its first k
    # decoder layers); default: the selected base
    student: str | StudentSpec | None = None
    start: str = "sft"  # logits: distil into the student's SFT model (sft) or its base (base)
    lmbda: float = 1.0  # logits: share of on-policy batches (1: DistillationTrainer; < 1: GKDTrainer)
    self_instruct: bool = True  # sequence: the teacher also answers the Self-Instruct prompts, when enabled
    max_new_tokens: int = 64  # longest answer the teacher writes (sequence) or the student samples (logits)
    lora: LoraSection | None = None  # the student's adapters, in student_sft and distill alike; None: full fine-tune
    # trl.SFTConfig fields over the `sft` section's, for the student: student_sft, and distill in sequence mode
    sequence: dict[str, Any] = field(default_factory=dict)
    logits: dict[str, Any] = field(default_factory=dict)  # trl.DistillationConfig (GKDConfig if lmbda < 1)

    @property
    def trl_kind(self) -> str:
        """TRL trainer kind of this mode (alignpipe.core.trl_api)."""
        if self.mode == "sequence":
            return "sft"
        return "gkd" if isinstance(self.lmbda, float) and self.lmbda < 1 else "distill"


@dataclass
class DistributedSection:
    """More than one process, or a DeepSpeed config, runs sft and the offline preference methods as a
    multi-rank job (`alignpipe.training.launch`)."""

    num_processes: int = 1  # processes per node (GPUs; on a CPU box, CPU ranks)
    deepspeed: str | None = None  # a DeepSpeed JSON, e.g. deepspeed_configs/zero3.json
    launcher: str = "deepspeed"  # deepspeed | accelerate
    master_port: int = 29500
    hostfile: str | None = None  # multi-node: DeepSpeed hostfile ("host slots=N" per line)
    # Multi-node without ssh (SLURM, Kubernetes, a shell per node): every node runs the same stage
    # command with its own node_rank (0 .. hosts-1) and node 0's address; node 0 reports the result.
    node_rank: int | None = None
    master_addr: str | None = None

    @property
    def nodes(self) -> int:
        """Machines in the job: the hostfile's hosts (1 without one)."""
        if not self.hostfile:
            return 1
        lines = Path(self.hostfile).read_text().splitlines()
        return max(1, sum(1 for ln in lines if ln.strip() and not ln.lstrip().startswith("#")))


@dataclass
class TrackingSection:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite under the state dir
    report_to: list[str] = field(default_factory=list)  # extra trainer integrations, e.g. wandb
    log_model_weights: bool = True  # copy each produced model's files into the MLflow artifact store


# `orchestration.<stage>`: one StagePolicy per stage of the registry, its default the registry's.
OrchestrationSection = dataclasses.make_dataclass(
    "OrchestrationSection",
    [(s.name, StagePolicy, field(default_factory=lambda s=s: dataclasses.replace(s.policy))) for s in STAGES.values()],
)


@dataclass
class PromoteSection:
    """The gate before the final model gets the registry alias `champion`: on every listed metric
    it must be non-inferior to `baseline` on the same evaluation: the 95% interval of the paired
    difference (oriented so that positive is better) must have its lower bound >= -tolerance."""

    enabled: bool = True
    model_name: str | None = None  # registry name; default: the experiment name
    candidate: str = "final"  # the model gated: final (the preference model; SFT in sft-only runs) or a label
    baseline: str = "sft"  # a model label of the evaluation; sft-only runs compare with base
    metrics: list[str] = field(default_factory=lambda: ["pref_accuracy", "acc_seen", "refusal_rate"])
    tolerance: float = 0.05  # non-inferiority margin per metric, in the metric's own units
    alias: str = "champion"


@dataclass
class PipelineConfig:
    experiment: str = "alignpipe"
    seed: int = 42  # data split, mixing and the tiny models' build; the training seed when `seeds` is unset
    # Training seeds: sft and the preference stage train once per seed, evaluate scores every
    # seed's models and reports means with intervals over items and seeds (`alignpipe run --seeds N`).
    seeds: list[int] | None = None
    state_dir: str | None = None  # default: $ALIGNPIPE_HOME or ./.alignpipe
    # Every stage for 2 steps on a handful of items, in experiment `<experiment>-fast-dev-run`, with
    # nothing registered: a recipe's smoke test (`alignpipe run RECIPE --fast-dev-run`).
    fast_dev_run: bool = False
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    select: SelectSection = field(default_factory=SelectSection)
    sft: SFTSection = field(default_factory=SFTSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    reward: RewardSection = field(default_factory=RewardSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    formats: FormatsSection = field(default_factory=FormatsSection)
    self_instruct: SelfInstructSection = field(default_factory=SelfInstructSection)
    distill: DistillSection = field(default_factory=DistillSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    orchestration: OrchestrationSection = field(default_factory=OrchestrationSection)
    promote: PromoteSection = field(default_factory=PromoteSection)
    source: str = field(default="", metadata={"internal": True})  # the YAML file it came from
    overrides: list[str] = field(default_factory=list, metadata={"internal": True})  # its --set items

    @property
    def student_sft_args(self) -> dict[str, Any]:
        """The distillation student's SFTConfig fields (student_sft, and distill in sequence mode):
        `distill.sequence` over the `sft` section's."""
        return {**self.sft.trl, **self.distill.sequence}

    # -- derived locations ---------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return state_home(self.state_dir)

    @property
    def training_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def run_dir(self) -> Path:
        return self.state_path / "runs" / self.experiment

    @property
    def tracking_uri(self) -> str:
        return (
            self.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.state_path / 'mlflow.db'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
