"""The trainer: config -> dataset + P x K sampler + transforms -> model -> losses (+ miners) -> optimiser steps,
with per-epoch evaluation, checkpoints (every epoch, on interrupt), exact resume, and DDP under torchrun.

Run folder (``output_dir``): ``config.yaml`` (resolved), ``last.pt`` (full training state), ``best.pt`` and
``final.pt`` (embedding checkpoints that ``reid.embedder.Embedder.from_checkpoint`` loads), ``metrics.csv`` and
TensorBoard events in ``tb/``.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.data import (
    ImageDataset,
    PKSampler,
    ReidDataset,
    build_dataset,
    build_transforms,
    holdout_from_config,
)
from reid.data.readers import read_extra_train
from reid.embedder import Embedder
from reid.errors import CheckpointError, ConfigError, TrainingDivergedError
from reid.losses import build_combined_loss
from reid.models import build_model, save_checkpoint
from reid.models.checkpoint import CheckpointMeta, read_checkpoint
from reid.utils.io import atomic_torch_save
from training.config import dump_config
from training.evaluators import build_evaluator
from training.optim import EpochScheduler, build_optimizer

logger = logging.getLogger(__name__)

STATE_FORMAT = "reid-training-state"


class TrainStep(nn.Module):
    """Model + losses as one module, so DDP synchronises the losses' parameters (classifiers, centers) too."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.loss(self.model(x), y)


AMP_DTYPES = {"auto", "float16", "bfloat16"}


