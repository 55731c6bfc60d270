"""Which tensors are alive at a step's memory peak, read from TF's profiler.

With TF's BFC allocator (`client_step.ALLOCATOR_ENV`) and the profiler's host tracer on, every
allocation and deallocation is a trace event carrying the op that made it, the size asked
for and the allocator's bytes in use after it. Replaying them in order finds the moment the
allocator peaked and the allocations alive then, grouped by op (`group_op`: the numeric
suffixes TF and Keras add, and block indices, are folded, so "the same tensor in every
Conformer block" shows as one row with a count).

Only allocations made during the traced call are seen: what the allocator held before it
(parameters, buffers of earlier steps) is not listed, and an update that replaces a
variable's buffer shows as a new allocation while the old buffer's release lowers the
peak. Buffers XLA-compiled functions allocate carry no op name ("(unnamed)").

This is how the rematerialized step's dropout masks were found to be held from the forward
pass to the backward pass (`conformer.SeededDropout`).
"""

import collections
import dataclasses
import glob
import os
import re
import tempfile
from typing import Any, Callable, Iterable

ALLOCATION, DEALLOCATION = 'MemoryAllocation', 'MemoryDeallocation'


@dataclasses.dataclass(frozen=True)
class Event:
  kind: str  # ALLOCATION or DEALLOCATION.
  address: int
  requested_bytes: int
  bytes_in_use: int  # The allocator's total after this event.
  op: str


def group_op(op: str) -> str:
  """An op name with the per-instance parts folded: `block_07/seeded_dropout_43/Cast` ->
  `block_*/seeded_dropout/Cast`."""
  op = op or '(unnamed)'
  op = re.sub(r'block_\d+', 'block_*', op)
  return re.sub(r'_\d+(?=/|$)', '', op)


def live_at_peak(events: Iterable[Event]) -> tuple[int, dict[str, tuple[int, int]]]:
  """The allocator's peak bytes in use over `events` (in time order) and the allocations alive
  at that moment by `group_op`: {group: (requested bytes, count)}."""
  live: dict[int, Event] = {}
  peak, at_peak = -1, {}
  for event in events:
    if event.kind == ALLOCATION:
      live[event.address] = event
    else:
      live.pop(event.address, None)
    if event.bytes_in_use > peak:
      peak, at_peak = event.bytes_in_use, dict(live)
  groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for event in at_peak.values():
    entry = groups[group_op(event.op)]
    entry[0] += event.requested_bytes
    entry[1] += 1
  return max(peak, 0), {k: (v[0], v[1]) for k, v in groups.items()}


def top_groups(groups: dict[str, tuple[int, int]], top: int) -> list[dict[str, Any]]:
  """The `top` largest groups, largest first, as JSON-able rows."""
  rows = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))[:top]
  return [{'op': op, 'bytes': size, 'count': count} for op, (size, count) in rows]


def _events_from_xspace(path: str) -> list[Event]:
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  timed = []
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
    for line in plane.lines:
      for event in line.events:
        kind = names.get(event.metadata_id)
        if kind not in (ALLOCATION, DEALLOCATION):
          continue
        stats = {}
        for stat in event.stats:
          which = stat.WhichOneof('value')
          value = getattr(stat, which) if which else None
          stats[stat_names.get(stat.metadata_id)] = (
              stat_names.get(value) if which == 'ref_value' else value)
        timed.append((line.timestamp_ns * 1000 + event.offset_ps, Event(
            kind, int(stats.get('addr', 0)), int(stats.get('requested_bytes', 0)),
            int(stats.get('bytes_allocated', 0)), str(stats.get('tf_op') or ''))))
  timed.sort(key=lambda item: item[0])
  return [event for _, event in timed]


def trace_allocations(call: Callable[[], Any]) -> list[Event]:
  """Runs `call()` under TF's profiler and returns its allocator events in time order (empty
  where the allocator emits none: TF's default CPU allocator does not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(
        logdir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))
    try:
      call()
    finally:
      tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
    return _events_from_xspace(paths[0]) if paths else []
