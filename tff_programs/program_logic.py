"""Program logic of federated training: rounds, resumption, evaluation and releases.

Shaped like TFF's own program logic (`tff.learning.programs`): it depends only on the learning
process (of each stage, see `fl_compression.learning.stages`), data, a program state manager and release managers, so the same logic runs on every
backend. Each round saves `(state, round)` through the program state manager, so a run killed
at any point and started again resumes after the last saved round and loses nothing.
"""

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.learning import stages


@dataclasses.dataclass(frozen=True)
class ClientSampler:
  """Chooses each round's clients from the round number alone (no hidden state to resume)."""

  client_ids: tuple[str, ...]
  clients_per_round: int
  seed: int

  def __post_init__(self):
    if not 0 < self.clients_per_round <= len(self.client_ids):
      raise ValueError(f'must be between 1 and {len(self.client_ids)}, the number of '
                       'training clients')

  def sample(self, round_num: int) -> list[str]:
    rng = np.random.default_rng([self.seed, round_num])
    chosen = rng.choice(len(self.client_ids), size=self.clients_per_round, replace=False)
    return [self.client_ids[i] for i in chosen]


@dataclasses.dataclass
class TrainingResult:
  """What a finished run reports: last train/eval metrics and per-round cost averages."""

  rounds: int
  resumed_from_round: int
  train_metrics: dict[str, Any]
  eval_metrics: dict[str, Any]
  mean_round_seconds: Optional[float]
  # The evaluation of the starting model, when this run started at round 0.
  initial_eval_metrics: Optional[dict[str, Any]] = None
  # Speech tasks: per split, the word errors of each utterance (`UtteranceErrors.as_dict`) in
  # the last evaluation and in that of the starting model.
  utterance_errors: Optional[dict[str, Any]] = None
  initial_utterance_errors: Optional[dict[str, Any]] = None


def eval_round_metrics(eval_output_metrics) -> Any:
  """The current-round evaluation metrics inside `build_fed_eval`'s measurement structure."""
  return eval_output_metrics['client_work']['eval']['current_round_metrics']


