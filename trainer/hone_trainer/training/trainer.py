"""``python -m hone_trainer train``: DeepSpeed training, checkpoint/resume, publishing.

setup (distributed, data, model, engine) -> resume -> train (steps, reports,
checkpoints, validation loss) -> publish (adapter + manifest) -> result.

Runs under ``torchrun`` on 1..N processes and 1..N nodes, or as a single
process with no launcher at all (``hone run`` on a laptop).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hone_trainer import contract, models
from hone_trainer.training import distributed, ds_config, packing
from hone_trainer.training.formatting import IGNORE_INDEX, ChatFormatter, Encoded
from hone_trainer.training.checkpoints import CheckpointStore, RemoteMirror, safe_checkpoint_engine, tag
from hone_trainer.contract import CheckpointInfo, Progress, TrainerConfig, TrainingResult
from hone_trainer.contract import memory
from hone_trainer.training.data import ReadResult
from hone_trainer.manifest import MANIFEST, write_manifest
from hone_trainer.training.publish import manifest_info, publish, sha256_of, staging_dir
from hone_trainer.training.report import Reporter, ReportingForbidden, check_access
from hone_trainer.training import screening
from hone_trainer.training.validate import read_file

log = logging.getLogger("hone.trainer")


class DataError(RuntimeError):
    """The data is not trainable."""


class UnresolvedConfig(ValueError):
    """The config still says ``auto``: only ValidatingFiles resolves hyperparameters, from the data it counted."""


class Preempted(RuntimeError):
    """SIGTERM: a checkpoint was saved; the pod should go away and come back."""


#: Label positions whose fp32 log-softmax exists at once in the loss (times the vocabulary size); the memory
#: estimate counts the same chunk.
LOSS_CHUNK = memory.LOSS_CHUNK


def _chunk_loss(logits: Any, target: Any) -> Any:
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")


class Trainer:
    def __init__(self, config: TrainerConfig):
        self.config = config
        self.stop_requested = False
        self._data_hashes: tuple[str | None, str | None] | None = None

    # ---- setup -------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the first step, in the order it must happen (torchtune's recipe shape)."""
        self._setup_distributed()
        self._check_reporting()
        self._setup_data()
        self._setup_deepspeed_config()
        self._setup_model()
        self._setup_checkpoints_and_reporting()

    def _setup_distributed(self) -> None:
        """torch, DeepSpeed and the process group (gloo on CPU, NCCL on GPUs); the seed."""
        d = distributed.init(self.config.seed)
        self.distributed = d
        self.torch, self.dist, self.deepspeed = d.torch, d.dist, d.deepspeed
        self.rank, self.world, self.local_rank = d.rank, d.world, d.local_rank
        self.gpu, self.device, self.dtype = d.gpu, d.device, d.dtype
        self.peak_memory = 0
        if self.config.method == "qlora" and not self.gpu:
            raise ds_config.DeepSpeedConfigError("method qlora needs GPUs (4-bit kernels); use method lora on CPU")

    def _check_reporting(self) -> None:
        """Rank 0 proves it may report progress before anything is loaded; every rank learns the answer,
        so that all of them stop together."""
        error: ReportingForbidden | None = None
        if self.rank == 0:
            try:
                check_access(self.config.progress)
            except ReportingForbidden as exc:
                error = exc
        if self.world > 1:
            flag = self.torch.tensor([1 if error else 0], device=self.device)
            self.dist.all_reduce(flag, op=self.dist.ReduceOp.MAX)
            if flag.item() and error is None:
                error = ReportingForbidden("rank 0 may not report progress (its log says why)")
        if error is not None:
            raise error

    def _setup_data(self) -> None:
        """The tokenizer, both files encoded with the chat template, and the resolved hyperparameters."""
        cfg = self.config
        if unresolved := cfg.unresolved():
            raise UnresolvedConfig(
                f"{', '.join(unresolved)} still auto: the trainer runs the values ValidatingFiles resolved from the "
                "data (the operator, hone run and hone api write them into the config); validate first")
        self.local_model = models.resolve(cfg.base_model)
        self.tokenizer = models.load_tokenizer(self.local_model, trust_remote_code=cfg.base_model.trust_remote_code)
        formatter = ChatFormatter(self.tokenizer, cfg.max_seq_length)
        self.train_data = self._encode(formatter, self._read(cfg.training_data, "training"), "training")
        self.val_data = (self._encode(formatter, self._read(cfg.validation_data, "validation"), "validation")
                         if cfg.validation_data else [])
        if cfg.validated is not None:
            self._check_validated(cfg.validated)
        assert cfg.epochs != "auto" and cfg.batch_size != "auto" and cfg.learning_rate_multiplier != "auto"
        self.hp = contract.ResolvedHyperparameters(epochs=cfg.epochs, batch_size=cfg.batch_size,
                                                   learning_rate_multiplier=cfg.learning_rate_multiplier)
        self.pack_length = packing.row_length(cfg.max_seq_length, cfg.pack_length)
        self.steps_per_epoch = packing.steps_per_epoch(len(self.train_data), self.hp.batch_size)
        self.total_steps = self.steps_per_epoch * self.hp.epochs

    def _read(self, location: contract.DataFile, kind: Any) -> Any:
        """A file as ValidatingFiles screened it: what it redacted is redacted here too."""
        read = read_file(location, kind)
        screening.screen(read, self.config.screening)
        return read

    def _setup_deepspeed_config(self) -> None:
        """The generated DeepSpeed config; under ZeRO-3 registered before the model is built."""
        cfg = self.config
        lr = ds_config.BASE_LEARNING_RATE[cfg.method] * self.hp.learning_rate_multiplier
        self.ds = ds_config.build(cfg, world=self.world, gpu=self.gpu, learning_rate=lr, total_steps=self.total_steps)
        self.zero3 = self.ds["zero_optimization"]["stage"] == 3
        if self.zero3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(self.ds)  # must stay alive: from_pretrained partitions under it

    def _setup_model(self) -> None:
        """The base model (4-bit for QLoRA), the LoRA adapter on it, and the DeepSpeed engine."""
        cfg = self.config
        extra: dict[str, Any] = self._qlora_load_options() if cfg.method == "qlora" else {}
        if self.gpu and not self.zero3 and not extra:
            # Straight onto this rank's GPU: without a device map every rank first built the whole model in
            # host memory (8 ranks x a 16 GB model over a pod's memory limit). ZeRO-3 partitions at load.
            extra["device_map"] = {"": self.device.index or 0}
        model = models.load_model(self.local_model, self.dtype, trust_remote_code=cfg.base_model.trust_remote_code,
                                  attn_implementation="sdpa", **extra)  # keeps packed rows apart (packing)
        try:
            packing.check_packed_attention(getattr(model.config, "_attn_implementation", None))
        except ValueError as exc:
            raise models.ModelError(str(exc)) from exc
        if cfg.method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model

            targets = cfg.lora.target_modules if cfg.lora.target_modules != "auto" else "all-linear"
            model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                     lora_dropout=cfg.lora.dropout, target_modules=targets,
                                                     task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, _ = self.deepspeed.initialize(model=model, model_parameters=params, config=self.ds)
        safe_checkpoint_engine(self.engine)  # resuming never unpickles code

    def _setup_checkpoints_and_reporting(self) -> None:
        """Where checkpoints go (a remote output: the pod's disk, mirrored), progress reports, SIGTERM."""
        cfg = self.config
        ckpt = cfg.checkpoint_dir.removeprefix("file://")
        self.mirror: RemoteMirror | None = None
        if "://" in ckpt:
            # DeepSpeed writes local files: save to the pod's disk, mirror complete checkpoints remotely.
            self.mirror = RemoteMirror(cfg.checkpoint_dir, cfg.output_credentials_dir)
            ckpt = str(Path(os.environ.get("TMPDIR", "/tmp")) / "hone-checkpoints" / cfg.job.uid)
        self.store = CheckpointStore(ckpt, cfg.keep_checkpoints)
        labels = {"namespace": cfg.job.namespace, "finetunejob": cfg.job.name,
                  "base_model": cfg.base_model.location}
        self.reporter = Reporter(cfg.progress, cfg.metrics_port, labels) if self.rank == 0 else None
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _qlora_load_options(self) -> dict[str, Any]:
        """A 4-bit NF4 base (bitsandbytes) on this rank's GPU; the adapter trains in bf16."""
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ds_config.DeepSpeedConfigError(
                "method qlora needs the bitsandbytes package in the runtime image (pip install bitsandbytes)")
        if self.zero3:
            raise ds_config.DeepSpeedConfigError(
                "method qlora works with ZeRO stages 0-2 (a 4-bit base cannot be partitioned); "
                "set spec.deepspeed.zeroStage to auto or 2")
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=self.torch.bfloat16)
        return {"quantization_config": quant, "device_map": {"": self.device.index or 0}}

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _check_validated(self, validated: contract.ValidatedData) -> None:
        """The training file as ValidatingFiles counted it: a file replaced since (same URI, other content)
        would train and bill something else than the estimate said."""
        examples, tokens = len(self.train_data), sum(len(e.input_ids) for e in self.train_data)
        if (examples, tokens) != (validated.examples, validated.tokens_per_epoch):
            raise DataError(
                f"the training file changed since it was validated: it now has {examples} trainable example(s) "
                f"and {tokens} tokens per epoch, ValidatingFiles counted {validated.examples} and "
                f"{validated.tokens_per_epoch}; keep the file unchanged while its job runs (a new file needs a "
                "new FineTuneJob)")

    def _encode(self, formatter: ChatFormatter, read: ReadResult, which: str) -> list[Encoded]:
        if read.problem_counts:
            first = read.problems[0]
            where = f"{which} file line {first.line}" if first.line else f"{which} file"
            raise DataError(f"{where}: {first.message} ({sum(read.problem_counts.values())} problem(s); "
                            "run `hone validate` for the full list)")
        encoded = formatter.encode(read.examples)
        if self.config.over_length == "drop":
            encoded = [e for e in encoded if not e.truncated]
        encoded = [e for e in encoded if e.trained_tokens > 0]
        if which == "training" and not encoded:
            raise DataError("no trainable example remains (all over maxSeqLength or without assistant tokens)")
        return encoded

    # ---- batches -------------------------------------------------------------

    def _batch(self, rows: list[packing.Row]) -> tuple[Any, Any, Any]:
        torch = self.torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if not rows:  # this rank got no row this step: a one-token row that carries no loss
            rows = [packing.Row([pad], [IGNORE_INDEX], [0], [])]
        longest = max(len(r) for r in rows)
        ids = [r.input_ids + [pad] * (longest - len(r)) for r in rows]
        labels = [r.labels + [IGNORE_INDEX] * (longest - len(r)) for r in rows]
        pos = [r.position_ids + [0] * (longest - len(r)) for r in rows]
        to = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        return to(ids), to(labels), to(pos)

    def _loss_sum(self, ids: Any, labels: Any, pos: Any) -> Any:
        """The summed cross-entropy of the labelled tokens, in fp32 a chunk of positions at a time.

        Only labelled positions are kept ([tokens, vocabulary] in the model's precision, not [rows, length,
        vocabulary] in fp32), and each chunk's fp32 log-softmax is recomputed in the backward pass instead of
        kept: with a large vocabulary (128k) the logits were most of a step's memory.
        """
        torch = self.torch
        out = self.engine(input_ids=ids, position_ids=pos, use_cache=False)
        logits = out.logits[:, :-1, :]
        target = labels[:, 1:].reshape(-1)
        keep = target != IGNORE_INDEX
        picked, target = logits.reshape(-1, logits.size(-1))[keep], target[keep]
        total = logits.sum() * 0.0  # zero, on the graph: a micro-batch without labels still runs backward
        for start in range(0, picked.size(0), LOSS_CHUNK):
            total = total + torch.utils.checkpoint.checkpoint(
                _chunk_loss, picked[start:start + LOSS_CHUNK], target[start:start + LOSS_CHUNK], use_reentrant=False)
        return total

    def _all_sum(self, *values: float, op: str = "sum") -> list[float]:
        """``values`` summed over the ranks; with ``op="max"`` the last one is the maximum instead."""
        t = self.torch.tensor(values, dtype=self.torch.float64, device=self.device)
        if op == "max":
            last = t[-1:].clone()
            self.dist.all_reduce(last, op=self.dist.ReduceOp.MAX)
            head = t[:-1]
            self.dist.all_reduce(head)
            return [*head.tolist(), *last.tolist()]
        self.dist.all_reduce(t)
        return t.tolist()

    def validation_metrics(self) -> tuple[float | None, float | None]:
        """Loss and mean token accuracy on the validation file (OpenAI's ``full_valid_loss`` and
        ``full_valid_mean_token_accuracy``): over every assistant token, the mean cross-entropy and the share
        the model predicts exactly (its most likely token). None, None without a validation file."""
        if not self.val_data:
            return None, None
        torch = self.torch
        rows = packing.pack(range(len(self.val_data)), self.val_data, self.pack_length)
        mine = packing.rank_rows(rows, self.rank, self.world)
        self.engine.eval()
        total = correct = tokens = 0.0
        with torch.no_grad():
            for start in range(0, max(1, len(mine)), 8):
                ids, labels, pos = self._batch(mine[start:start + 8])
                logits = self.engine(input_ids=ids, position_ids=pos, use_cache=False).logits[:, :-1, :]
                target = labels[:, 1:].reshape(-1)
                keep = target != IGNORE_INDEX
                picked, target = logits.reshape(-1, logits.size(-1))[keep], target[keep]
                for first in range(0, picked.size(0), LOSS_CHUNK):
                    chunk, wanted = picked[first:first + LOSS_CHUNK], target[first:first + LOSS_CHUNK]
                    total += float(_chunk_loss(chunk, wanted))
                    correct += float((chunk.argmax(dim=-1) == wanted).sum())
                tokens += float(keep.sum())
        self.engine.train()
        total, correct, tokens = self._all_sum(total, correct, tokens)
        return (total / tokens, correct / tokens) if tokens else (None, None)

    # ---- checkpoints -----------------------------------------------------------

    def save(self, step: int, state: dict[str, Any]) -> list[CheckpointInfo]:
        """Save a checkpoint (every rank takes part); returns every complete checkpoint kept (rank 0; others: [])."""
        torch = self.torch
        lora = self.config.method != "full"
        self.engine.save_checkpoint(str(self.store.root), tag=tag(step), client_state={"hone_step": step},
                                    exclude_frozen_parameters=lora)
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.gpu else []}
        torch.save(rng, self.store.root / tag(step) / f"rng-rank{self.rank}.pt")
        if self.config.servable_checkpoints:
            self._export_checkpoint(step, state)  # before the marker: a complete checkpoint is servable
        self.dist.barrier()
        if self.mirror is not None and self.local_rank == 0:
            self.mirror.upload(self.store.root / tag(step))  # what this node wrote
        self.distributed.wait_for_rank0()  # an upload can outlast a collective's timeout
        kept: list[CheckpointInfo] = []
        if self.rank == 0:
            self.store.mark_complete(step, state)
            if self.mirror is not None:
                self.mirror.mark(self.store.root / tag(step))
                self.mirror.prune(self.config.keep_checkpoints)
            self.store.prune()
            kept = self.checkpoint_infos()
        self.distributed.wait_for_rank0()
        return kept

    def _export_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """The checkpoint's model, as the final result is published (adapter or weights, tokenizer, manifest),
        under ``step-N/model``: what a ModelServing serves for ``fineTuneJobRef.checkpointStep``."""
        folder = self.store.root / tag(step) / contract.CHECKPOINT_MODEL_DIR if self.rank == 0 else None
        self._write_model(folder)
        if folder is not None:
            name = contract.checkpoint_model_name(self.config.job.fine_tuned_model, step)
            info = self._manifest(step, state["trained_tokens"], state.get("train_loss"),
                                  state.get("validation_loss"), fine_tuned_model=name)
            write_manifest(folder, {**info, "checkpoint": {"step": step}})

    def checkpoint_infos(self) -> list[CheckpointInfo]:
        """Every complete checkpoint kept, oldest first, where the job's readers find it (for an S3 output the
        mirror: the local copies live on a pod's disk, and earlier pods' only there)."""
        if self.mirror is not None:
            found = [(step, meta, f"{self.mirror.uri}/{tag(step)}", servable)
                     for step, meta, servable in self.mirror.checkpoints()]
        else:
            found = [(c.step, c.meta, str(c.path), (c.path / contract.CHECKPOINT_MODEL_DIR / MANIFEST).exists())
                     for c in self.store.complete()]
        return [CheckpointInfo(step=step, uri=uri, train_loss=meta.get("train_loss"),
                               validation_loss=meta.get("validation_loss"),
                               validation_accuracy=meta.get("validation_accuracy"),
                               model_uri=f"{uri}/{contract.CHECKPOINT_MODEL_DIR}" if servable else None)
                for step, meta, uri, servable in found]

    def resume(self) -> dict[str, Any]:
        if self.rank == 0:
            for path in self.store.remove_incomplete():
                log.warning("removed interrupted checkpoint %s", path)
            if self.mirror is not None:
                self.mirror.remove_incomplete()
        self.distributed.wait_for_rank0()
        if self.mirror is not None and self.local_rank == 0:
            remote = self.mirror.complete()
            local = self.store.latest()
            if remote and (local is None or remote[-1] > local.step):
                log.info("fetching checkpoint step %d from %s", remote[-1], self.mirror.uri)
                self.mirror.download(remote[-1], self.store.root)
        self.distributed.wait_for_rank0()  # a download can outlast a collective's timeout
        latest = self.store.latest()
        if latest is None:
            return {"step": 0, "trained_tokens": 0}
        lora = self.config.method != "full"
        self.engine.load_checkpoint(str(self.store.root), tag=latest.path.name, load_module_strict=not lora,
                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        rng_file = latest.path / f"rng-rank{self.rank}.pt"
        if rng_file.exists():
            rng = self.torch.load(rng_file, weights_only=True)
            self.torch.set_rng_state(rng["cpu"])
            if self.gpu and rng["cuda"]:
                self.torch.cuda.set_rng_state_all(rng["cuda"])
        if self.rank == 0:
            log.info("resumed from %s (step %d of %d)", latest.path, latest.step, self.total_steps)
        return dict(latest.meta)

    # ---- the loop --------------------------------------------------------------

    def train(self) -> TrainingResult:
        cfg = self.config
        state = self.resume()
        step = int(state["step"])
        trained_tokens = int(state.get("trained_tokens", 0))
        interval_loss = interval_tokens = 0.0
        interval_billable = interval_steps = 0
        last_report = time.monotonic()
        val_loss = state.get("validation_loss")
        self.val_accuracy = state.get("validation_accuracy")
        train_loss = state.get("train_loss")
        # The base model's validation loss and accuracy, to show what fine-tuning changed; kept across resumes.
        if step:
            initial_val, initial_acc = state.get("initial_validation_loss"), state.get("initial_validation_accuracy")
        else:
            initial_val, initial_acc = self.validation_metrics()
        # Loss per step and per evaluation, for the curves; checkpointed, so a resumed run keeps them.
        self.train_curve = [(int(s), float(v)) for s, v in state.get("train_curve", [])]
        self.validation_curve = [(int(s), float(v)) for s, v in state.get("validation_curve", [])]
        if not step and initial_val is not None:
            self.validation_curve = [(0, initial_val)]
        self.initial_validation = (initial_val, initial_acc)
        checkpoints: list[CheckpointInfo] = []
        self.engine.train()
        while step < self.total_steps:
            step_loss_sum, global_label_tokens, billable, stop = self._loss_step(step)
            step += 1
            self.train_curve.append((step, step_loss_sum / max(global_label_tokens, 1.0)))
            interval_loss += step_loss_sum
            interval_tokens += global_label_tokens
            interval_billable += billable
            interval_steps += 1
            trained_tokens += billable
            now = time.monotonic()
            last = step == self.total_steps
            due_report = now - last_report >= cfg.progress.interval_seconds or last
            due_ckpt = (step % cfg.checkpoint_interval_steps == 0 or last or stop
                        or (cfg.checkpoint_each_epoch and step % self.steps_per_epoch == 0))
            if due_report or due_ckpt:
                train_loss = interval_loss / interval_tokens if interval_tokens else train_loss
            if due_ckpt and self.val_data:
                val_loss, self.val_accuracy = self.validation_metrics()
                self.validation_curve.append((step, val_loss))
            saved = None
            if due_ckpt:
                saved = self.save(step, {"trained_tokens": trained_tokens, "train_loss": train_loss,
                                         "validation_loss": val_loss, "initial_validation_loss": initial_val,
                                         "validation_accuracy": self.val_accuracy,
                                         "initial_validation_accuracy": initial_acc,
                                         "train_curve": self.train_curve, "validation_curve": self.validation_curve})
                checkpoints = saved
                interval_loss = interval_tokens = 0.0
            # A report after every save too: status.checkpoints lists a checkpoint as soon as it is complete.
            if (due_report or saved is not None) and self.reporter:
                self._report(step, max(now - last_report, 1e-9), interval_steps, interval_billable,
                             train_loss, val_loss, trained_tokens, final=last, checkpoints=saved)
            if due_report or saved is not None:
                last_report, interval_billable, interval_steps = now, 0, 0
            if stop and not last:
                raise Preempted(f"stopped at step {step} of {self.total_steps} on SIGTERM; checkpoint saved")
        result = self.publish(step, trained_tokens, train_loss, val_loss, checkpoints)
        result.initial_validation_loss = initial_val
        result.validation_accuracy, result.initial_validation_accuracy = self.val_accuracy, initial_acc
        return result

    def _loss_step(self, step: int) -> tuple[float, float, int, bool]:
        """One optimizer step over this step's examples, packed and split across ranks.

        The loss is normalised by the weighted assistant tokens of *all* ranks, so every
        token counts the same whatever rank it lands on. Returns the step's summed loss
        and label tokens (over all ranks), its billable tokens, and whether any rank
        was asked to stop.
        """
        examples = packing.step_examples(len(self.train_data), self.hp.batch_size, self.config.seed, step)
        rows = packing.pack(examples, self.train_data, self.pack_length)
        micro = packing.micro_batches(packing.rank_rows(rows, self.rank, self.world), self.config.micro_batch_tokens)
        local_label_tokens = float(sum(1 for r in micro for row in r for label in row.labels[1:]
                                       if label != IGNORE_INDEX))
        billable = sum(len(self.train_data[i].input_ids) for i in examples)
        global_label_tokens, count = self._all_sum(local_label_tokens, float(len(micro)), op="max")
        # Every rank runs as many forward passes (ZeRO-3 gathers weights in each); one that has fewer
        # micro-batches runs empty ones, which carry no loss.
        micro += [[] for _ in range(int(count) - len(micro))]
        loss_total = 0.0
        for k, batch in enumerate(micro):
            ids, labels, pos = self._batch(batch)
            loss_sum = self._loss_sum(ids, labels, pos)
            self.engine.set_gradient_accumulation_boundary(k == len(micro) - 1)  # reduce and step after the last
            self.engine.backward(loss_sum * self.world / max(global_label_tokens, 1.0))
            loss_total += float(loss_sum.detach())
        self.engine.step()
        step_loss_sum, stop = self._all_sum(loss_total, 1.0 if self.stop_requested else 0.0)
        (peak,) = self._all_sum(float(self.distributed.peak_memory()), op="max")
        self.peak_memory = max(self.peak_memory, int(peak))
        return step_loss_sum, global_label_tokens, billable, bool(stop)

    def _report(self, step: int, elapsed: float, interval_steps: int, interval_billable: int,
                train_loss: float | None, val_loss: float | None, trained_tokens: int, final: bool = False,
                checkpoints: list[CheckpointInfo] | None = None) -> None:
        eta = datetime.now(timezone.utc) + timedelta(
            seconds=(self.total_steps - step) * elapsed / max(interval_steps, 1))
        assert self.reporter is not None
        self.reporter.report(Progress(step=step, total_steps=self.total_steps,
                                      epoch=round(step / self.steps_per_epoch, 3), train_loss=train_loss,
                                      validation_loss=val_loss, validation_accuracy=self.val_accuracy,
                                      trained_tokens=trained_tokens,
                                      tokens_per_second=round(interval_billable / elapsed, 1),
                                      estimated_finish=eta.replace(microsecond=0),
                                      train_curve=contract.loss_curve(self.train_curve),
                                      validation_curve=contract.loss_curve(self.validation_curve),
                                      peak_memory_bytes=self.peak_memory or None), final=final,
                             checkpoints=checkpoints)

    # ---- publishing --------------------------------------------------------------

    def publish(self, step: int, trained_tokens: int, train_loss: float | None, val_loss: float | None,
                checkpoints: list[CheckpointInfo]) -> TrainingResult:
        cfg = self.config
        staging = staging_dir(cfg.output_uri) if self.rank == 0 else None
        self._write_model(staging)
        result = None
        if self.rank == 0:
            assert staging is not None
            if cfg.merge_weights and cfg.method != "full":
                self._save_merged(staging)
            info = self._manifest(step, trained_tokens, train_loss, val_loss, fine_tuned_model=cfg.job.fine_tuned_model)
            base_loss, base_accuracy = getattr(self, "initial_validation", (None, None))
            if val_loss is not None and base_loss is not None:  # the base and the fine-tune, side by side
                info["evaluation"] = {"validation": {
                    "base": {"loss": base_loss, "meanTokenAccuracy": base_accuracy},
                    "fineTuned": {"loss": val_loss, "meanTokenAccuracy": self.val_accuracy}}}
            manifest_sha = write_manifest(staging, info)
            uri = publish(staging, cfg.output_uri, cfg.output_credentials_dir)
            result = TrainingResult(ok=True, fine_tuned_model=cfg.job.fine_tuned_model, artifact_uri=uri,
                                    manifest_sha256=manifest_sha, trained_tokens=trained_tokens, steps=step,
                                    train_loss=train_loss, validation_loss=val_loss,
                                    checkpoints=self.checkpoint_infos() or checkpoints,
                                    peak_memory_bytes=self.peak_memory or None)
        self.distributed.wait_for_rank0()  # saving, merging, hashing and uploading a model take long
        return result or TrainingResult(ok=True, steps=step, trained_tokens=trained_tokens)

    def _write_model(self, folder: Path | None) -> None:
        """The trained adapter (or, for full fine-tuning, the model) and the tokenizer into ``folder``, which
        rank 0 gives and the others pass as None: every rank takes part in gathering ZeRO-3 partitions."""
        module = self.engine.module
        if self.zero3 and self.config.method == "full":
            # Every rank takes part; DeepSpeed gathers one module at a time and only rank 0 keeps a copy, in
            # host memory: a whole gathered model on every GPU does not fit for the models ZeRO-3 is for.
            state = self.engine._zero3_consolidated_16bit_state_dict()
            if folder is not None:
                module.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        else:
            # The LoRA parameters are small; under ZeRO-3 every rank takes part in gathering them.
            trainable = [p for p in module.parameters() if p.requires_grad]
            ctx = (self.deepspeed.zero.GatheredParameters(trainable, modifier_rank=None) if self.zero3
                   else contextlib.nullcontext())
            with ctx:
                if folder is not None:
                    module.save_pretrained(str(folder), safe_serialization=True)
        if folder is not None:
            self.tokenizer.save_pretrained(str(folder))

    def _manifest(self, step: int, trained_tokens: int, train_loss: float | None, val_loss: float | None, *,
                  fine_tuned_model: str) -> dict[str, Any]:
        """What the manifest of the model at ``step`` says besides its files (the data's hashes computed once)."""
        if self._data_hashes is None:
            self._data_hashes = (sha256_of(self.config.training_data), sha256_of(self.config.validation_data))
        return manifest_info(self.config, self.hp, examples=len(self.train_data),
                             validation_examples=len(self.val_data), trained_tokens=trained_tokens,
                             train_loss=train_loss, val_loss=val_loss, steps=step,
                             train_curve=contract.loss_curve(self.train_curve),
                             validation_curve=contract.loss_curve(self.validation_curve),
                             fine_tuned_model=fine_tuned_model, data_hashes=self._data_hashes)

    def _save_merged(self, staging: Path) -> None:
        """The base with the adapter folded in, under ``merged/``: loadable without peft.

        Built from a fresh copy of the base (in the training precision, never
        4-bit) and the adapter just saved, so it is the published adapter
        that is merged, whatever ZeRO stage trained it.
        """
        from peft import PeftModel

        with self._zero3_init_off():  # rank 0 alone: a whole base in host memory, not partitioned
            base = models.load_model(self.local_model, self.dtype,
                                     trust_remote_code=self.config.base_model.trust_remote_code)
        merged = PeftModel.from_pretrained(base, str(staging)).merge_and_unload()
        merged.save_pretrained(str(staging / "merged"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(staging / "merged"))

    @contextlib.contextmanager
    def _zero3_init_off(self) -> Any:
        """While the HfDeepSpeedConfig of a ZeRO-3 run is registered, from_pretrained builds every model under
        zero.Init: partitioned over the ranks, with collectives that rank 0 alone would wait in forever.
        Unregister it for a load that is rank 0's own, then register it again."""
        hf_ds = getattr(self, "_hf_ds", None)
        if hf_ds is None:
            yield
            return
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            set_hf_deepspeed_config(hf_ds)

    def close(self) -> None:
        if getattr(self, "dist", None) is not None and self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()

