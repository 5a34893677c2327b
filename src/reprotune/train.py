"""Train one adapter (LoRA / QLoRA) or a full fine-tune with the HF ``Trainer``.

Run under accelerate::

    accelerate launch --config_file configs/accelerate/cpu.yaml -m reprotune.train \\
        --spec '{"recipe": ..., "adapter": ..., "template": ..., "train": {...}}' \\
        --data TOKENS_DIR --base BASE_DIR --out OUT_DIR --work WORK_DIR

``--spec`` is a JSON object or the path of a JSON file.  ``TOKENS_DIR`` is what the tokenize
stage wrote (``reprotune.dataset``: the rows encoded once, assistant-only labels, truncated
and, with packing, packed, as memory-mapped Arrow); training reads it and never tokenizes.
Rows are padded with the pad token, else eos (labels ``-100`` on padding).

Batching: one sample per row, padded to the longest row of the batch (default);
``group_by_length: true`` batches samples of similar length together (transformers'
``LengthGroupedSampler``); ``packing: true`` packs several samples into each row
of at most ``max_length`` tokens (``reprotune.tokenize.pack``) with position ids
that restart per sample and no attention mask: transformers then builds a
per-sample causal (block-diagonal) mask on sdpa/eager, and on flash-attn the
batch is flattened into one row and runs the varlen kernel (padding-free).

Determinism: ``full_determinism=True`` (seeds + ``torch.use_deterministic_algorithms``),
``data_seed`` for the sampler, no timestamps in any artifact, ``target_modules``
sorted in ``adapter_config.json``.  On CPU two runs give byte-identical adapter
files (run with ``PYTHONHASHSEED=0`` as the pipeline does).

Checkpoints go to ``WORK_DIR/checkpoints`` every ``save_steps``; a checkpoint
counts only once its completion marker (``reprotune_complete.json``, written after
every process has finished writing it) exists, so a SIGKILL mid-save is harmless.
A re-run with the same inputs resumes from the last complete checkpoint (model,
optimizer, scheduler, RNG states, data position; a fingerprint of spec, data and
base guards against resuming a different run).

Preemption: on SIGTERM or SIGUSR1 (what SLURM sends before a time limit or a preemption)
every training process records the signal; at the next optimizer-step end the processes agree
(a max all-reduce of the flag when world size > 1, so they never diverge), save a complete
checkpoint (same marker protocol), log ``interrupted by SIG... at step N: checkpoint-N is
complete; rerunning the same command resumes from it`` and exit 75 (EX_TEMPFAIL).  From the
signal to the exit: the rest of the current step plus one checkpoint save (a signal during data
preparation or model loading is acted on at the first step end).  Run under
``python -m reprotune.launch -- accelerate launch ...`` so that accelerate / torchrun ignore the
signal and it reaches every training process (``reprotune.launch``).

TensorBoard event files (they carry wall-clock times, so never in the output) go to
``--tensorboard`` (default ``WORK_DIR/tensorboard``).  The output directory is written
atomically and holds:

* lora/qlora: ``adapter_model.safetensors``, ``adapter_config.json``;
  full: ``model.safetensors``, ``config.json``, ``generation_config.json``;
* the tokenizer (``tokenizer.json``, ``tokenizer_config.json``, chat template of
  the adapter's prompt format);
* ``train_log.jsonl`` (one row per optimizer step: step, loss, learning_rate,
  grad_norm, epoch, tokens), ``loss_curve.png`` (deterministic bytes),
  ``train_summary.json`` (steps, final loss, tokens trained, trainable
  parameters, world size, data and packing counts, resolved settings) and
  ``config_overrides.json`` (base-config changes made for training, e.g. RoPE
  scaling, which ``merge`` must apply to the merged model).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, Trainer, TrainerCallback,
                          TrainingArguments)
from transformers.trainer_utils import enable_full_determinism

from reprotune import templates
from reprotune.io import (atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, canonical_json,
                          jsonl_line)
from reprotune.recipe import resolve_train

log = logging.getLogger("reprotune.train")

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"

HALF_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}  # train.precision -> torch dtype of a frozen LoRA base


class TrainError(ValueError):
    pass


# --------------------------------------------------------------------------- settings
# every setting comes from recipe.resolve_train: the schema's defaults and rules (schemas/recipe.schema.yaml)
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _attention(want: str, cuda: bool) -> str:
    """auto: flash-attn where it can run, else sdpa."""
    import importlib.util

    if want not in ("flash_attention_2", "auto"):
        return want
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    log.info("attn_implementation: %s -> using sdpa (flash_attention_2 needs flash_attn and CUDA)", want)
    return "sdpa"


def _log_machine(s: dict, eff: dict, cuda: bool) -> None:
    """What the machine changes about the processes and the batches (logged, not settings)."""
    if eff["packing"]:
        # flash-attn runs the varlen kernel on one flattened row; sdpa/eager get a
        # per-sample causal mask that transformers derives from the restarting position ids
        how = ("flash-attn varlen (batch flattened into one row, no padding)"
               if eff["attn_implementation"] == "flash_attention_2"
               else f"{eff['attn_implementation']}: batch flattened into one row, no padding; per-sample "
                    "causal (block-diagonal) mask from restarting position ids")
        log.info("packing: on, %s", how)
        if eff["group_by_length"]:
            log.info("group_by_length: also on; packed rows are grouped by length")
    if not cuda and s["num_gpus"] > 0:
        log.info("num_gpus: %s requested, no GPU present -> CPU", s["num_gpus"])
    if cuda:
        import torch

        if s["num_gpus"] != torch.cuda.device_count():
            log.info("num_gpus: recipe says %s, this machine has %s (processes come from the accelerate config)",
                     s["num_gpus"], torch.cuda.device_count())


def runtime_choices(s: dict, cuda: bool) -> dict[str, Any]:
    """Settings that depend on the machine (``s``: resolved settings); every downgrade is logged once."""
    eff: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "precision": s["precision"],
                           "attn_implementation": _attention(s["attn_implementation"], cuda),
                           "optimizer": s["optimizer"], "deepspeed": None,
                           "packing": s["packing"], "group_by_length": s["group_by_length"]}
    if not cuda and s["precision"] != "fp32":
        log.info("precision: %s requested but running on CPU -> fp32 weights and math "
                 "(QLoRA keeps its compute dtype)", s["precision"])
        eff["precision"] = "fp32"
    if s["optimizer"].startswith("paged_") and not cuda:
        log.info("optimizer: %s needs CUDA (paged memory) -> adamw_torch on CPU", s["optimizer"])
        eff["optimizer"] = "adamw_torch"
    if s["deepspeed"] and cuda:
        eff["deepspeed"] = str(CONFIG_ROOT / "deepspeed" / f"{s['deepspeed']}.json")
    elif s["deepspeed"]:
        log.info("deepspeed: %s is ignored on CPU", s["deepspeed"])
    _log_machine(s, eff, cuda)
    warmup = s["warmup_steps"] > 0 or s["warmup_ratio"] > 0
    eff["lr_scheduler"] = "constant_with_warmup" if s["lr_scheduler"] == "constant" and warmup else s["lr_scheduler"]
    eff["warmup"] = int(s["warmup_steps"]) if s["warmup_steps"] > 0 else float(s["warmup_ratio"])
    return eff


# --------------------------------------------------------------------------- helpers
def _torch_dtype(name: str):
    """The torch dtype named ``name`` (train.quantization.compute_dtype: bfloat16, float16, float32)."""
    import torch

    return getattr(torch, name)


def apply_rope_scaling(config, rope_scaling: dict | None) -> dict:
    """Set linear RoPE scaling on ``config`` (transformers 5 ``rope_parameters``, or
    ``rope_scaling`` on older versions).  Returns the override that was applied."""
    if not rope_scaling:
        return {}
    factor = float(rope_scaling["factor"])
    if hasattr(config, "rope_parameters"):
        params = dict(config.rope_parameters or {})
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        config.rope_parameters = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
        return {"rope_parameters": config.rope_parameters}
    config.rope_scaling = {"type": "linear", "factor": factor}
    return {"rope_scaling": config.rope_scaling}


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(spec: dict, data_dir: Path, base_dir: Path) -> str:
    """What a checkpoint belongs to: the spec, the data and the base. A downloaded base is named by
    its ``manifest.json`` (the sha256 of every file, verified by the download), so a 70B base is
    not re-hashed by every process at every start; other directories are hashed file by file."""
    h = hashlib.sha256(canonical_json(spec).encode())
    for root in (data_dir, base_dir):
        manifest = root / "manifest.json"
        files = [manifest] if manifest.is_file() else sorted(root.rglob("*"))
        for p in files:
            if p.is_file() and not p.name.startswith("."):
                h.update(p.relative_to(root).as_posix().encode())
                h.update(_sha256_of(p).encode())
    return h.hexdigest()


COMPLETE_MARKER = "reprotune_complete.json"
PARTIAL_LOG = "train_log.partial.jsonl"  # the step log of a run in progress (work dir)


def _checkpoint_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    return sorted((int(p.name[11:]), p) for p in ckpt_dir.iterdir()
                  if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit())


def checkpoint_is_complete(path: Path) -> bool:
    """Marker written after every process finished saving, plus the files resuming needs."""
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        step = json.loads(marker.read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return False
    files = {f.name for f in path.iterdir()}
    weights = {"adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json"} & files
    # optimizer + scheduler: optimizer.pt / scheduler.pt, or DeepSpeed's global_step<N>/ (ZeRO states)
    optim = {"optimizer.pt", "scheduler.pt"} <= files or any(n.startswith("global_step") for n in files)
    return step == int(path.name[11:]) and bool(weights) and optim and "trainer_state.json" in files


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """Highest ``checkpoint-N`` that is complete (see :func:`checkpoint_is_complete`)."""
    found = [p for _, p in _checkpoint_dirs(ckpt_dir) if checkpoint_is_complete(p)]
    return found[-1] if found else None


def _read_log_rows(path: Path) -> list[dict]:
    """The step log of an interrupted run; a line cut by a kill is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _relative_id(path: Path) -> str:
    """How the base is named in adapter_config.json: relative to the working
    directory when inside it, else just the directory name (never absolute)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().name


class Collator:
    """Right-pad to the longest row of the batch with ``pad_id``; labels -100 on padding."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, mask, labels = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(list(r["input_ids"]) + [self.pad_id] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
            labels.append(list(r["labels"]) + [-100] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


class PackedCollator:
    """Batches of packed rows (``reprotune.tokenize.pack``); no attention mask.

    ``flatten=True`` (what training uses): all rows are concatenated into one row of
    shape ``[1, total]`` -- no padding at all; flash-attn runs its varlen kernel, and
    sdpa/eager get a block-diagonal causal mask from the restarting position ids (the
    masked blocks still cost attention FLOPs there: quadratic in the flattened row).
    ``flatten=False``: rows are right-padded to the longest row; the padding gets its
    own restarting position ids (a block no real token attends to) and labels -100.
    """

    def __init__(self, pad_id: int, flatten: bool = False):
        self.pad_id = int(pad_id)
        self.flatten = bool(flatten)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        if self.flatten:
            ids = [[t for r in rows for t in r["input_ids"]]]
            labels = [[t for r in rows for t in r["labels"]]]
            pos = [[t for r in rows for t in r["position_ids"]]]
        else:
            width = max(len(r["input_ids"]) for r in rows)
            ids, labels, pos = [], [], []
            for r in rows:
                pad = width - len(r["input_ids"])
                ids.append(list(r["input_ids"]) + [self.pad_id] * pad)
                labels.append(list(r["labels"]) + [-100] * pad)
                pos.append(list(r["position_ids"]) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
        }


def _sampling_args(cls, group_by_length: bool) -> dict:
    """``train_sampling_strategy`` (transformers 5) or ``group_by_length`` (4.x)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if "train_sampling_strategy" in params:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": bool(group_by_length)}


def loss_curve_png(rows: list[dict], title: str) -> bytes:
    """Loss (and learning rate) per step as PNG bytes; identical rows give identical bytes
    (Agg canvas, fixed size and dpi, matplotlib defaults, no metadata)."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in rows]
    loss = [r["loss"] if isinstance(r["loss"], float) else float("nan") for r in rows]
    with matplotlib.rc_context(rc=matplotlib.rcParamsDefault):
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(steps, loss, color="tab:blue", marker="o" if len(rows) <= 50 else None, markersize=3,
                linewidth=1.2, label="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss", color="tab:blue")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        lr = [r.get("learning_rate") for r in rows]
        if all(isinstance(x, float) for x in lr) and lr:
            ax2 = ax.twinx()
            ax2.plot(steps, lr, color="tab:orange", linewidth=1.0, linestyle="--", label="learning rate")
            ax2.set_ylabel("learning rate", color="tab:orange")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _checkpointing_args(cls, enabled: bool) -> dict:
    """``activation_checkpointing`` (transformers 5) or ``gradient_checkpointing`` (4.x)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    name = "activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"
    out: dict[str, Any] = {name: bool(enabled)}
    if enabled:
        out[f"{name}_kwargs"] = {"use_reentrant": False}
    return out


def _clean_float(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x


# --------------------------------------------------------------------------- steps
class TrainData(NamedTuple):
    """What :func:`load_rows` hands the Trainer."""

    rows: Any                   # a sequence of rows: input_ids, labels (+ attention_mask or position_ids)
    stats: dict                 # encode counts (records, kept, dropped_no_trainable, trainable_tokens, ...)
    packing: dict | None        # pack counts, None without packing
    probe: Any = ()             # the first encoded (unpacked) rows: their loss before/after training


def load_tokenizer(base_dir: Path, use_fast: bool = True):
    """The base model's tokenizer as the recipe asks (fast, or the slow SentencePiece one;
    ``reprotune.base_tokenizer``); it needs an eos token (padding, end of turn)."""
    from reprotune.base_tokenizer import load

    tokenizer = load(base_dir, use_fast=use_fast)
    if tokenizer.eos_token is None:
        raise TrainError(f"base tokenizer has no eos token: {base_dir}")
    return tokenizer


def load_rows(tokens_dir: Path, spec: dict) -> TrainData:
    """The adapter's rows as the tokenize stage wrote them (``reprotune.dataset``): memory-mapped
    Arrow, encoded once for every process (no tokenization here); they must have been built
    with this run's template, max_length, packing and tokenizer."""
    from reprotune import dataset

    tokens = dataset.load(tokens_dir)
    want = {k: v for k, v in dataset.spec_for(spec).items() if k not in ("recipe", "adapter")}
    have = {k: tokens.spec.get(k) for k in want}
    if have != want:
        diff = ", ".join(f"{k}: {have[k]!r} there, {want[k]!r} here" for k in sorted(want) if have[k] != want[k])
        raise TrainError(f"{tokens_dir} was tokenized with other settings ({diff}); rerun the tokenize stage")
    log.info("data: %d rows memory-mapped from %s (%s)", len(tokens.rows), tokens_dir,
             json.dumps(tokens.stats, sort_keys=True))
    return TrainData(tokens.rows, tokens.stats, tokens.packing, tokens.probe)