async def train_model(
    *,
    training: stages.StagedTraining,
    task: tasks.Task,
    sampler: ClientSampler,
    total_rounds: int,
    evaluation_period: int,
    program_state_manager: tff.program.ProgramStateManager,
    train_metrics_manager: tff.program.ReleaseManager,
    evaluation_metrics_manager: Optional[tff.program.ReleaseManager],
    model_output_manager: tff.program.ReleaseManager,
    initial_model_weights: Optional[tff.learning.models.ModelWeights] = None,
    utterance_errors_manager: Optional[tff.program.ReleaseManager] = None,
    signature_fn: Optional[Callable[[Any, dict], Optional[dict]]] = None,
    evaluate_clients: bool = True,  # False: no federated evaluation (transcripts still scored).
    evaluate_initial: bool = True,
    transcription_splits: Optional[Sequence[str]] = None,
    on_evaluation: Optional[Callable[[int, dict, Any, dict], None]] = None,
) -> TrainingResult:
  """Trains for `total_rounds`, resuming from the latest saved program state if any.

  Each round runs the process of its stage (`training.stage_key(round)`); stages are built
  once and cached, and the build time of a new stage is released with its first round as
  `stage_build_seconds` (round times exclude it). Where the stage changes between rounds,
  `training.convert_state` carries the state over (e.g. to a smaller server model). Train metrics are released every round
  (key = round number) with `round_time_seconds` added; evaluation on all held-out clients
  before the first round (key 0, the starting model), every `evaluation_period` rounds and after
  the last round; the final model once, with key `total_rounds`, as
  `(model_config, weights)` of the model clients hold. Speech tasks release the word errors
  of every evaluated utterance (per split) to `utterance_errors_manager` with the evaluation's
  key, for paired comparisons. With `signature_fn(weights, model_config)`, every evaluation also
  releases what it returns (the numerical signatures of layer importance) as `signature`. A new
  run starts from
  `initial_model_weights` when given (e.g. a pretrained model); a resumed run from its state.
  `evaluate_initial=False` skips the evaluation of the starting model (e.g. when many runs
  share it). `transcription_splits` restricts the transcribed splits (e.g. dev only, when
  test is transcribed once for the round dev selects); `on_evaluation(round, model_config,
  weights, metrics)` sees each evaluated model after its metrics are released.
  """
  built: dict[Any, stages.Stage] = {}

  def stage_for(round_num: int) -> tuple[stages.Stage, float]:
    key = training.stage_key(round_num)
    if key in built:
      return built[key], 0.0
    started = time.monotonic()
    built[key] = training.build_stage(key)
    return built[key], time.monotonic() - started

  versions = await program_state_manager.get_versions()
  if versions:
    # The state saved after round r has the type of round r's stage.
    saved_round = max(versions)
    stage, unreported_build_seconds = stage_for(max(saved_round, 1))
    state, start_round = await program_state_manager.load(
        saved_round, (training.state_structure(stage), 0))
    start_round = int(start_round)
  else:
    stage, unreported_build_seconds = stage_for(1)
    state, start_round = training.initial_state(stage, initial_model_weights), 0
  if start_round > total_rounds:
    raise ValueError(f'the saved program state is at round {start_round}, past the requested '
                     f'{total_rounds} rounds')

  eval_datasets = [task.eval_dataset(c) for c in task.eval_data.client_ids]

  utterance_errors: dict[int, dict[str, Any]] = {}

  async def evaluate(round_num: int, stage: stages.Stage) -> dict[str, Any]:
    metrics = {}
    weights = stage.model_weights(state)
    if evaluate_clients:
      eval_process = stage.eval_process
      eval_state = eval_process.set_model_weights(eval_process.initialize(), weights)
      output = eval_process.next(eval_state, eval_datasets)
      metrics['eval'] = await tff.program.materialize_value(eval_round_metrics(output.metrics))
    if task.transcription_eval is not None:
      weights = await tff.program.materialize_value(weights)
      rates = (task.transcription_eval(weights, stage.model_config, transcription_splits)
               if transcription_splits else task.transcription_eval(weights, stage.model_config))
      metrics['transcription'] = {split: r.as_dict() for split, r in rates.items()}
      utterance_errors[round_num] = {split: r.utterances.as_dict() for split, r in rates.items()}
      if utterance_errors_manager is not None:
        await utterance_errors_manager.release(utterance_errors[round_num], key=round_num)
    if signature_fn is not None:
      found = signature_fn(await tff.program.materialize_value(weights), stage.model_config)
      if found:
        metrics['signature'] = found
    if metrics and evaluation_metrics_manager is not None:
      await evaluation_metrics_manager.release(metrics, key=round_num)
    if on_evaluation is not None:
      on_evaluation(round_num, stage.model_config,
                    await tff.program.materialize_value(weights), metrics)
    return metrics

  train_metrics: dict[str, Any] = {}
  eval_metrics: dict[str, Any] = {}
  initial_eval_metrics = None
  if start_round == 0 and evaluate_initial:
    # The starting point (e.g. a pretrained model), released with key 0.
    initial_eval_metrics = await evaluate(0, training.initial_evaluation_stage(stage))
  round_times = []
  for round_num in range(start_round + 1, total_rounds + 1):
    next_stage, build_seconds = stage_for(round_num)
    if next_stage.key != stage.key:
      state = training.convert_state(state, stage, next_stage)
    stage = next_stage
    # The first stage is built before the loop; its time goes with this invocation's first round.
    build_seconds, unreported_build_seconds = build_seconds + unreported_build_seconds, 0.0
    started = time.monotonic()
    client_datasets = [task.train_dataset(c, round_num) for c in sampler.sample(round_num)]
    output = stage.train_process.next(state, client_datasets)
    state = output.state
    metrics = await tff.program.materialize_value(output.metrics)
    round_seconds = time.monotonic() - started
    round_times.append(round_seconds)
    train_metrics = {**metrics, 'round_time_seconds': round_seconds,
                     'stage_build_seconds': build_seconds}
    await train_metrics_manager.release(train_metrics, key=round_num)
    if round_num % evaluation_period == 0 or round_num == total_rounds:
      eval_metrics = await evaluate(round_num, stage)
    await program_state_manager.save((state, round_num), version=round_num)

  if start_round >= total_rounds:
    stage, _ = stage_for(total_rounds)
    eval_metrics = await evaluate(total_rounds, stage)
  await model_output_manager.release((stage.model_config, stage.model_weights(state)),
                                     key=total_rounds)
  return TrainingResult(
      rounds=total_rounds, resumed_from_round=start_round, train_metrics=train_metrics,
      eval_metrics=eval_metrics,
      mean_round_seconds=float(np.mean(round_times)) if round_times else None,
      initial_eval_metrics=initial_eval_metrics,
      utterance_errors=utterance_errors.get(total_rounds),
      initial_utterance_errors=utterance_errors.get(0) if initial_eval_metrics else None)