def _amp_dtype(train_cfg: Mapping, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` / ``train.amp_dtype`` on ``device``, or None for float32 steps."""
    name = str(train_cfg.get("amp_dtype", "auto"))
    if name not in AMP_DTYPES:
        raise ConfigError(f"train.amp_dtype must be one of {sorted(AMP_DTYPES)}, got {name!r}")
    if not train_cfg.get("amp"):
        return None
    if name == "bfloat16":
        if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            # Without AVX-512 BF16 / AMX oneDNN emulates bfloat16: measured 42 s a MobileNetV2 256x128 step on
            # an AVX2 EPYC against about 3 s in float32. The run still does what was asked, but says so.
            logger.warning(
                "train.amp_dtype bfloat16: this CPU (%s) has no native bfloat16, so every step is emulated "
                "and several times slower than float32; pass train.amp_dtype=auto for float32 steps",
                torch.backends.cpu.get_cpu_capability(),
            )
        return torch.bfloat16
    if device.type != "cuda":
        if name == "float16":
            raise ConfigError("train.amp_dtype float16 needs a CUDA device; on CPU use bfloat16 or auto")
        return None
    return torch.float16


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _same_path(a: str | None, b: str) -> bool:
    return a is not None and Path(a).resolve() == Path(b).resolve()


class Trainer:
    def __init__(
        self, cfg: Mapping[str, Any], resume: str | Path | None = None, device: str | None = None
    ) -> None:
        self.cfg = dict(cfg)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        seed_everything(int(cfg["seed"]) + self.rank, bool(cfg["deterministic"]))
        self.out = Path(cfg["output_dir"])
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.out / "config.yaml")
        # --resume restores the weights itself: the model to start from is then neither read nor needed
        self._resuming = bool(resume)
        self.init_model_id: str | None = None
        self._build()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best = -float("inf")
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self._stop = False
        if resume:
            self.load_state(resume)

    # ------------------------------------------------------------------------------------------------ build
    def _build(self) -> None:
        c = self.cfg
        d = c["data"]
        build_evaluator(
            c["eval"], int(d["eval_batch_size"])
        )  # a bad eval.type or lfw_root fails now, not after an epoch
        self.dataset: ReidDataset = build_dataset(d["dataset"], d["root"], **(d.get("kwargs") or {}))
        extra = [r for folder in d["extra_train"] for r in read_extra_train(folder)]
        train_records = self.dataset.train + extra
        self.val_set: ReidDataset | None = None
        if d["val_identities"]:
            train_records, self.val_set = holdout_from_config(self.dataset.train, d, extra)
            logger.info(
                "validation: %d identities held out of training (%d query / %d gallery images); "
                "best.pt is chosen on them, the test split only reports",
                len({r.pid for r in self.val_set.query}),
                len(self.val_set.query),
                len(self.val_set.gallery),
            )
        elif extra:
            logger.info("extra training views: %d images from %s", len(extra), ", ".join(d["extra_train"]))
        tcfg = dict(c["transforms"])
        self.input_size = tuple(tcfg.get("input_size", [256, 128]))
        self.train_set = ImageDataset(train_records, build_transforms(tcfg, train=True))
        self.test_transform = build_transforms(
            {k: v for k, v in tcfg.items() if k in ("input_size", "mean", "std")}, train=False
        )
        self.sampler = PKSampler(
            self.train_set.labels,
            p=int(d["p"]),
            k=int(d["k"]),
            seed=int(c["seed"]),
            num_replicas=self.world,
            rank=self.rank,
        )
        self.batch_size = int(d["p"]) * int(d["k"])
        self.model = build_model(**c["model"])
        if c["train"].get("init_weights") and not self._resuming:
            self._init_weights(str(c["train"]["init_weights"]))
        self.memory_format = (
            torch.channels_last if c["train"].get("channels_last") else torch.contiguous_format
        )
        self.model.to(memory_format=self.memory_format)
        self.loss = build_combined_loss(
            c["losses"], num_classes=self.train_set.num_classes, embedding_size=self.model.embedding_dim
        )
        self.step_module = TrainStep(self.model, self.loss).to(self.device)
        self.optimizer = build_optimizer(self.model, self.loss, c["optimizer"])
        self.scheduler = EpochScheduler(self.optimizer, c["scheduler"], int(c["train"]["epochs"]))
        self.scheduler.step_to(0.0)
        self.ddp = (
            nn.parallel.DistributedDataParallel(self.step_module, find_unused_parameters=False)
            if self.distributed
            else self.step_module
        )
        self.amp_dtype = _amp_dtype(c["train"], self.device)  # None: float32 steps
        # A scaler only for float16: bfloat16 has float32's exponent range, so gradients cannot underflow.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.mean = tuple(tcfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(tcfg.get("std", (0.229, 0.224, 0.225)))

    def _init_weights(self, path: str) -> None:
        """Load a whole exported model (``train.init_weights``), refusing one that trained on an identity this
        run validates on: a continued model would otherwise be chosen on identities it has seen."""
        state, meta = read_checkpoint(path)
        where = f"train.init_weights {path}"
        if meta.arch != self.cfg["model"]["name"]:
            raise ConfigError(
                f"{where} is a {meta.arch!r} model; this config builds {self.cfg['model']['name']!r}"
            )
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{where} does not fit this config's model section: {e}") from e
        if self.val_set is not None:
            own = self.cfg["data"]
            theirs = (meta.extra.get("config") or {}).get("data") or {}
            # kwargs too: an identity-folder reader numbers persons after its filters (min_images, ...)
            same_data = (
                theirs.get("dataset") == own["dataset"]
                and _same_path(theirs.get("root"), own["root"])
                and (theirs.get("kwargs") or {}) == (own.get("kwargs") or {})
            )
            if not same_data:
                raise ConfigError(
                    f"{where} was not trained by this trainer on {own['dataset']} at {own['root']}, so whether it "
                    "saw this run's validation identities cannot be checked"
                )
            ours = {r.pid for r in self.val_set.query}
            held = (
                {r.pid for r in holdout_from_config(self.dataset.train, theirs)[1].query}
                if theirs.get("val_identities")
                else set()
            )
            seen = sorted(ours - held)
            if seen:
                raise ConfigError(
                    f"{where} trained on {len(seen)} of this run's {len(ours)} validation identities "
                    f"(e.g. {seen[:5]}); hold out the same identities it held out (data.val_identities, "
                    "data.val_seed, data.val_extends)"
                )
        self.init_model_id = meta.model_id
        logger.info("model initialised from %s (%s)", path, meta.model_id)

    def _loader(self) -> DataLoader:
        workers = int(self.cfg["data"]["workers"])
        seed = int(self.cfg["seed"]) * 100_003 + self.epoch * 1009 + self.rank

        def init(
            worker_id: int,
        ) -> None:  # each worker's augmentation randomness depends on (seed, epoch, id)
            self.train_set.transform.pipeline.set_random_seed(seed + worker_id)
            np.random.seed((seed + worker_id) % 2**32)

        if workers == 0:
            self.train_set.transform.pipeline.set_random_seed(seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=workers,
            worker_init_fn=init if workers else None,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------------------------------------- train
    def _set_backbone_frozen(self, frozen: bool) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(not frozen)

    def train(self) -> dict:
        c = self.cfg["train"]
        epochs = int(c["epochs"])
        max_minutes = c.get("max_minutes")
        writer = self._writer()
        handler = signal.signal(signal.SIGTERM, self._on_sigterm) if self.is_main else None
        try:
            while self.epoch < epochs and not self._stop:
                self._set_backbone_frozen(self.epoch < int(c["freeze_backbone_epochs"]))
                self.sampler.set_epoch(self.epoch)
                if self.step_in_epoch:  # resuming inside an epoch: skip the batches already trained on
                    self.sampler.load_state_dict(
                        {"seed": self.sampler.seed, "epoch": self.epoch, "batches_done": self.step_in_epoch}
                    )
                t0 = time.perf_counter()
                self._train_epoch(writer)
                self.train_seconds += time.perf_counter() - t0
                if self._stop:
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                last = (
                    self.epoch >= epochs or self._budget_spent()
                )  # the last (maybe partial) epoch: evaluated
                due = last or self.epoch % int(self.cfg["eval"]["every"]) == 0
                self._end_epoch(self.evaluate() if due else {}, writer)
                if self._budget_spent():
                    logger.info("time budget of %s minutes reached after epoch %d", max_minutes, self.epoch)
                    break
        except KeyboardInterrupt:
            logger.warning("interrupted: saving %s", self.out / "last.pt")
            self._stop = True
        finally:
            if self.is_main:
                self.save_state(self.out / "last.pt")
                if handler is not None:
                    signal.signal(signal.SIGTERM, handler)
            if writer is not None:
                writer.close()
        if self.is_main and not self._stop:
            self.export(self.out / "final.pt")
        return {"epoch": self.epoch, "best": self.best, "history": self.history}

    def _budget_spent(self, extra_seconds: float = 0.0) -> bool:
        m = self.cfg["train"].get("max_minutes")
        return bool(m) and (self.train_seconds + extra_seconds) / 60 >= float(m)

    def _by_time(self) -> bool:
        c = self.cfg["train"]
        return bool(c.get("schedule_by_time") and c.get("max_minutes"))

    def _schedule_position(self, total: int, epoch_seconds: float) -> float:
        """Epoch position for the LR schedule: by steps, or by elapsed time for a fixed-time budget."""
        c = self.cfg["train"]
        if self._by_time():
            done = (self.train_seconds + epoch_seconds) / (60 * float(c["max_minutes"]))
            return min(done, 1.0) * int(c["epochs"])
        return self.epoch + self.step_in_epoch / total

    def _on_sigterm(self, *_: Any) -> None:
        logger.warning("SIGTERM: stopping after this step and saving the training state")
        self._stop = True

    def _train_epoch(self, writer) -> None:
        c = self.cfg["train"]
        self.step_module.train()
        loader = self._loader()
        n_batches = self.sampler.num_batches()
        limit = c.get("iters_per_epoch")
        total = min(n_batches, int(limit)) if limit else n_batches
        bar = tqdm(
            total=total,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}",
            disable=not self.is_main,
            unit="it",
            leave=False,
        )
        by_time = self._by_time()
        t0 = time.perf_counter()
        for x, y, *_ in loader:
            elapsed = time.perf_counter() - t0
            if self.step_in_epoch >= total or self._stop or (by_time and self._budget_spent(elapsed)):
                break
            self.scheduler.step_to(self._schedule_position(total, elapsed))
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss, values = self.ddp(x, y)
            if self._diverged(loss):
                # one NaN step poisons every weight through the optimiser; stop before it is taken (a float16
                # grad scaler skips such steps itself and lowers its scale, so it is left to do that)
                terms = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k.startswith("loss/"))
                raise TrainingDivergedError(
                    f"the loss is not finite at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} ({terms}) "
                    f"on some rank; {self.out / 'last.pt'} (if written) holds the last saved state. Lower "
                    "optimizer.lr, set train.grad_clip, or train in float32 (train.amp_dtype auto)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if c.get("grad_clip"):
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.step_module.parameters(), float(c["grad_clip"]))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step_in_epoch += 1
            self.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss/total']:.3f}")
            if writer is not None and self.global_step % int(c["log_every"]) == 0:
                for k, v in values.items():
                    writer.add_scalar(k, v, self.global_step)
                writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.global_step)
            self._last_values = values
        bar.close()

    def _diverged(self, loss: torch.Tensor) -> bool:
        """A non-finite loss on any rank (all ranks stop together: one stopping alone would leave the others
        waiting in the gradient all-reduce); never under a float16 grad scaler, which skips the step."""
        if self.scaler.is_enabled():
            return False
        bad = (~torch.isfinite(loss.detach())).float()
        if self.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def _writer(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; stay usable without it
            logger.warning("tensorboard is not installed: no TensorBoard logs")
            return None
        return SummaryWriter(str(self.out / "tb"))

    def _end_epoch(self, metrics: dict, writer) -> None:
        if not self.is_main:
            return
        row = {
            "epoch": self.epoch,
            "step": self.global_step,
            "minutes": round(self.train_seconds / 60, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            **{k: round(v, 6) for k, v in getattr(self, "_last_values", {}).items()},
            **{f"eval/{k}": v for k, v in metrics.items()},
        }
        self.history.append(row)
        self._write_csv()
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, self.global_step)
        key = self.cfg["eval"]["metric"]
        if key in metrics and metrics[key] > self.best:
            self.best = metrics[key]
            self.export(self.out / "best.pt", extra={"metrics": metrics, "epoch": self.epoch})
        logger.info("epoch %d: %s", self.epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.epoch % int(self.cfg["train"]["checkpoint_every"]) == 0:
            self.save_state(self.out / "last.pt")

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)

    # --------------------------------------------------------------------------------------------- evaluate
    def embedder(self) -> Embedder:
        return Embedder.from_model(
            self.model,
            self.input_size,
            self.mean,
            self.std,
            self.cfg["modality"],
            device=str(self.device),
            flip=bool(self.cfg["eval"]["flip"]),
        )

    def evaluate(self) -> dict[str, float]:
        """Metrics that choose best.pt (``eval.metric``): on the validation identities when the config holds
        some out, else on the test split. With validation and ``eval.report_test``, the test split's metrics are
        added as ``test/<name>``: reported, never used to choose."""
        if self.val_set is None:
            return self._evaluate_split(self.dataset)
        metrics = self._evaluate_split(self.val_set, allow_lfw=False)
        if self.cfg["eval"]["report_test"]:
            metrics.update({f"test/{k}": v for k, v in self._evaluate_split(self.dataset).items()})
        return metrics

    def _evaluate_split(self, split: ReidDataset, allow_lfw: bool = True) -> dict[str, float]:
        """The configured evaluator (``eval.type``) on ``split``; validation identities are always ranked."""
        if not self.is_main:
            if self.distributed:
                dist.barrier()
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            ev = self.cfg["eval"]
            batch = int(self.cfg["data"]["eval_batch_size"])
            return build_evaluator(ev, batch, kind=None if allow_lfw else "rank")(self.embedder(), split)
        finally:
            self.model.train(was_training)
            if self.distributed:
                dist.barrier()

    # ----------------------------------------------------------------------------------------- checkpoints
    def export(self, path: Path, extra: dict | None = None) -> CheckpointMeta:
        """An embedding checkpoint (weights + input size + normalisation + model_id) for ``Embedder``."""
        return save_checkpoint(
            path,
            self.model,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            modality=self.cfg["modality"],
            extra={
                "config": self.cfg,
                "epoch": self.epoch,
                **({"init_weights_model_id": self.init_model_id} if self.init_model_id else {}),
                **(extra or {}),
            },
        )

    def save_state(self, path: Path) -> None:
        state = {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": self.cfg,
        }
        atomic_torch_save(state, path)

    def load_state(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"--resume: {path} does not exist")
        try:
            state = torch.load(
                path, map_location="cpu", weights_only=False
            )  # our own file: includes RNG state
        except Exception as e:
            raise CheckpointError(f"--resume: {path} cannot be read ({type(e).__name__}: {e})") from e
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"--resume: {path} is not a training state (last.pt) written by this trainer"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.loss.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"--resume: {path} does not fit this config's model/losses: {e}") from e
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), float(state["best"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.history = list(state.get("history", []))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step_in_epoch)
