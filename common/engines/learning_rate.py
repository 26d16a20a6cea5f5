"""The learning rate as an engine-state attribute, so that ``TensorBoardStatsHandler(state_attributes=[...])``
writes it to TensorBoard beside the losses.

MONAI's ``LrScheduleHandler`` can print the learning rate to the log but writes nothing to TensorBoard, and its
``TensorBoardStatsHandler`` logs ``engine.state`` attributes at each epoch's end: this handler keeps one such
attribute up to date.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LearningRateState"]


class LearningRateState:
    """Set ``engine.state.<name>`` to the learning rate of the optimiser's first parameter group, every iteration.

    Args:
        optimizer: the optimiser whose rate is followed (its first group; groups of one run share a schedule).
        name: the state attribute (and TensorBoard tag) to set.

    Example (first entry of a config's ``train#handlers``, and on the TensorBoard handler
    ``"state_attributes": ["learning_rate"]``)::

        {"_target_": "common.engines.learning_rate.LearningRateState", "optimizer": "@optimizer"}
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str = "learning_rate") -> None:
        self.optimizer, self.name = optimizer, name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> Any:
        setattr(engine.state, self.name, float(self.optimizer.param_groups[0]["lr"]))
