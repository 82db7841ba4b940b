"""The one settings object: `CONTINUUM_*` environment variables, built at the entry point, passed down.

Nothing here connects to anything; it only describes where things are. `Settings.check()` refuses
unsafe combinations (a default or missing secret outside embedded mode) with one message listing every
problem.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Literal
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError

# Secrets that ship in examples and docs. Outside embedded mode they are as good as no secret.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "minioadmin", "continuum", "postgres", "password", "secret",
     "admin", "test", "guest", "redis", "rabbitmq", "root", "default", "letmein", "123456", "12345678",
     "password123", "qwerty", "celery", "user", "pass", "minio123", "example", "s3cr3t"}
)
# Shorter secrets are refused outside embedded mode: a few characters fall to a brute force quickly.
MIN_SECRET_LENGTH = 12
# Broker URL schemes Celery/kombu accept; each one's password is checked (the embedded one is refused).
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "librabbitmq", "sqs")


class Mode(str, Enum):
    embedded = "embedded"
    distributed = "distributed"


class FeedbackPolicy(str, Enum):
    """What a thumbs-down row becomes in a training set.

    `unlikelihood` lowers the disliked response's probability; `train_as_positive` (the old
    `downweight`) trains it as a target at `thumbs_down_weight` and is never the default.
    """

    skip = "skip"
    train_as_positive = "train_as_positive"
    unlikelihood = "unlikelihood"


def refuse_renamed_policy(value: object) -> object:
    """`downweight` was renamed: refuse it with the fix rather than silently keep learning disliked answers."""
    if isinstance(value, str) and value == "downweight":
        raise ValueError(
            "thumbs-down policy 'downweight' was renamed 'train_as_positive' (it trains the disliked "
            "response as a target); use unlikelihood (default), skip or train_as_positive"
        )
    return value


class Settings(BaseSettings):
    """All of continuum's configuration. Every field maps to `CONTINUUM_<FIELD>` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="CONTINUUM_", extra="ignore", validate_default=True)

    mode: Mode = Field(Mode.embedded, description="`embedded` (one machine, no servers) or `distributed`.")
    home: Path = Field(
        Path(".continuum"),
        description="Folder for embedded-mode state (SQLite, objects, broker); made absolute when settings are built.",
    )
    # repr=False: these URLs usually embed a password, and settings objects end up in logs.
    database_url: str = Field(
        "",
        repr=False,
        description="SQLAlchemy URL of the source-of-truth database; empty = SQLite file under `home`.",
    )
    storage_url: str = Field(
        "", description="`file://PATH` or `s3://bucket/prefix`; empty = `file://<home>/objects`."
    )
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO); empty = AWS default.")
    s3_region: str = Field("", description="S3 region; empty = AWS_DEFAULT_REGION or us-east-1.")
    s3_access_key_id: SecretStr = Field(SecretStr(""), description="S3 access key; empty = AWS_ACCESS_KEY_ID.")
    s3_secret_access_key: SecretStr = Field(
        SecretStr(""), description="S3 secret key; empty = AWS_SECRET_ACCESS_KEY."
    )
    broker_url: str = Field(
        "",
        repr=False,
        description="Celery broker URL (`redis://…`); empty = the embedded SQLite broker under `home`."
    )
    flower_basic_auth: SecretStr = Field(
        SecretStr(""), description="`user:password` for Flower; required outside embedded mode."
    )

    # Feedback and export.
    feedback_max_chars: int = Field(32_000, gt=0, description="Largest prompt or response accepted, in characters.")
    thumbs_up_weight: float = Field(2.0, gt=0, description="Training weight of a thumbs-up sample.")
    thumbs_down_policy: FeedbackPolicy = Field(
        FeedbackPolicy.unlikelihood,
        description="Thumbs-down rows: `unlikelihood` (push the disliked response down), `skip` or "
        "`train_as_positive` (learn it as a target; the old `downweight`).",
    )
    thumbs_down_weight: float = Field(
        0.5, ge=0, description="Weight of a thumbs-down sample under `train_as_positive`."
    )
    export_min_rows: int = Field(1, ge=1, description="Fewer new feedback rows than this: export is skipped.")
    export_max_rows: int = Field(2_000_000, ge=1, description="Most feedback rows one export claims.")
    holdout_percent: int = Field(
        10, ge=0, le=50, description="Share of prompts held out (never trained): generalisation is scored on them."
    )
    probe_percent: int = Field(
        20, ge=0, le=50,
        description="Share of prompts taught but never replayed: later cycles score retention on them.",
    )

    # Learning: what is trained, where, and with which recipe. Job parameters may override per run.
    base_model: str = Field(
        "",
        description="Base model: a name registered with `continuum model add` (e.g. `smollm2-135m-instruct`), a "
        "local model folder, or a hub id; empty or `builtin:tiny` = the built-in tiny model (made once, kept in storage).",
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="`auto` (cuda > mps > cpu), `cuda`, `mps` or `cpu` for ML jobs."
    )
    load_in_4bit: bool = Field(False, description="QLoRA: load the base model in 4-bit (CUDA + bitsandbytes only).")
    adapter_name: str = Field("default", description="Name of the continually trained adapter lineage.")
    lora_target_modules: str = Field(
        "auto",
        description="Layers a new adapter trains: comma list of module names, or `auto` = every attention and "
        "MLP projection of the architecture (Llama/Qwen/Mistral q,k,v,o,gate,up,down_proj; GPT-2 c_attn,c_proj,"
        "c_fc; GPT-NeoX query_key_value,dense,…; else all linear layers but the LM head), because MLP layers "
        "hold facts and attention-only LoRA learns them poorly.",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank r of a new adapter (capacity per cycle; cost grows with it).")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha of a new adapter; the update is scaled by alpha/r (2 by default).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on a new adapter's LoRA input.")
    recipe: str = Field(
        "default",
        description="Continual recipe: `default` (replay + EWC + KL to the base on its own answers), `naive`, "
        "`replay`, `ewc_lora`, `ewc_delta_w`, `l2_delta_w`, `kl`, `self_replay`, `nested` (LoRA modules in tiers "
        "updated at different frequencies, see CONTINUUM_NESTED_*) or `nested_surprise` (the same plus the "
        "second-order surprise objective).",
    )
    nested_frequencies: str = Field(
        "balanced",
        description="Nested tiers' update frequencies, fastest first: a preset (`conservative` 1,4,8, `balanced` "
        "1,2,4, `aggressive` 1,2,3) or a comma list of 2–4 ascending whole numbers. Used by the `nested` recipe.",
    )
    nested_tiers: int = Field(0, ge=0, description="Number of nested tiers; 0 = as many as frequencies (else must match them).")
    nested_strategy: Literal["depth", "importance"] = Field(
        "depth",
        description="How LoRA modules are put in tiers: `depth` (layer bands) or `importance` (the parent's "
        "Fisher: most important modules update slowest; depth on a first cycle).",
    )
    nested_shallow: Literal["fast", "slow"] = Field(
        "fast", description="With `depth`: whether the shallowest layers form the fastest or the slowest tier."
    )

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        from common.recipes import recipe_problem

        if problem := recipe_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("documents_views")
    @classmethod
    def _known_views(cls, value: str) -> str:
        views = [v.strip() for v in value.split(",") if v.strip()]
        unknown = sorted(set(views) - {"names", "questions"})
        if unknown:
            raise ValueError(f"CONTINUUM_DOCUMENTS_VIEWS: unknown view(s) {unknown}; use names, questions, both "
                             f"comma-separated, or empty for the chunks only")
        return ",".join(views)

    @model_validator(mode="after")
    def _valid_nested_tiers(self) -> Settings:
        from common.nested_frequencies import frequency_problems, parse_frequencies

        try:
            problems = frequency_problems(parse_frequencies(self.nested_frequencies), self.nested_tiers or None)
        except ValueError as exc:
            problems = [str(exc)]
        if problems:
            raise ValueError("CONTINUUM_NESTED_FREQUENCIES / CONTINUUM_NESTED_TIERS: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _valid_fact_patterns(self) -> Settings:
        from common.errors import ConfigError as _ConfigError
        from common.online.facts import patterns_from_json

        try:
            patterns_from_json(self.online_fact_patterns)
        except _ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _valid_chunking(self) -> Settings:
        if self.documents_chunk_overlap >= self.documents_chunk_tokens:
            raise ValueError(f"CONTINUUM_DOCUMENTS_CHUNK_OVERLAP ({self.documents_chunk_overlap}) must be smaller "
                             f"than CONTINUUM_DOCUMENTS_CHUNK_TOKENS ({self.documents_chunk_tokens})")
        return self

    train_epochs: int = Field(0, ge=0, description="Epochs per training cycle; 0 = the recipe's default.")
    suppression_margin: float = Field(
        2.0, ge=0,
        description="Unlikelihood stops pushing a thumbs-down answer once its mean token log-prob is this many "
        "nats below the base model's; 0 = no bound (every epoch pushes it further).",
    )
    fisher_max_samples: int = Field(256, ge=1, description="Most samples one Fisher computation reads.")
    reteach_after_rollback: bool = Field(
        True,
        description="After `continuum rollback`, the next cycle also re-teaches the datasets the rolled-back "
        "version(s) had learnt (else they are left out, and the job result says which).",
    )
    eval_max_samples: int = Field(200, ge=1, description="Most samples per evaluation set (keeps cost flat as history grows).")
    anchors_file: str = Field(
        "",
        description="General retention: a JSONL file of your own probes, one `{\"prompt\": ..., \"answer\": "
        "optional string or list}` per line; rows with an answer join the built-in general questions, rows "
        "without join the anchor prompts.",
    )
    eval_exact_match: bool = Field(
        False, description="Evaluation also greedy-decodes taught answers for exact match (short-answer data)."
    )
    # The promotion gate (issue 8): one threshold per measure; each can be overridden per promote job.
    gate_min_recall: float = Field(
        0.5, ge=0, le=1, description="Promotion gate: least recall (token accuracy) on the rows this cycle taught."
    )
    gate_recall_exact_match: bool = Field(
        False, description="Promotion gate: judge recall by exact match when the evaluation has it."
    )
    gate_min_generalisation_gain: float = Field(
        -0.05, description="Promotion gate: least holdout NLL gain over the parent (negative allows a small loss)."
    )
    gate_max_forgetting: float = Field(
        0.10, ge=0, le=1, description="Promotion gate: worst forgetting of an earlier dataset since first taught."
    )
    gate_min_general_retention: float = Field(
        0.9, ge=0, le=1, description="Promotion gate: least share of the base's right general answers kept."
    )
    gate_min_suppression: float = Field(
        0.0, description="Promotion gate: least log-prob drop of thumbs-down responses (only when there are some)."
    )

    # ---- Distributed execution (job ledger, Celery, workers, beat, promotion) -- owned by issue 4 ----
    job_lease_seconds: int = Field(
        60, ge=2, description="A claimed job's lease; a worker that stops heartbeating loses the job after this long."
    )
    job_heartbeat_seconds: float = Field(
        3.0, gt=0, description="How often a running job renews its lease and checks for a cancel request."
    )
    job_max_attempts: int = Field(3, ge=1, description="Tries before a job stays `failed` for good (dead letter).")
    job_soft_time_limits: dict[str, int] = Field(
        default_factory=lambda: {
            "export": 1800, "fisher": 3600, "train": 6 * 3600, "evaluate": 3600, "promote": 300,
            "sleep": 600, "noop": 60, "online": 1800, "ingest": 1800, "calibrate": 3600,
        },
        description="Per job kind, seconds before the job is asked to checkpoint and requeue (JSON object).",
    )
    job_hard_time_limit_grace_seconds: int = Field(
        120, ge=1, description="Seconds after the soft limit before a job's process is killed."
    )
    broker_visibility_timeout_seconds: int = Field(
        12 * 3600,
        ge=1,
        description="Redis redelivers an unacked message after this long; must exceed the longest hard time limit.",
    )
    child_stop_grace_seconds: float = Field(
        5.0, gt=0, description="After SIGTERM, seconds a job process gets to checkpoint before SIGKILL."
    )
    job_process_start: Literal["auto", "forkserver", "spawn"] = Field(
        "auto",
        description="How a worker starts a job process: `forkserver` forks it from a process that imported the "
        "job code (torch, transformers, peft) when the worker started, so a job starts in well under a second; "
        "`spawn` starts a fresh interpreter per job (seconds of imports). `auto` = forkserver on Linux, spawn "
        "elsewhere (macOS: forking after loading Apple's frameworks is unsafe).",
    )
    reaper_interval_seconds: float = Field(
        30.0, gt=0, description="How often beat re-enqueues jobs whose lease expired."
    )
    queued_resend_seconds: int = Field(
        900, ge=1, description="A job queued this long without being claimed has its message sent again."
    )
    worker_heartbeat_seconds: float = Field(15.0, gt=0, description="How often a worker refreshes its `workers` row.")
    worker_live_seconds: int = Field(
        60, ge=1, description="A worker whose heartbeat is younger than this counts as live for `device=auto` routing."
    )
    pipeline_schedule: str = Field(
        "0 2 * * 1",
        description="When beat starts a pipeline: a 5-field cron (default Monday 02:00 UTC) or `@every <N>s`.",
    )
    pipeline_schedule_name: str = Field("weekly", description="Name of the beat schedule (part of its run key).")
    pipeline_min_samples: int = Field(
        8, ge=1, description="A pipeline run with fewer new feedback rows than this ends `skipped` without training."
    )
    hot_swap_url: str = Field(
        "", description="Serving engine base URL (vLLM-compatible); after a promotion it loads the new adapter."
    )
    hot_swap_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of each hot-swap HTTP call.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Port `continuum flower` listens on.")
    flower_address: str = Field(
        "127.0.0.1", description="Address `continuum flower` binds; `0.0.0.0` exposes it to the network."
    )
    # `continuum serve`: the production adapter behind an OpenAI-compatible HTTP API.
    serve_port: int = Field(8400, ge=1, le=65535, description="Port `continuum serve` listens on.")
    serve_address: str = Field(
        "127.0.0.1", description="Address `continuum serve` binds; `0.0.0.0` exposes it to the network."
    )
    serve_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token `continuum serve` requires (`Authorization: Bearer …`); required outside "
        "embedded mode.",
    )
    serve_adapter: str = Field(
        "production",
        description="What `continuum serve` answers with: an alias it follows (moves are loaded without a "
        "restart) or a fixed adapter id.",
    )
    serve_poll_seconds: float = Field(
        2.0, gt=0, description="How often `continuum serve` checks whether its alias has moved."
    )
    serve_max_new_tokens: int = Field(
        256, ge=1, description="Largest answer `continuum serve` generates (a request's max_tokens is capped by it)."
    )
    serve_temperature: float = Field(
        0.0, ge=0, le=2,
        description="Sampling temperature when a request gives none; 0 = greedy (deterministic answers).",
    )
    serve_max_adapters: int = Field(
        4, ge=1, description="Adapter versions `continuum serve` keeps loaded at once (the followed one included)."
    )
    # Online learning from each served chat turn (`workers/online`).
    online: bool = Field(
        False, description="Learn from every chat turn `continuum serve` answers (online jobs on the `online` queue)."
    )
    online_learning_rate: float = Field(
        0.0, ge=0, description="Online learning rate before multipliers; 0 = half the train job's rate for the model's "
        "size (SmolLM2: 1e-3 kept more general answers than 2e-3 and recalled as much)."
    )
    online_steps_per_turn: int = Field(3, ge=1, description="Optimizer steps the online learner takes on each turn.")
    online_lr_chat: float = Field(
        0.0, ge=0, description="Learning-rate multiplier of a turn that states no fact and asks nothing (0: not learnt)."
    )
    online_lr_question: float = Field(
        0.0, ge=0, description="Learning-rate multiplier of a question turn (0: the model's own answer is not learnt)."
    )
    online_lr_fact: float = Field(1.0, ge=0, description="Learning-rate multiplier of a turn that states a new fact.")
    online_lr_repeated_fact: float = Field(
        1.0, ge=0, description="Learning-rate multiplier of a fact stated before (times the repetition boost)."
    )
    online_repetition_boost: float = Field(
        0.25, ge=0, description="Extra learning rate per earlier sighting of a repeated fact (capped at 2×)."
    )
    online_lr_replay: float = Field(0.5, ge=0, description="Learning-rate multiplier of a replay step.")
    online_replay_every: int = Field(5, ge=0, description="Replay the fact memory every N turns (0: never).")
    online_replay_facts: int = Field(4, ge=1, description="Facts a replay step takes, most important first.")
    online_kl: float = Field(1.0, ge=0, description="KL-to-base coefficient of an online step.")
    online_kl_fact: float = Field(
        0.2, ge=0,
        description="KL-to-base coefficient of a fact turn, scaled down further by the fact's importance.",
    )
    online_protect_kl: float = Field(
        3.0, ge=0, description="KL-to-base coefficient on the base's own answers to general prompts, every online "
        "step (base protection; 0: off)."
    )
    online_protect_rows: int = Field(4, ge=1, description="Base-protection rows per online step.")
    online_entity_token_weight: float = Field(
        2.0, gt=0, description="Loss weight of the tokens of a fact's entities (others weigh 1)."
    )
    online_edge_token_weight: float = Field(
        1.5, gt=0, description="Loss weight of an answer's first and last tokens."
    )
    online_fact_patterns: str = Field(
        "", description="Fact patterns as JSON (`[{\"relation\", \"pattern\", \"confidence\", \"min_confidence\"}]`); "
        "empty = the built-in ones."
    )
    online_memory_capacity: int = Field(500, ge=1, description="Facts the fact memory keeps per lineage.")
    online_memory_importance: Literal["repetition", "recency", "both"] = Field(
        "both", description="What makes a fact important: `repetition`, `recency` or `both`."
    )
    online_memory_eviction: Literal["fifo", "lru", "importance", "hybrid"] = Field(
        "hybrid", description="Which fact goes when the memory is full: `fifo`, `lru`, `importance` or `hybrid`."
    )
    online_memory_decay_after_turns: int = Field(
        50, ge=1, description="A fact not seen for this many turns starts to decay."
    )
    online_memory_decay: float = Field(
        0.95, gt=0, le=1, description="Importance kept per further turn a decaying fact is not seen."
    )
    online_memory_remove_below: float = Field(
        0.05, ge=0, lt=1, description="A fact whose importance falls below this is removed."
    )
    # Learning from documents (`continuum documents`, `workers/ingest`).
    documents_max_bytes: int = Field(5_000_000, ge=1, description="Largest document file `continuum documents add` takes.")
    documents_chunk_tokens: int = Field(
        128, ge=16, le=4096, description="Tokens per document chunk (the model's tokenizer); a chunk is one training row."
    )
    documents_chunk_overlap: int = Field(
        16, ge=0, description="Tokens a chunk shares with the one before it (facts cut at a boundary stay whole in one)."
    )
    documents_strategy: Literal["lora", "sparse_memory", "ttt"] = Field(
        "lora", description="How a cycle on a documents dataset learns: the recipe's LoRA, sparse memory (only the "
        "MLP units the document is about change) or ttt (last-quarter MLP deltas blended by alpha).",
    )
    documents_background: str | None = Field(
        None, description="A folder of .txt/.md/.jsonl documents added to the built-in general text that sparse "
        "memory calibrates its units on (what counts as general-purpose).",
    )
    documents_views: str = Field(
        "names,questions", description="What the ingest job adds to a document's chunks, comma-separated: `names` "
        "(each name in it as a question answered with its sentences), `questions` (rule-made questions about each "
        "sentence); empty: the chunks only. A small instruct model learns to answer about a text from these.",
    )
    documents_probe_percent: int = Field(
        20, ge=0, le=100, description="Share of chunks kept as probe rows: taught, never replayed, scored for forgetting."
    )
    online_publish_every: int = Field(
        25, ge=0, description="Publish the online adapter as a version (evaluate → promote) after this many "
        "learnt turns since the last one (0: not by count).",
    )
    online_publish_seconds: float = Field(
        3600.0, ge=0, description="Publish the online adapter when its oldest unpublished update is this old "
        "(0: not by time); checked by each online job and by the beat's sweep.",
    )
    queued_max_resends: int = Field(
        5, ge=1, description="Re-sends of a never-claimed queued job before it is failed (no worker serves its queue)."
    )
    pipeline_reconcile_grace_seconds: float = Field(
        60.0, gt=0,
        description="A running pipeline step with no job for this long is enqueued by the sweep (a lost enqueue).",
    )
    # ---- end of distributed-execution block ----

    _renamed_policy = field_validator("thumbs_down_policy", mode="before")(
        classmethod(lambda cls, value: refuse_renamed_policy(value))
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Resolved once, where settings are built (the entry point): every process a command starts gets
        # this absolute path, so a worker started in another folder still uses the same home.
        return Path(os.path.abspath(Path(value).expanduser()))

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"file", "s3"}:
            raise ValueError("storage_url must start with file:// or s3:// (e.g. s3://bucket/prefix)")
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError("storage_url s3://… needs a bucket name: s3://bucket/prefix")
        if parts.scheme == "file" and not (parts.netloc + parts.path):
            raise ValueError("storage_url file://… needs a folder: file:///abs/path or file://./relative")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str) -> str:
        if value:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(value)
            except ArgumentError:
                raise ValueError(
                    "database_url is not a SQLAlchemy URL (e.g. postgresql+psycopg://user:pass@host/db)"
                ) from None
        return value

    # Derived locations: defaults point inside `home` so one folder holds all embedded state.
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'continuum.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.home / 'objects').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    def s3_credentials(self) -> tuple[str, str]:
        """Access key and secret: CONTINUUM_S3_* first, then the standard AWS variables."""
        key = self.s3_access_key_id.get_secret_value() or os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = self.s3_secret_access_key.get_secret_value() or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        return key, secret

    def s3_region_name(self) -> str:
        return self.s3_region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"

    def check(self) -> "Settings":
        """Refuse unsafe settings outside embedded mode; returns self so callers can chain."""
        if self.mode is Mode.embedded:
            return self
        problems: list[str] = []
        if not self.database_url:
            problems.append("set CONTINUUM_DATABASE_URL (e.g. postgresql+psycopg://user:pass@host/db)")
        elif self.database_url.startswith("sqlite"):
            problems.append("CONTINUUM_DATABASE_URL is SQLite: distributed mode needs a Postgres server all workers share")
        elif why := _weak_secret(_url_password(self.database_url)):
            problems.append(f"the database password in CONTINUUM_DATABASE_URL is {why}: set a strong one")
        problems.extend(_broker_problems(self.broker_url))
        if not self.storage_url:
            problems.append("set CONTINUUM_STORAGE_URL=s3://bucket/prefix (workers on other machines cannot see a local folder)")
        elif not self.storage_url.startswith("s3://"):
            problems.append("CONTINUUM_STORAGE_URL is a local folder (file://): distributed mode needs "
                            "s3://bucket/prefix that every worker can reach")
        else:
            key, secret = self.s3_credentials()
            if not key:
                problems.append("set CONTINUUM_S3_ACCESS_KEY_ID (or AWS_ACCESS_KEY_ID)")
            if why := _weak_secret(secret):
                problems.append(f"the S3 secret key (CONTINUUM_S3_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY) is {why}")
        if problems:
            numbered = " ".join(f"({i}) {p};" for i, p in enumerate(problems, 1)).rstrip(";")
            raise ConfigError(f"distributed mode refuses unsafe settings, {len(problems)} problem(s): {numbered}")
        return self

    def check_flower_auth(self) -> str:
        """The Flower `user:password`; outside embedded mode a missing or default password is refused."""
        auth = self.flower_basic_auth.get_secret_value()
        user, _, password = auth.partition(":")
        if self.mode is Mode.distributed and (not user or _weak_secret(password)):
            raise ConfigError(f"the Flower password is {_weak_secret(password) or 'missing'}: set "
                              f"CONTINUUM_FLOWER_BASIC_AUTH=user:strong-password before starting Flower")
        return auth

    def check_serve_token(self) -> str:
        """The serving bearer token; outside embedded mode a missing or weak one is refused."""
        token = self.serve_token.get_secret_value()
        if self.mode is Mode.distributed and (why := _weak_secret(token)):
            raise ConfigError(f"the serving token is {why}: set CONTINUUM_SERVE_TOKEN to a strong secret "
                              f"before starting `continuum serve`")
        return token