def probe_loss(trainer: "CountingTrainer", rows) -> float:
    """Mean loss on the assistant (labelled) tokens of ``rows``, one row per forward pass (no
    padding), averaged over rows: the Trainer's own evaluation loop, so DDP and DeepSpeed
    place and gather it as they do training."""
    collator, trainer.data_collator = trainer.data_collator, Collator(0)
    batch, trainer.args.per_device_eval_batch_size = trainer.args.per_device_eval_batch_size, 1
    try:
        metrics = trainer.evaluate(eval_dataset=list(rows), metric_key_prefix="probe")
    finally:
        trainer.data_collator, trainer.args.per_device_eval_batch_size = collator, batch
    return round(float(metrics["probe_loss"]), 6)


def make_collator(tokenizer, packing: bool):
    """Pad with the pad token (eos when there is none).  Packed batches are padding-free on every
    backend: one flattened row per batch (flash-attn: varlen kernel; sdpa/eager: block-diagonal
    causal mask derived from the position ids)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PackedCollator(pad_id, flatten=True) if packing else Collator(pad_id)


def training_arguments(s: dict, eff: dict, cuda: bool, ckpt_dir: Path) -> TrainingArguments:
    """The Trainer's arguments (under accelerate launch this also sets up the process group)."""
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=int(s["per_device_batch_size"]),
        gradient_accumulation_steps=int(s["gradient_accumulation_steps"]),
        num_train_epochs=float(s["epochs"]),
        max_steps=int(s["max_steps"]),
        learning_rate=float(s["learning_rate"]),
        lr_scheduler_type=eff["lr_scheduler"],
        warmup_steps=eff["warmup"],
        weight_decay=float(s["weight_decay"]),
        max_grad_norm=float(s["max_grad_norm"]),
        optim=eff["optimizer"],
        adam_beta1=float(s["adam_beta1"]),
        adam_beta2=float(s["adam_beta2"]),
        adam_epsilon=float(s["adam_epsilon"]),
        bf16=cuda and eff["precision"] == "bf16",
        fp16=cuda and eff["precision"] == "fp16",
        use_cpu=not cuda,
        seed=int(s["seed"]),
        data_seed=int(s["data_seed"]),
        full_determinism=True,
        **_checkpointing_args(TrainingArguments, bool(s["gradient_checkpointing"]) and s["method"] != "qlora"),
        **_sampling_args(TrainingArguments, eff["group_by_length"]),
        deepspeed=eff["deepspeed"],
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=int(s["save_steps"]),
        save_total_limit=2,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA and full FT use every trainable parameter
        disable_tqdm=False,
    )


