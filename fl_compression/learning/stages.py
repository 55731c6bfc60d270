"""Training in stages: one learning process per shape set, one server state for all.

Most algorithms have a single process. Federated pruning sends clients a model whose shapes
change with the sparsity level and phase, and a TFF computation is typed by shapes, so it
builds one process per shape set (a *stage*). Where two consecutive stages have different
server state types (pruning's fine-tuning phase keeps only the reduced model on the server),
`convert_state` carries the state across the boundary; the program state saved after a round has
that round's stage's type, so a resumed run loads it with that stage's structure
(`state_structure`). The program caches stages by key and reports the time to build each.
"""

import dataclasses
from typing import Any, Callable, Hashable, Optional

import tensorflow_federated as tff

ModelFn = Callable[[], tff.learning.models.VariableModel]


@dataclasses.dataclass
class Stage:
  """One process and the model its clients train (what evaluation and the final model use)."""

  key: Hashable
  train_process: tff.learning.templates.LearningProcess
  model_config: dict[str, Any]
  model_fn: ModelFn
  # state -> ModelWeights of `model_config` (the model as clients hold it).
  model_weights: Callable[[Any], Any]
  _eval_process: Optional[tff.learning.templates.LearningProcess] = None

  @property
  def eval_process(self) -> tff.learning.templates.LearningProcess:
    if self._eval_process is None:
      self._eval_process = tff.learning.algorithms.build_fed_eval(self.model_fn)
    return self._eval_process


class StagedTraining:
  """The stages of a run; the base class is the single-process case."""

  def __init__(self, process: tff.learning.templates.LearningProcess,
               model_config: dict[str, Any], model_fn: ModelFn):
    self._stage = Stage('all rounds', process, model_config, model_fn,
                        process.get_model_weights)

  def stage_key(self, round_num: int) -> Hashable:
    del round_num
    return self._stage.key

  def build_stage(self, key: Hashable) -> Stage:
    del key
    return self._stage

  def initial_state(self, stage: Stage, initial_model_weights=None):
    """The server state before round 1, optionally from given model weights."""
    process = stage.train_process
    state = process.initialize()
    if initial_model_weights is not None:
      state = process.set_model_weights(state, initial_model_weights)
    return state

  def state_structure(self, stage: Stage):
    """A value with the structure of `stage`'s server state (to load saved program state)."""
    return stage.train_process.initialize()

  def convert_state(self, state, from_stage: Stage, to_stage: Stage):
    """The state `to_stage`'s process continues from, after `from_stage`'s last round."""
    del from_stage, to_stage
    return state

  def initial_evaluation_stage(self, first_stage: Stage) -> Stage:
    """The stage whose model is evaluated before the first round (the starting model), given
    the stage of round 1."""
    return first_stage
