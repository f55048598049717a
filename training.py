"""The bookkeeping of a training loop, out of the reading path of the stages' methods: one `TrainingLog`,
made once before the loop, and one `log.step(step, losses, **watched)` call at the end of each step.

Made, it resumes from the stage's partial state when there is one (`log.start` is the step to go on
from: model, optimiser and random states restored by `artifacts.resume_partial`). Each step it

- refuses a NaN/inf loss with one line (naming the partial state kept, if any), before anything is saved;
- every `every` steps and at the last one: appends the step, the losses and the watched values to
  `log.history` (what the stages save as their artifact's `history`), writes each as a TensorBoard scalar
  `<tag><name>`, and shows them beside the progress bar;
- every `save_every` steps (before the last), when the stage keeps a partial state: writes it with
  `artifacts.save_partial` (states, step, history, random states).

`log.close()` ends the TensorBoard file once the stage has written what it adds after the loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import artifacts


def as_float(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else value


class TrainingLog:
    def __init__(self, who: str, tb_dir: str | Path, steps: int, tag: str, every: int = 25, progress: bool = True,
                 partial: str | Path | None = None, partial_format: str = "", settings: dict | None = None,
                 made_from: dict | None = None, states: dict | None = None, save_every: int = 0):
        """who: the stage, as its messages name it; tb_dir: its TensorBoard directory; steps: the loop's length;
        tag: the prefix of its TensorBoard tags. With `partial` (a path): the resumable state, in
        `partial_format`, of `states` ({name: module, optimiser or scheduler}), made with `settings` from
        `made_from`, written every `save_every` steps."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.who, self.steps, self.tag, self.every = who, steps, tag, every
        self.partial, self.partial_format, self.settings, self.made_from = partial, partial_format, settings, made_from
        self.states, self.save_every = states, save_every
        self.start, history = (artifacts.resume_partial(partial, partial_format, settings, made_from, states, who)
                               if partial is not None else (0, None))
        self.history = history or {}
        self.last_saved = self.start or None  # the step of the state in the partial file, if any
        self.writer = SummaryWriter(str(tb_dir))
        self.bar = tqdm(total=steps, initial=self.start, disable=not progress, desc=who)

    def step(self, step: int, losses: dict, **watched) -> None:
        """After step `step`'s update: `losses` ({name: tensor or float}) are checked to be finite; they and
        `watched` (numbers to follow, never checked; a callable is evaluated only on the steps that log) are
        logged."""
        values = {k: as_float(v) for k, v in losses.items()}
        if not all(math.isfinite(v) for v in values.values()):
            kept = (f"kept the state of step {self.last_saved} in {self.partial}" if self.last_saved is not None
                    else "no state was saved")
            raise SystemExit(f"error: {self.who}: a loss became NaN/inf at step {step} ("
                             + ", ".join(f"{k} {v}" for k, v in values.items()) + f"); {kept}")
        if step % self.every == 0 or step == self.steps - 1:
            values |= {k: as_float(v() if callable(v) else v) for k, v in watched.items()}
            self.history.setdefault("step", []).append(step)
            for k, v in values.items():
                self.history.setdefault(k, []).append(v)
                self.writer.add_scalar(self.tag + k, v, step)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self.bar.update(1)
        if step == self.steps - 1:
            self.bar.close()
        if self.partial is not None and (step + 1) % self.save_every == 0 and step + 1 < self.steps:
            artifacts.save_partial(self.partial, self.partial_format, step + 1, self.settings, self.made_from,
                                   self.states, self.history)
            self.last_saved = step + 1

    def close(self, scalars: dict | None = None) -> None:
        """Write `scalars` ({tag: number}, no step: what the stage measures after the loop) and end the file."""
        for k, v in (scalars or {}).items():
            self.writer.add_scalar(k, v)
        self.bar.close()
        self.writer.close()
