"""Joint training: retrain on all the data seen so far (the upper bound, and the
"why not just retrain on all the data?" baseline)."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from pipeline.config.schema import ExperimentConfig
from pipeline.data.shards import ShardsError
from pipeline.data.streaming import streamed_tasks
from pipeline.data.tasks import Split
from pipeline.strategies.base import (
    NoParams,
    Retention,
    Role,
    Strategy,
    StrategyRefused,
    TaskContext,
    register,
)


@register
class Joint(Strategy[NoParams]):
    """At task ``k``, train on the union of the training sets of tasks ``0..k``.

    It keeps every raw sample of every earlier task, which is exactly what privacy law may
    forbid, and its compute grows with the sequence: the retention ledger shows both.
    """

    name = "joint"
    keeps_raw_data = True
    role = Role.REFERENCE

    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.kept: dict[str, tuple[int, int]] = {}  # task name -> (samples, bytes)

    @classmethod
    @override
    def check_config(cls, params: NoParams, cfg: ExperimentConfig) -> None:
        super().check_config(params, cfg)
        if cfg.data.stream:
            raise StrategyRefused(
                f"strategy: '{cls.name}' re-reads earlier tasks, a stream is seen once"
            )
        try:
            streamed = streamed_tasks(cfg.data)
        except ShardsError:  # a manifest that cannot be read is named by the data's checks
            streamed = []
        if streamed:
            raise StrategyRefused(
                f"strategy: '{cls.name}' trains on every task seen at once, held in memory; "
                f"{', '.join(streamed)} would be streamed (data.storage=memory holds them)"
            )

    @override
    def on_task_start(self, ctx: TaskContext) -> None:
        ctx.datamodule.train_tasks = list(range(ctx.index + 1))

    @override
    def on_task_end(self, ctx: TaskContext) -> None:
        split = ctx.task.train
        assert isinstance(split, Split), "joint refuses streamed tasks (pipeline.experiment)"
        nbytes = sum(t.numel() * t.element_size() for t in (split.images, split.labels, split.ids))
        self.kept[ctx.task.name] = (len(split), nbytes)

    @override
    def retention(self) -> Retention:
        return Retention(
            raw_samples={k: n for k, (n, _) in self.kept.items()},
            raw_bytes=sum(b for _, b in self.kept.values()),
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"kept": {k: list(v) for k, v in self.kept.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = {k: (int(v[0]), int(v[1])) for k, v in state["kept"].items()}
