"""The GPU stage: one actor on the trainer's node that trains, validates or predicts on the
batches the loaders stream to it, and reports metrics, flow figures, usage by stage,
checkpoints, the model and results straight to the job's runner.

A plain class, wrapped with ``ray.remote`` by ``run``."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.events import ArtifactEvent, CheckpointEvent, LogEvent, MetricEvent, UsageEvent
from protocol.run import DataRequest, ModelRequest, PublishTarget, WorkerPlan
from protocol.strategies.split import AUDIT_TASK, UNUSABLE_CHECKPOINT, SplitSettings
from ray_module.contract import NAMESPACE
from ray_module.errors import ModelError, RunCancelledError
from ray_module.models.classifier import class_names_of
from ray_module.models.contract import DataFit, Model, PredictOptions
from ray_module.storage.checkpoints import load_arrays, save_arrays
from ray_module.storage.gateway_files import client_for
from ray_module.strategies.base import CHECKPOINT_DIR
from ray_module.strategies.split import results
from ray_module.strategies.split.loader import LABELLED, BatchLoader, DataShape, LoaderConfig
from ray_module.strategies.split.outbox import Outbox
from ray_module.strategies.split.samples import EpochPlan
from ray_module.strategies.split.stream import BatchStream, Flow
from ray_module.strategies.split.verification import LoaderChecker
from ray_module.threads import use_cores
from ray_module.worker_logs import capture_worker_output

FLOW_EVERY = 10  # steps between flow figures
UPLOADS_AHEAD = 2  # checkpoint uploads queued or running before the trainer waits


@dataclass(frozen=True)
class WorkerConfig:
    job_id: int
    runner: str  # the runner actor's name
    task: str
    model: ModelRequest
    model_type: str
    settings: SplitSettings
    inference: results.InferenceSettings
    job_dir: str
    data_root: str | None
    publish: PublishTarget | None  # where nodes share no disk: the gateway's /runs
    trainer: WorkerPlan
    loaders: tuple[WorkerPlan, ...]  # one per loader actor (its share of its node's slot)
    data: DataRequest | None = None  # to make a loader's batch again (verified credit)
    # An audit (task AUDIT_TASK): the task it does again; for infer, the gateway's draws of
    # its batches (batch = draw % batches: counted here, not taken from the audited node).
    audited_task: str = "train"
    audit_draws: tuple[int, ...] = ()


@dataclass(frozen=True)
class DataPlan:
    """What the loaders found once they read the data: its shape, and which rows train,
    validate, or are a validate/infer job's own. Given at ``run``: the trainer starts
    while the loaders read."""

    shape: DataShape
    train_ids: np.ndarray
    validation_ids: np.ndarray
    task_ids: np.ndarray  # validate / infer: the rows to score or predict


class SplitWorker:
    def __init__(self, config: WorkerConfig) -> None:
        import ray
        import torch

        capture_worker_output(config.job_id, f"trainer on node {config.trainer.node_id}")
        self.config = config
        self.runner = ray.get_actor(config.runner, namespace=NAMESPACE)
        use_cores(config.trainer.cpu_cores)
        use_cuda = config.trainer.gpu > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.job_dir = Path(config.job_dir)
        self.checkpoint_dir = self.job_dir / CHECKPOINT_DIR
        self.flow = Flow(loader_cores=sum(p.cpu_cores for p in config.loaders))
        self._plans: dict[str, EpochPlan] = {}
        self._orders: dict[tuple[str, int], np.ndarray] = {}  # the few a stream has in flight
        self._label_map: np.ndarray | None = None
        # Events and uploads go out on a thread of their own, in order (``outbox``); one
        # gateway client (one connection) serves every upload of the run.
        self.outbox = Outbox(self.runner.emit_all.remote, ray.get)
        self._publisher = client_for(config.publish) if config.publish is not None else None
        self._snapshots = 0
        self.step = 1  # the step a checked batch's verdict names (validate, infer: 1)
        self.checker = (
            LoaderChecker(
                config.settings.seed,
                config.trainer.node_id,
                config.loaders,
                self._own_loader,
                self._emit,
            )
            if config.data is not None
            else None
        )
        if self.checker is not None:
            self.checker.prepare()
        inference = config.inference
        self.options = PredictOptions(
            top_k=inference.top_k,
            return_full_probabilities=inference.return_full_probabilities,
            max_new_tokens=inference.max_new_tokens,
            num_beams=inference.num_beams,
        )

    @property
    def task(self) -> str:
        """What the worker does: its job's task, or the one an audit does again."""
        task = self.config.task
        return self.config.audited_task if task == AUDIT_TASK else task

    # -- the three tasks ----------------------------------------------------------------
    def run(self, loaders: list[Any], data: DataPlan) -> dict[str, Any]:
        self.loaders, self.data = loaders, data
        self.stream = BatchStream(
            loaders,
            self._ask,
            max_in_flight=self.config.settings.max_in_flight_batches,
            prefetch=self.config.settings.prefetch_batches,
            flow=self.flow,
        )
        task = self.task
        try:
            if task == "train":
                outcome = self.train()
            elif task == "validate":
                outcome = self.validate()
            else:
                outcome = self.infer()
            self.outbox.flush()  # every event and upload is out before the run ends
            return outcome
        finally:
            self.outbox.close()
            if self._publisher is not None:
                self._publisher.close()

    def train(self) -> dict[str, Any]:
        """Train; or, for an audit (``compute.audits``), train again from the audited job's
        checkpoint to ``max_steps`` and report only each step's loss: nothing is saved, the
        gateway compares the losses with the ones the audited trainer reported."""
        import torch

        config, settings = self.config, self.config.settings
        auditing = config.task == AUDIT_TASK
        plan = EpochPlan(self.data.train_ids, settings.batch_size, settings.shuffle, settings.seed)
        per_epoch = plan.batches
        total = settings.total_steps(per_epoch)
        checkpoint_every = settings.checkpoint_interval or per_epoch
        model = self._load_model()
        optimizer = torch.optim.AdamW(
            model.network.parameters(), lr=settings.rate_for(config.model_type)
        )
        try:
            step, epoch_ids = self._resume(model, optimizer)
        except Exception as error:
            if not auditing:
                raise
            # Said whole (not chained: the reason is the root cause's): the gateway reads it.
            raise ModelError(
                f"{UNUSABLE_CHECKPOINT}: {type(error).__name__}: {error}"[:400]
            ) from None
        if auditing and not step:
            raise ModelError("the audit found no checkpoint of the audited job to start from")
        described = {
            "total_steps": total,
            "batches_per_epoch": per_epoch,
            "train_samples": len(self.data.train_ids),
            "validation_samples": len(self.data.validation_ids),
        }
        self._emit(MetricEvent(0, described))
        self._log(
            f"resumed from the checkpoint at step {step} of {total}"
            if step
            else f"training on {len(self.data.train_ids)} samples ({per_epoch} batches of "
            f"{settings.batch_size} per epoch, {total} steps), validating on "
            f"{len(self.data.validation_ids)}"
        )
        self._plans = {"train": plan}
        validating = not auditing and len(self.data.validation_ids) > 0
        if validating:
            # Within training, validation batches are training-sized at most: they share the
            # stream (and its bound on batches, so on bytes) with the training batches.
            size = min(settings.batch_size, config.inference.batch_size)
            self._plans["validation"] = EpochPlan(self.data.validation_ids, size, False, 0)
        last_usage = time.monotonic()
        # One stream for the whole run, each epoch's validation batches right after its last
        # training batch: the loaders keep making the next batches while the trainer
        # validates and saves a checkpoint, and never more than the bound are in flight.
        feed = self.stream(self._run_keys(step, total, per_epoch, validating))
        began, trained = time.perf_counter(), 0
        try:
            model.network.train()
            for key, batch in feed:
                self.step = step + 1
                batch = self._checked(key, batch)
                self._seed(step_seed(settings.seed, step + 1))  # dropout, as a replay
                loss = self._train_step(model, optimizer, batch)
                step += 1
                trained += len(batch["ids"])
                epoch_ids.append(batch["ids"])
                if settings.step_delay_s and not auditing:  # slow on purpose; its audit not
                    time.sleep(settings.step_delay_s)
                values: dict[str, Any] = {"loss": loss, "epoch": key[1]}
                if auditing:
                    self._emit(MetricEvent(step, values))
                    continue
                end_of_epoch = step % per_epoch == 0 or step == total
                if step % FLOW_EVERY == 0 or end_of_epoch:
                    values.update(self._flow_figures())
                if end_of_epoch:
                    values.update(self._epoch_figures(epoch_ids))
                    epoch_ids = []
                    if validating:
                        values.update(self._validation_figures(model, feed))
                        model.network.train()
                    self._log(_epoch_line(key[1], values))
                if step == total:  # end to end: validations and checkpoints included
                    elapsed = time.perf_counter() - began
                    values.update(train_s=elapsed, train_samples_per_s=trained / elapsed)
                self._emit(MetricEvent(step, values))
                if step % checkpoint_every == 0 or end_of_epoch:
                    self._save_checkpoint(model, optimizer, step, epoch_ids)
                    self._publish("checkpoint", self.checkpoint_dir)
                    self._emit(CheckpointEvent(step, str(self.checkpoint_dir)))
                    last_usage = self._report_usage(last_usage, step)
                    if self._cancel_requested():
                        raise RunCancelledError()
        finally:
            feed.close()  # an ended or abandoned stream leaves no fetch behind
        if auditing:
            self._report_usage(last_usage, step)
            return {"step": step}
        final = self.job_dir / "model"
        self._save_model(model, final)
        self._publish("model", final)
        self._emit(ArtifactEvent(str(final)))
        self._report_usage(last_usage, step)
        return {"step": step}

    def validate(self) -> dict[str, Any]:
        model = self._load_model()
        started = time.monotonic()
        # Step 0 tells the dispatcher the run has started (an attempt silent for too long
        # is given up), and the user what will be scored.
        self._emit(MetricEvent(0, {"samples": len(self.data.task_ids)}))
        scores = self._score(model, self.data.task_ids, "task")
        scores.update(self._flow_figures())
        results.write_json(self.job_dir / results.RESULTS_DIR / results.VALIDATION_FILE, scores)
        self._publish("results", self.job_dir / results.RESULTS_DIR)
        self._emit(MetricEvent(1, scores))
        self._report_usage(started, 1)
        return scores

    def infer(self) -> dict[str, Any]:
        import torch

        config, inference = self.config, self.config.inference
        model = self._load_model()
        model.network.eval()
        ids = self.data.task_ids
        if config.model_type == LABELLED:
            names = class_names_of(model.companion)
            estimate = results.classifier_estimates(len(ids), names, inference)
        else:
            estimate = results.text_estimates(len(ids), 4.0 * config.settings.seq_len, inference)
        self._emit(MetricEvent(0, {"samples": len(ids), **estimate}))
        started = time.monotonic()
        writer = results.ResultWriter(self.job_dir / results.RESULTS_DIR)
        plan = EpochPlan(ids, inference.batch_size, False, 0)
        self._plans = {"task": plan}
        # An audit predicts the batches the gateway drew, the audited job all of them.
        auditing = config.task == AUDIT_TASK
        batches = sorted({draw % plan.batches for draw in config.audit_draws}) if auditing else None
        with torch.no_grad():
            for done, (key, batch) in enumerate(
                self.stream([("task", 0, i) for i in batches or range(plan.batches)]), start=1
            ):
                rows = self._predictions(model, self._checked(key, batch))
                writer.write(rows, len(batch["ids"]))
                if done % FLOW_EVERY == 0 and self._cancel_requested():
                    raise RunCancelledError()
        summary = writer.close(
            {"estimated_memory_mb": estimate["estimated_memory_mb"], **self._flow_figures()}
        )
        self._publish("results", self.job_dir / results.RESULTS_DIR)
        self._emit(MetricEvent(1, summary))
        self._report_usage(started, 1)
        return summary

    # -- the stream -----------------------------------------------------------------------
    def _run_keys(
        self, step: int, total: int, per_epoch: int, validating: bool
    ) -> Iterator[tuple[str, int, int]]:
        """The keys of a training run from ``step``: each epoch's training batches, then (when
        validating) the validation batches scored at its end."""
        validation = self._plans["validation"].batches if validating else 0
        while step < total:
            epoch, first = divmod(step, per_epoch)
            last = min(per_epoch, first + total - step)
            yield from (("train", epoch, i) for i in range(first, last))
            step += last - first
            yield from (("validation", 0, i) for i in range(validation))

    def _ask(self, loader: Any, key: tuple[str, int, int]) -> Any:
        part, epoch, index = key
        plan = self._plans[part]
        augment = part == "train" and self.config.settings.augment
        order = self._order(part, epoch)
        return loader.batch.remote(epoch, index, plan.batch(epoch, index, order), augment)

    def _checked(self, key: tuple[str, int, int], batch: dict) -> dict:
        """A sample of loaders' batches made again here (verified credit)."""
        if self.checker is None:
            return batch
        part, epoch, index = key
        ids = self._plans[part].batch(epoch, index, self._order(part, epoch))
        augment = part == "train" and self.config.settings.augment
        return self.checker.checked(self.step, key, ids, augment, batch)

    def _own_loader(self) -> BatchLoader:
        """The trainer's own loader, to make a checked batch again (no output capture)."""
        config = self.config
        assert config.data is not None
        return BatchLoader(
            LoaderConfig(
                node_id=config.trainer.node_id,
                model_type=config.model_type,
                data=config.data,
                model=config.model,
                seq_len=config.settings.seq_len,
                seed=config.settings.seed,
                augment=config.settings.augment,
            )
        )

    def _order(self, part: str, epoch: int) -> np.ndarray:
        cached = self._orders
        if (part, epoch) not in cached:
            if len(cached) >= 4:
                cached.pop(next(iter(cached)))
            cached[(part, epoch)] = self._plans[part].order(epoch)
        return cached[(part, epoch)]

    def _flow_figures(self) -> dict[str, float]:
        figures = self.flow.take()
        gpu = _gpu_utilisation(self.device)
        if gpu is not None:
            figures["trainer_gpu_utilisation"] = gpu
        return figures

    def _epoch_figures(self, epoch_ids: list[np.ndarray]) -> dict[str, Any]:
        """Proof that the epoch saw each of its samples once: count, distinct, digest."""
        seen = np.concatenate(epoch_ids) if epoch_ids else np.array([], dtype=np.int64)
        return {
            "epoch_samples": len(seen),
            "epoch_unique_samples": len(np.unique(seen)),
            "epoch_ids_sha256": ids_digest(seen),
        }

    def _validation_figures(self, model: Any, feed: Iterator[Any]) -> dict[str, Any]:
        scores = self._score(model, self.data.validation_ids, "validation", feed)
        keep = ("accuracy", "loss", "perplexity", "exact_match")
        return {f"validation_{k}": v for k, v in scores.items() if k in keep}

    # -- models ---------------------------------------------------------------------------
    def _load_model(self) -> Model:
        """Training: a model sized to the data (or a saved one that fits it). Validate and
        infer: the model as saved, a classifier's classes its own; the data's labels are
        mapped onto them by name (a .npy file for inference has no labels to map)."""
        from ray_module.models.registry import load_model

        config, shape = self.config, self.data.shape
        fit = DataFit(
            input_shape=tuple(shape.input_shape),
            num_classes=shape.num_classes,
            class_names=tuple(shape.class_names),
            own_classes=self.task != "train",
        )
        model = load_model(
            config.model,
            fit=fit,
            seed=config.settings.seed,
            local_root=Path(config.data_root) if config.data_root else None,
            device=self.device,
        )
        if config.model_type == LABELLED and self.task == "validate":
            self._label_map = self._labels_onto(shape.class_names, model.companion)
        return model

    def _labels_onto(self, data_names: tuple[str, ...], classes: Any) -> np.ndarray | None:
        """Data label index -> model class index, by class name; None when they agree."""
        names = class_names_of(classes)
        if list(data_names) == names[: len(data_names)]:
            return None
        unknown = sorted(set(data_names) - set(names))
        if unknown:
            raise ModelError(
                f"the data has classes the model does not know: {unknown[:10]} (the model's: "
                f"{names[:10]})"
            )
        return np.array([names.index(name) for name in data_names], dtype=np.int64)

    def _on_device(self, model: Model, batch: dict) -> dict[str, Any]:
        if self._label_map is not None and "labels" in batch:
            batch = {**batch, "labels": self._label_map[batch["labels"]]}
        return model.batch(batch)

    def _save_model(self, model: Model, directory: Path) -> None:
        from ray_module.storage.directories import replace_directory, staging_for

        staging = staging_for(directory)
        model.save(staging)
        replace_directory(staging, directory)

    def _seed(self, seed: int) -> None:
        """``torch.manual_seed`` for the trainer's own device only: the same draws there, at
        a hundredth of the cost (the global one seeds every kind of accelerator torch
        knows, about 0.2 ms a step)."""
        import torch

        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _train_step(self, model: Model, optimizer: Any, batch: dict) -> float:
        loss = model.loss(self._on_device(model, batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def _score(
        self, model: Model, ids: np.ndarray, part: str, feed: Iterator[Any] | None = None
    ) -> dict[str, Any]:
        """Score ``ids``: a stream of their own, or (within training) their batches next in
        ``feed``, for which the plan of ``part`` is already set."""
        import torch

        if feed is None:
            self._plans[part] = EpochPlan(ids, self.config.inference.batch_size, False, 0)
            batches = self.stream([(part, 0, i) for i in range(self._plans[part].batches)])
        else:
            batches = itertools.islice(feed, self._plans[part].batches)
        model.network.eval()
        scorer = model.scorer(self.options)
        with torch.no_grad():
            for key, batch in batches:
                scorer.add(self._on_device(model, self._checked(key, batch)))
        return scorer.metrics()

    def _predictions(self, model: Model, batch: dict) -> list[dict[str, Any]]:
        """The batch's rows, each with its sample id; a classifier's rows under the
        confidence threshold are left out."""
        rows = model.predict(self._on_device(model, batch), self.options)
        threshold = self.config.inference.confidence_threshold
        return [
            {"id": int(sample_id), **row}
            for sample_id, row in zip(batch["ids"], rows, strict=True)
            if row.get("probability", 1.0) >= threshold
        ]

    # -- checkpoints, usage, events ---------------------------------------------------------
    def _resume(self, model: Any, optimizer: Any) -> tuple[int, list[np.ndarray]]:
        import torch

        saved = load_arrays(self.checkpoint_dir)
        if saved is None:
            return 0, []
        arrays, state = saved
        model.network.load_state_dict(
            {k[6:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("model.")}
        )
        optimizer.load_state_dict(_optimizer_state(arrays, state["optimizer"]))
        epoch_ids = [arrays["epoch_ids"]] if len(arrays.get("epoch_ids", ())) else []
        return int(state["step"]), epoch_ids

    def _publish(self, kind: str, directory: Path) -> None:
        """Upload a directory just written, where nodes share no disk, in the outbox's order:
        the event naming it goes out after it, and training goes on meanwhile. A checkpoint
        is uploaded from a snapshot of hard links (its files are never rewritten, only
        replaced whole), so the next one can be saved while it is on its way; at most
        ``UPLOADS_AHEAD`` wait behind a slow gateway."""
        publisher = self._publisher
        if publisher is None:
            return
        source = Path(directory)
        if kind == "checkpoint":
            self.outbox.wait_calls(UPLOADS_AHEAD - 1)
            self._snapshots += 1
            source = source.with_name(f"{source.name}.upload-{self._snapshots}")
            if source.exists():
                shutil.rmtree(source)
            shutil.copytree(directory, source, copy_function=_link_or_copy)

        def upload() -> None:
            try:
                publisher.upload_directory(kind, source)
            finally:
                if source != Path(directory):
                    shutil.rmtree(source, ignore_errors=True)

        self.outbox.call(upload)

    def _save_checkpoint(
        self, model: Any, optimizer: Any, step: int, epoch_ids: list[np.ndarray]
    ) -> None:
        arrays = {f"model.{k}": _numpy(v) for k, v in model.network.state_dict().items()}
        optimizer_state = optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for name, tensor in values.items():
                arrays[f"optim.{index}.{name}"] = _numpy(tensor)
        seen = np.concatenate(epoch_ids) if epoch_ids else np.array([], dtype=np.int64)
        arrays["epoch_ids"] = seen.astype(np.int64)
        state = {
            "step": step,
            "optimizer": {
                "param_groups": optimizer_state["param_groups"],
                "state_keys": {str(i): sorted(v) for i, v in optimizer_state["state"].items()},
            },
        }
        save_arrays(self.checkpoint_dir, arrays, state)

    def _report_usage(self, since: float, step: int) -> float:
        """Completed work up to ``step``: the trainer's slot for the wall time since
        ``since``; each loader node for the CPU-seconds of the batches the trainer consumed,
        and its memory for the time they took to make."""
        now = time.monotonic()
        trainer = self.config.trainer
        slot = {"gpu": trainer.gpu, "cpu_cores": trainer.cpu_cores, "memory_gb": trainer.memory_gb}
        events = [
            UsageEvent.for_slot(
                trainer.node_id, **slot, seconds=now - since, stage="trainer", step=step
            )
        ]
        cpu, wall = self.flow.take_credit()
        memory = {p.node_id: p.memory_gb for p in self.config.loaders}
        for node, seconds in cpu.items():
            events.append(
                UsageEvent(node, 0.0, seconds, memory.get(node, 0.0) * wall[node], "loader", step)
            )
        for event in events:
            self._emit(event)
        return now

    def _emit(self, event: Any) -> None:
        """Send an event, in order, without waiting (``outbox``)."""
        self.outbox.emit(event)

    def _log(self, message: str, level: str = "info") -> None:
        self._emit(LogEvent(message, level=level, source="trainer"))

    def _cancel_requested(self) -> bool:
        import ray

        return bool(ray.get(self.runner.cancel_requested.remote()))


def _optimizer_state(arrays: dict[str, np.ndarray], saved: dict[str, Any]) -> dict[str, Any]:
    import torch

    state = {
        int(index): {
            name: torch.from_numpy(np.array(arrays[f"optim.{index}.{name}"])) for name in names
        }
        for index, names in saved["state_keys"].items()
    }
    return {"state": state, "param_groups": saved["param_groups"]}


def step_seed(job_seed: int, step: int) -> int:
    """The seed of the trainer's random draws (dropout) at ``step``: an audit that trains
    the step again from a checkpoint draws the same."""
    return int(np.random.SeedSequence([job_seed, step, 0x5B1]).generate_state(1)[0])


def _epoch_line(epoch: int, values: dict[str, Any]) -> str:
    """One epoch in words: its loss, validation score and what limited it."""
    parts = [f"epoch {epoch + 1} done: loss {values['loss']:.4f}"]
    for key in ("validation_accuracy", "validation_loss", "validation_perplexity"):
        if key in values:
            parts.append(f"{key.replace('_', ' ')} {values[key]:.4f}")
    if "data_wait_fraction" in values:
        parts.append(f"trainer waited for data {values['data_wait_fraction']:.0%} of the time")
    return ", ".join(parts)


def _numpy(tensor: Any) -> np.ndarray:
    """A tensor as numpy for safetensors; bfloat16 (numpy has none) as float32, which
    ``load_state_dict`` casts back."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links
        shutil.copy2(source, destination)


def ids_digest(ids: np.ndarray) -> str:
    """A digest of a set of sample ids (order does not matter): equal sets, equal digests."""
    canonical = json.dumps(sorted(int(i) for i in ids))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _gpu_utilisation(device: Any) -> float | None:
    if device.type != "cuda":
        return None
    import torch

    try:
        return float(torch.cuda.utilization(device)) / 100.0
    except Exception:  # no NVML on this machine: the figure is unknown, not zero
        return None