def _url_password(url: str) -> str:
    from urllib.parse import unquote

    return unquote(urlsplit(url).password or "")


def _is_default_secret(secret: str) -> bool:
    return secret.strip().lower() in KNOWN_DEFAULT_SECRETS


def _weak_secret(secret: str) -> str:
    """Why `secret` is too weak for distributed mode ("" when it is fine)."""
    if not secret.strip():
        return "missing"
    if _is_default_secret(secret):
        return "a known default"
    if len(secret) < MIN_SECRET_LENGTH:
        return f"shorter than {MIN_SECRET_LENGTH} characters"
    return ""


def _broker_problems(url: str) -> list[str]:
    """Every reason the broker URL is unsafe for distributed mode (any scheme Celery accepts)."""
    if not url:
        return ["set CONTINUUM_BROKER_URL (e.g. redis://:password@host:6379/0)"]
    scheme = urlsplit(url).scheme.lower()
    if scheme.startswith("sqla+") or scheme in {"memory", "filesystem"}:
        return [f"CONTINUUM_BROKER_URL uses the embedded-only {scheme!r} broker: distributed mode needs Redis or "
                f"RabbitMQ that every worker can reach"]
    if scheme == "sqs":
        # SQS authenticates with AWS credentials, not a URL password; an inline secret is still checked.
        secret = _url_password(url)
        why = _weak_secret(secret) if secret else ""
        return [f"the SQS secret in CONTINUUM_BROKER_URL is {why}"] if why else []
    if scheme not in BROKER_SCHEMES:
        return [f"CONTINUUM_BROKER_URL scheme {scheme!r} is not a supported broker: use redis://, rediss://, "
                f"sentinel://, amqp:// or amqps://"]
    # sentinel URLs may list several hosts separated by ';' — every one must carry a strong password.
    weak = sorted({why for part in url.split(";") if (why := _weak_secret(_url_password(part)))})
    if weak:
        label = "Redis" if scheme in {"redis", "rediss", "sentinel"} else "RabbitMQ"
        return [f"the {label} password in CONTINUUM_BROKER_URL is {' / '.join(weak)}: "
                f"use e.g. redis://:strong-password@host:6379/0 or amqp://user:strong-password@host//"]
    return []


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus explicit overrides); the only place they are made."""
    from pydantic import ValidationError as PydanticValidationError

    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        # extra="ignore" is for stray environment variables; a misspelt keyword is a bug to report.
        raise ConfigError(f"unknown setting(s) {unknown}; see `Settings` for the valid names")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except PydanticValidationError as exc:
        problems = [  # a whole-model check (no loc) names its settings in its own message
            (f"CONTINUUM_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