@dataclass(frozen=True)
class Resume:
    """Where training starts: a complete checkpoint of this run (or none) and the step log up to it."""

    fingerprint: str
    checkpoint: Path | None = None
    state: dict = field(default_factory=dict)       # the checkpoint's trainer_state.json
    log_rows: tuple = ()

    @property
    def step(self) -> int:
        return int(self.state.get("global_step") or 0)

    @property
    def finished(self) -> bool:
        """The checkpoint is the final step (Trainer would run one step too many on resume)."""
        return bool(self.state.get("max_steps")) and self.step >= int(self.state["max_steps"])


def prepare_resume(spec: dict, data_dir: Path, base_dir: Path, work_dir: Path, rank: int) -> Resume:
    """Every process decides from the same state, then process 0 tidies: checkpoints of another run
    (fingerprint of spec, data and base) and incomplete ones are removed, the step log is cut back
    to the checkpoint resumed from."""
    ckpt_dir, partial_log = work_dir / "checkpoints", work_dir / PARTIAL_LOG
    fp = fingerprint(spec, data_dir, base_dir)
    fp_file = work_dir / "fingerprint.txt"
    stale = ckpt_dir.exists() and (not fp_file.is_file() or fp_file.read_text().strip() != fp)
    found = None if stale else last_complete_checkpoint(ckpt_dir)
    resume = Resume(fp)
    if found is not None:
        state = json.loads((found / "trainer_state.json").read_text())
        rows = _read_log_rows(partial_log) if partial_log.is_file() else []
        resume = Resume(fp, found, state, tuple(r for r in rows if r["step"] <= int(state["global_step"])))
    _barrier()
    if stale:
        log.info("work dir holds checkpoints of a different run; not resuming from them")
    if rank == 0:
        if stale:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        for step, p in _checkpoint_dirs(ckpt_dir):
            if found is None or step > resume.step:
                log.info("removing incomplete %s", p.name)  # never finished saving: not trusted
                shutil.rmtree(p, ignore_errors=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(fp_file, fp + "\n")
        if found is not None:  # the step log must match the checkpoint resumed from
            if not resume.log_rows:
                log.warning("no step log found for %s; train_log.jsonl will start after it", found.name)
            atomic_write_text(partial_log, "".join(jsonl_line(r) for r in resume.log_rows))
    _barrier()
    if found is not None:
        log.info("resuming from %s", found.name)
    return resume


def _load_kwargs(s: dict, eff: dict, cuda: bool) -> dict[str, Any]:
    """dtype, quantization and device placement of the base model for the training method."""
    import torch

    if s["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        q = s["quantization"]
        kw: dict[str, Any] = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["quant_type"],
            bnb_4bit_use_double_quant=bool(q["double_quant"]),
            bnb_4bit_compute_dtype=_torch_dtype(q["compute_dtype"]),
        )}
        kw["dtype"] = torch.float32 if not cuda else _torch_dtype(q["compute_dtype"])
        if eff["deepspeed"] is None:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            kw["device_map"] = {"": local_rank if cuda else "cpu"}
        return kw
    if s["method"] == "lora" and cuda and eff["precision"] in ("bf16", "fp16"):
        return {"dtype": _torch_dtype(HALF_PRECISION[eff["precision"]])}  # frozen base in half precision
    return {"dtype": torch.float32}  # full FT keeps fp32 master weights (autocast on GPU)


