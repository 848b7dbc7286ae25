"""Strategy ``split`` (seed 004): the data stage on CPU loader nodes (``training_config.loader``,
placed and priced beside the job's ``requirements``), the model on the trainer's node; tasks
``train``, ``validate`` and ``infer``."""

from __future__ import annotations

from typing import Any

from protocol.placement import ExtraShare
from protocol.run import RunConfig
from protocol.strategies.split import SplitSettings, parse_split_settings
from ray_module.contract import RunContext
from ray_module.errors import SettingsError
from ray_module.strategies.base import SubmittedJob, TrainingStrategy
from ray_module.strategies.split.samples import PARTS

LIMITED_BY_DATA = 0.25  # a trainer that waits for data more than this is data-bound


class SplitStrategy(TrainingStrategy):
    name = "split"
    # Text-to-text models are validated and used for inference here; they train with fedavg.
    model_types = frozenset({"classifier", "simple_transformer", "text_to_text"})
    tasks = frozenset({"train", "validate", "infer"})
    progress_unit = "step"

    def parse_settings(self, training: dict[str, Any]) -> SplitSettings:
        return parse_split_settings(training)

    def check_job(self, job: SubmittedJob, settings: SplitSettings) -> None:
        if job.model_type == "text_to_text" and job.task == "train":
            raise SettingsError(
                "split trains classifier and simple_transformer models; train text_to_text "
                "models with fedavg (split can validate and infer with them)",
                "strategy",
            )
        if job.num_workers not in (None, 1):
            raise SettingsError(
                "split runs one trainer; give the data stage more loaders with loader.nodes "
                "or loader.cpu_cores",
                "num_workers",
            )
        if job.data_source != "huggingface" and job.data_split not in (None, *PARTS):
            raise SettingsError(
                f"data_config.split must be one of {', '.join(PARTS)} for {job.data_source} "
                "data (a side of the training split)",
                "split",
            )

    def extra_shares(self, job: SubmittedJob, settings: SplitSettings) -> tuple[ExtraShare, ...]:
        loader = settings.loader
        return (ExtraShare("loader", 0, loader.cpu_cores, loader.memory, loader.nodes),)

    def total_steps(self, settings: SplitSettings) -> int | None:
        return settings.max_steps if not settings.epochs else None

    def progress_note(self, values: dict[str, Any]) -> str | None:
        wait = values.get("data_wait_fraction")
        if not isinstance(wait, int | float):
            return None
        if wait > LIMITED_BY_DATA:
            return f"trainer waits for data {wait:.0%} of the time: more loader CPU would help"
        return f"trainer waits for data {wait:.0%} of the time: the trainer is the limit"

    def run(self, config: RunConfig, context: RunContext) -> None:
        from ray_module.strategies.split.run import run_split

        run_split(config, context)