def lora_config(lc: dict):
    """peft's ``LoraConfig`` for the resolved ``train.lora`` block."""
    from peft import LoraConfig

    targets = lc["target_modules"]
    if isinstance(targets, (list, tuple)):
        targets = sorted(set(targets))
    return LoraConfig(r=int(lc["r"]), lora_alpha=int(lc["alpha"]), lora_dropout=float(lc["dropout"]),
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def _add_lora(model, s: dict):
    """Wrap ``model`` in a peft LoRA model (QLoRA: prepared for k-bit training first)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc = bool(s["gradient_checkpointing"])
    if s["method"] == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gc:
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(s["lora"]))


def build_model(base_dir: Path, s: dict, eff: dict, cuda: bool) -> tuple[Any, dict, dict]:
    """The model to train: ``(model, config overrides, {"trainable": n, "total": n} parameters)``."""
    enable_full_determinism(int(s["seed"]))
    config = AutoConfig.from_pretrained(base_dir)
    overrides = apply_rope_scaling(config, s["rope_scaling"])
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, config=config, attn_implementation=eff["attn_implementation"], **_load_kwargs(s, eff, cuda))
    model.config.use_cache = False
    if s["method"] in ("lora", "qlora"):
        model = _add_lora(model, s)
    params = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "total": sum(p.numel() for p in model.parameters())}
    log.info("method %s: %d trainable of %d parameters", s["method"], params["trainable"], params["total"])
    return model, overrides, params


class StepLog:
    """One row per optimizer step: kept in memory (``rows``), appended to the partial log in the
    work dir and written to TensorBoard by process 0 (``tb_dir``; None on the other processes)."""

    def __init__(self, resume: Resume, partial_log: Path, tb_dir: Path | None):
        self.rows: list[dict] = list(resume.log_rows)
        self.partial_log = partial_log
        self.tb = None
        if tb_dir is not None:
            from tensorboardX import SummaryWriter

            # purge_step hides the events an interrupted run wrote after the checkpoint resumed from
            self.tb = SummaryWriter(logdir=str(tb_dir),
                                    purge_step=resume.step + 1 if resume.checkpoint is not None else None)
            log.info("tensorboard event files: %s", tb_dir)

    def add(self, state, logs: dict, tokens: int) -> None:
        row = {"step": int(state.global_step), "loss": _clean_float(float(logs["loss"])),
               "learning_rate": _clean_float(float(logs.get("learning_rate", 0.0))),
               "grad_norm": _clean_float(float(logs["grad_norm"])) if logs.get("grad_norm") is not None else None,
               "epoch": _clean_float(float(state.epoch or 0.0)),
               "tokens": tokens}
        self.rows.append(row)
        if not state.is_world_process_zero:
            return
        with open(self.partial_log, "a" if len(self.rows) > 1 else "w", encoding="utf-8") as f:
            f.write(jsonl_line(row))
        if self.tb is not None:
            for key in ("loss", "learning_rate", "grad_norm"):
                if isinstance(row[key], float):
                    self.tb.add_scalar(f"train/{key}", row[key], row["step"])
            self.tb.add_scalar("train/tokens", row["tokens"], row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class CountingTrainer(Trainer):
    """``Trainer`` that counts the tokens trained on (labels != -100 after the shift), summed over
    processes, and hands each logged step to ``step_log``."""

    def __init__(self, *args, step_log: StepLog, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_log = step_log
        self.tokens_since_log = 0

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:  # the probe's evaluation passes are not training tokens
            self.tokens_since_log += int((inputs["labels"][:, 1:] != -100).sum())
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # every process logs at the same steps: sum the trained tokens
            tokens = self.tokens_since_log
            if self.args.world_size > 1:
                import torch

                t = torch.tensor(tokens, device=self.accelerator.device)
                tokens = int(self.accelerator.reduce(t, reduction="sum").item())
            self.tokens_since_log = 0
            self.step_log.add(self.state, logs, tokens)
        super().log(logs, *args, **kwargs)


class MarkComplete(TrainerCallback):
    """A checkpoint counts only after every process finished writing it: then process 0 writes
    its ``reprotune_complete.json``."""

    def __init__(self, ckpt_dir: Path, fingerprint: str):
        self.ckpt_dir = ckpt_dir
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            marker = self.ckpt_dir / f"checkpoint-{state.global_step}" / COMPLETE_MARKER
            atomic_write_json(marker, {"step": int(state.global_step), "fingerprint": self.fingerprint})
        _barrier()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what SLURM sends before a time limit / preemption
EX_TEMPFAIL = 75  # exit status of an interrupted run: rerun it to resume


class StopRequest:
    """Signal handler that only records the signal; training acts on it at the next step end."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame) -> None:
        self.signum = int(signum)

    @contextlib.contextmanager
    def installed(self):
        """The handler of SIGTERM and SIGUSR1 while the block runs (the previous ones after it)."""
        previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Interrupted(Exception):
    """Training stopped on a signal after writing a complete checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}: checkpoint-{step} is "
                         "complete; rerunning the same command resumes from it")
        self.signum, self.step = signum, step


class StopAtStepEnd(TrainerCallback):
    """At every optimizer-step end the processes agree (max all-reduce) whether any got a stop signal;
    if so they save a checkpoint now (the completion marker follows as for any checkpoint) and stop."""

    def __init__(self, request: StopRequest):
        self.request = request
        self.signum = 0
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = self.request.signum
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor(signum, device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            self.signum, self.step = signum, int(state.global_step)
            control.should_save = True
            control.should_training_stop = True


def fit(trainer: CountingTrainer, resume: Resume) -> None:
    """Train, from ``resume``'s checkpoint when there is one."""
    if not resume.finished:
        ckpt = str(resume.checkpoint) if resume.checkpoint is not None else None
        trainer.train(resume_from_checkpoint=ckpt)
        return
    # the crash came after the last step: Trainer would run one extra step on resume
    log.info("%s is the final step; loading it instead of training", resume.checkpoint.name)
    trainer._load_from_checkpoint(str(resume.checkpoint))
    trainer.state.global_step = resume.step
    trainer.state.epoch = float(resume.state.get("epoch") or 0.0)


RUNINFO = "train_runinfo.json"  # wall time, throughput, peak GPU memory: run-dependent, kept out of the output


def write_runinfo(path: Path, seconds: float, rows: list[dict], resumed_at: int, rank: int) -> dict:
    """Throughput of this process's training run (steps after ``resumed_at``) and its peak GPU
    memory, into the work dir (never into the deterministic output)."""
    import torch

    tokens = sum(r["tokens"] for r in rows if r["step"] > resumed_at)
    info = {"seconds": round(seconds, 3), "steps": sum(1 for r in rows if r["step"] > resumed_at),
            "tokens": int(tokens), "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
            "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None}
    log.info("throughput: %s tokens in %.1f s (%s tokens/s, all processes); peak GPU memory %s", info["tokens"],
             seconds, info["tokens_per_second"], info["peak_gpu_memory_bytes"])
    if rank == 0:
        atomic_write_json(path, info)
    return info


def final_loss(rows: list[dict]) -> float:
    loss = next((r["loss"] for r in reversed(rows)), None)
    if loss is None or not isinstance(loss, float) or not math.isfinite(loss):
        raise TrainError(f"training produced a non-finite or missing loss: {loss!r}")
    return loss


def train_summary(spec: dict, s: dict, eff: dict, template, trainer: CountingTrainer, data: TrainData,
                  params: dict, overrides: dict, probe: dict, tokenizer) -> dict:
    """``train_summary.json``: what the run did and the settings it ran with."""
    from reprotune.base_tokenizer import describe

    rows = trainer.step_log.rows
    return {
        "recipe": spec.get("recipe"),
        "adapter": spec.get("adapter"),
        "base_model": {"id": spec.get("base_model"), "twin": bool(spec.get("twin"))},
        "tokenizer": describe(tokenizer),
        "template": template.name,
        "method": s["method"],
        "steps": int(trainer.state.global_step),
        "epochs": _clean_float(float(trainer.state.epoch or 0.0)),
        "final_loss": final_loss(rows),
        "mean_loss": _clean_float(sum(r["loss"] for r in rows) / len(rows)),
        "tokens_trained": int(sum(r["tokens"] for r in rows)),
        "trainable_params": int(params["trainable"]),
        "total_params": int(params["total"]),
        "world_size": int(trainer.args.world_size),
        "data": data.stats,
        "packing": data.packing,
        "loss_probe": probe,
        "config_overrides": overrides,
        "settings": {"train": s, "effective": {k: v for k, v in eff.items() if k != "deepspeed"} |
                     {"deepspeed": s["deepspeed"] if eff["deepspeed"] else None}},
    }


def write_outputs(out_dir: Path, model, base_dir: Path, template, base_id: str, summary: dict,
                  rows: list[dict]) -> None:
    """The adapter (or full weights), the base's tokenizer files with the chat template, step log,
    loss curve and summary, written atomically into ``out_dir``."""
    from reprotune.base_tokenizer import copy_tokenizer_files

    title = f"{summary['recipe'] or 'run'} / {summary['adapter'] or template.name} ({summary['method']})"
    with atomic_dir(out_dir) as tmp:
        if summary["method"] in ("lora", "qlora"):
            model.save_pretrained(tmp, safe_serialization=True)
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            if isinstance(cfg.get("target_modules"), list):
                cfg["target_modules"] = sorted(cfg["target_modules"])
            cfg["base_model_name_or_path"] = base_id
            atomic_write_json(cfg_path, cfg)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's stub card; the card stage writes ours
        else:
            model.config.use_cache = True
            model.save_pretrained(tmp)
        copy_tokenizer_files(base_dir, tmp, template.chat_template)
        atomic_write_text(tmp / "train_log.jsonl", "".join(jsonl_line(r) for r in rows))
        atomic_write_bytes(tmp / "loss_curve.png", loss_curve_png(rows, title))
        atomic_write_json(tmp / "train_summary.json", summary)
        atomic_write_json(tmp / "config_overrides.json", summary["config_overrides"])
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o644)


# --------------------------------------------------------------------------- main
def run(spec: dict, data_dir: Path, base_dir: Path, out_dir: Path, work_dir: Path,
        tensorboard_dir: Path | None = None, extra_callbacks: Sequence[TrainerCallback] = (),
        stop: StopRequest | None = None) -> dict:
    """Train one adapter; returns the summary (``{}`` on processes other than 0).

    ``stop``: the installed signal handler (:func:`main` installs one); when it has seen SIGTERM or
    SIGUSR1, training checkpoints at the next step end and raises :class:`Interrupted`.
    ``extra_callbacks`` go first: their ``on_save`` runs after a checkpoint's files are written
    and before it is marked complete (tests stop runs there).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.set_verbosity_warning()
    data_dir, base_dir, out_dir, work_dir = map(Path, (data_dir, base_dir, out_dir, work_dir))
    if os.environ.get("PYTHONHASHSEED") != "0":
        log.info("PYTHONHASHSEED is not 0; outputs stay deterministic (target_modules are sorted) "
                 "but the pipeline runs with PYTHONHASHSEED=0")
    s = resolve_train(spec.get("train"), "--spec")
    template = templates.get(spec.get("template") or "raw")
    cuda = _cuda()
    eff = runtime_choices(s, cuda)

    tokenizer = load_tokenizer(base_dir, bool((spec.get("tokenizer") or {}).get("use_fast", True)))
    data = load_rows(data_dir, spec)
    args = training_arguments(s, eff, cuda, work_dir / "checkpoints")
    rank = int(args.process_index)
    log.info("world size %d (this is process %d)", int(args.world_size), rank)
    resume = prepare_resume(spec, data_dir, base_dir, work_dir, rank)
    model, overrides, params = build_model(base_dir, s, eff, cuda)
    tb_dir = Path(tensorboard_dir) if tensorboard_dir else work_dir / "tensorboard"
    step_log = StepLog(resume, work_dir / PARTIAL_LOG, tb_dir if rank == 0 else None)
    stopper = StopAtStepEnd(stop or StopRequest())
    callbacks = [*extra_callbacks, stopper, MarkComplete(work_dir / "checkpoints", resume.fingerprint)]
    trainer = CountingTrainer(model=model, args=args, train_dataset=data.rows, callbacks=callbacks,
                              data_collator=make_collator(tokenizer, eff["packing"]), step_log=step_log)
    probe = {"rows": len(data.probe), "before": probe_loss(trainer, data.probe)}
    started = time.monotonic()
    fit(trainer, resume)
    write_runinfo(work_dir / RUNINFO, time.monotonic() - started, step_log.rows, resume.step, rank)
    step_log.close()
    if stopper.step is not None:
        raise Interrupted(stopper.signum, stopper.step)
    final_loss(step_log.rows)
    probe["after"] = probe_loss(trainer, data.probe)
    log.info("loss on the assistant tokens of %d training rows: %.4f before training, %.4f after",
             probe["rows"], probe["before"], probe["after"])
    if not trainer.is_world_process_zero():
        return {}

    summary = train_summary(spec, s, eff, template, trainer, data, params, overrides, probe, tokenizer)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    write_outputs(out_dir, unwrapped, base_dir, template,
                  spec.get("base_model") or _relative_id(base_dir), summary, step_log.rows)
    # checkpoints only serve crash recovery; the finished output replaces them
    shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    (work_dir / PARTIAL_LOG).unlink(missing_ok=True)
    log.info("wrote %s (%d steps, final loss %.4f, world size %d)", out_dir, summary["steps"],
             summary["final_loss"], summary["world_size"])
    return summary


def _load_spec(value: str) -> dict:
    text = value.strip()
    if not text.startswith("{"):
        text = Path(value).read_text(encoding="utf-8")
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise TrainError("--spec must be a JSON object")
    return spec


def main(argv: list[str] | None = None, extra_callbacks: Sequence[TrainerCallback] = (),
         stop: StopRequest | None = None) -> int:
    """The command line; ``stop`` (default: a new one) handles SIGTERM/SIGUSR1 while it runs."""
    with (stop or StopRequest()).installed() as installed:
        return _main(argv, extra_callbacks, installed)


def _main(argv: list[str] | None, extra_callbacks: Sequence[TrainerCallback], stop: StopRequest) -> int:
    parser = argparse.ArgumentParser(prog="reprotune.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="JSON object or path of a JSON file")
    parser.add_argument("--data", required=True, type=Path, help="directory with train.jsonl")
    parser.add_argument("--base", required=True, type=Path, help="base model + tokenizer directory")
    parser.add_argument("--out", required=True, type=Path, help="output directory (written atomically)")
    parser.add_argument("--work", required=True, type=Path, help="checkpoint / scratch directory")
    parser.add_argument("--tensorboard", type=Path, default=None,
                        help="TensorBoard event directory (default WORK/tensorboard; never inside --out)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    from .runtime import log_runtime

    log_runtime(f"train (rank {os.environ.get('RANK', '0')})")
    try:
        run(_load_spec(ns.spec), ns.data, ns.base, ns.out, ns.work, ns.tensorboard, extra_callbacks, stop)
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":
            log.warning("%s", e)
        return EX_TEMPFAIL
    except Exception as e:  # user-facing errors of any reprotune stage: one line, exit 2
        if type(e).__module__.startswith("reprotune") and type(e).__name__.endswith("Error"):
            log.error("%s", e)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
