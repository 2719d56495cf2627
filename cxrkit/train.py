"""The training loop shared by every model cxrkit trains: one readable Accelerate loop.

It is model-agnostic: a model family supplies the model, a loss function (or several
:class:`Phase` objects, for alternating updates such as a GAN's), a training data source and,
optionally, a validation function and a way to save the model; :func:`train` supplies the rest
(DESIGN.md §6, STYLE.md rule 40):

- seeded, exactly resumable data order: sample ``n`` of the run (``n = step·batch + …``) is drawn
  from generators seeded by ``(seed, n)``, so the data a step sees depends on neither the number
  of processes nor on whether the run was interrupted;
- ``accelerate launch`` for several processes: each takes its slice of every global batch and DDP
  averages the gradients, so the loss trajectory equals the one-process run with the same global
  batch;
- one optimizer per phase: each step runs the phases in order on the same batch, each updating
  only its own parameters (a GAN: discriminator step on detached fakes, then generator step);
  a plain loss function is one phase over all parameters with AdamW;
- mixed precision, gradient accumulation, gradient clipping, linear warm-up, EMA;
- checkpoints every N steps (``accelerator.save_state``, so every optimizer's state, plus the EMA
  as safetensors), the last K
  kept, ``resume="latest"``;
- validation every N steps on the main process, progress through ``on_log`` and logging (the
  library never prints);
- at the end, the model directory (written by the family's ``save_model``) and ``run.json``.
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
from torch import nn

from cxrkit import __version__
from cxrkit.device import accelerate_local_rank, resolve_device
from cxrkit.errors import InputError, ModelError

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, torch.Tensor], Sequence[torch.Generator]], torch.Tensor]
"""``(model, batch, generators) → scalar loss``; one CPU generator per sample of the batch."""

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,  # decoupled weight decay (Loshchilov & Hutter 2019)
    "adam": torch.optim.Adam,  # L2 penalty in the gradient, as MUNIT and most GAN code use
}
CHECKPOINTS = "checkpoints"


class TrainData(Protocol):
    """A source of training samples: ``sample(generator)`` → one sample (tensors, no batch dim)."""

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Phase:
    """One update of each training step, with its own loss, parameters and optimizer.

    Several phases make alternating updates: each step runs them in order on the same batch, and
    a phase's optimizer moves only the parameters ``parameters`` selects. Gradients its loss puts
    on other parameters (a generator's loss goes through the discriminator) are dropped.

    Attributes:
        name: what progress reports call it (``loss/<name>``).
        loss: see :data:`LossFn`.
        parameters: ``unwrapped model → parameters`` this phase updates; the phases' sets must
            be disjoint.
        lr: peak learning rate (None: ``TrainConfig.lr``); warm-up scales it.
        weight_decay: None: ``TrainConfig.weight_decay``.
        betas: Adam's (β1, β2).
        optimizer: a key of :data:`OPTIMIZERS`.
    """

    name: str
    loss: LossFn
    parameters: Callable[[nn.Module], Iterable[nn.Parameter]]
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {tuple(OPTIMIZERS)}, not "
                             f"{self.optimizer!r}")

    def settings(self) -> dict[str, Any]:
        """The optimizer settings, for ``run.json``."""
        return {"name": self.name, "optimizer": self.optimizer, "lr": self.lr,
                "weight_decay": self.weight_decay, "betas": list(self.betas)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (written to ``run.json``).

    Attributes:
        output_dir: the model directory to write; checkpoints go to ``output_dir/checkpoints``.
        steps: optimizer steps.
        batch_size: global samples per optimizer step (over all processes and accumulation).
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate (of every phase that does not set its own).
        warmup_steps: linear learning-rate warm-up.
        lr_schedule: after the warm-up, ``constant`` or ``cosine`` (half a cosine from the peak
            to 0 at the last step, Loshchilov & Hutter 2017).
        weight_decay: weight decay (of every phase that does not set its own).
        max_grad_norm: gradient clipping norm (0 disables).
        ema_decay: EMA decay of the weights (0 disables); validation and the saved model use it.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` autocast.
        checkpoint_every: steps between checkpoints (0 disables).
        keep_checkpoints: how many checkpoints to keep.
        validate_every: steps between validations (0: only at the end).
        log_every: steps between progress reports.
        seed: the seed of the initial weights (family's) and of the data order.
        resume: ``latest``, a checkpoint folder, or None to start afresh.
        num_workers: data-loader worker processes.
        cpu: force the CPU even where CUDA is present (as ``device="cpu"``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see
            :func:`cxrkit.device.resolve_device`); under ``accelerate launch`` each process uses
            its own accelerator.
        time_limit_s: stop cleanly after the first step that ends this many seconds after the
            loop began (0: no limit), as on SIGTERM: see :func:`train`.
        stop_at_step: stop cleanly after this step (0: run all ``steps``), as at the time limit;
            the learning-rate schedule and data order stay those of ``steps``, so a run stopped
            here and resumed equals one run of ``steps`` (a step quota per batch job, or the
            exact replay of a run that a time limit stopped).
    """

    output_dir: str
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 500
    log_every: int = 10
    seed: int = 0
    resume: str | None = None
    num_workers: int = 0
    cpu: bool = False
    device: str = "auto"
    time_limit_s: float = 0.0
    stop_at_step: int = 0

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"mixed precision must be one of {MIXED_PRECISION}")
        if min(self.steps, self.batch_size, self.grad_accum) < 1 or self.lr <= 0:
            raise InputError("steps, batch size and grad accumulation must be ≥ 1, lr > 0")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"ema decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.time_limit_s >= 0:
            raise InputError(f"time limit must be ≥ 0 seconds, got {self.time_limit_s}")
        if not self.stop_at_step >= 0:
            raise InputError(f"stop step must be ≥ 0, got {self.stop_at_step}")
        from cxrkit.device import check_device_name

        object.__setattr__(self, "device", check_device_name(self.device))

    def lr_factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return warm
        span = max(1, self.steps - self.warmup_steps)
        return warm * 0.5 * (1 + math.cos(math.pi * (step - self.warmup_steps) / span))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (EMA weights when EMA is on), unwrapped, on the training device.
        losses: mean training loss of each step run in this call, in order (with several
            phases, the sum of the phases' losses).
        phase_losses: each phase's mean loss of each step, by phase name.
        metrics: the last validation metrics (empty without validation).
        history: every validation, as ``{"step": …, **metrics}``.
        steps_done: optimizer steps reached (``config.steps`` unless stopped early).
        stopped: why the run stopped before ``config.steps`` (``time limit``, ``SIGTERM``,
            ``SIGINT``), or None.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    phase_losses: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    steps_done: int = 0
    stopped: str | None = None


ModelT = TypeVar("ModelT", bound=nn.Module)


def unwrap_model(model: nn.Module, expected: type[ModelT]) -> ModelT:
    """The ``expected`` model inside ``model``: itself, or the module a DDP wrapper holds.

    Every family's loss and save function takes the (possibly wrapped) model the loop passes and
    unwraps it with this.

    Raises:
        ModelError: the model inside is not an ``expected``.
    """
    inner = getattr(model, "module", model)
    if not isinstance(inner, expected):
        name = expected.__name__
        article = "an" if name[:1].lower() in "aeiou" else "a"
        raise ModelError(f"expected {article} {name}, got {type(inner).__name__}")
    return inner


def run_finished(folder: str | Path) -> bool:
    """Whether :func:`train` wrote ``folder`` at the end of its steps: a ``run.json`` without
    ``stopped`` (a run stopped early by a time limit or signal is not finished)."""
    path = Path(folder) / "run.json"
    return path.is_file() and json.loads(path.read_text()).get("stopped") is None


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay.

    ``decay_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs still average.

    Only the trainable parameters are averaged: frozen ones (``requires_grad=False``, e.g. the
    backbone under a LoRA adapter) are shared with the live model, not copied, and left out of
    :meth:`state_dict` (so a checkpoint's EMA holds only what trains).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.shared = {n for n, p in model.named_parameters() if not p.requires_grad}
        memo = {id(p): p for p in model.parameters() if not p.requires_grad}  # not copied
        self.model = copy.deepcopy(model, memo).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, new in zip(self.model.parameters(), model.parameters(), strict=True):
            if avg is not new:  # a frozen parameter is shared, nothing to average
                avg.lerp_(new.detach().to(avg.dtype), 1 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Averaged weights and update count, as tensors (saved with safetensors)."""
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()
                 if k not in self.shared}
        return {**state, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`."""
        state = dict(state)
        self.updates = int(state.pop("__updates__"))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - self.shared:
            raise ModelError(f"the checkpoint's EMA does not fit the model (missing "
                             f"{sorted(set(missing) - self.shared)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]})")


def train(
    model: nn.Module,
    loss_fn: LossFn | Sequence[Phase],
    data: TrainData,
    config: TrainConfig,
    *,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    save_model: Callable[[nn.Module, Path], None] | None = None,
    run_info: dict[str, Any] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on samples of ``data`` by minimising ``loss_fn``.

    Args:
        model: the module to train (its initial weights must already be seeded).
        loss_fn: see :data:`LossFn`: one update of all parameters per step with AdamW
            (``config.lr``, ``config.weight_decay``); or the :class:`Phase` objects of
            alternating updates.
        data: see :class:`TrainData`.
        config: the run's settings.
        validate: ``model → metrics`` on held-out data, run on the main process with the EMA
            weights every ``validate_every`` steps and at the end.
        save_model: ``(model, folder)`` writes the family's model files into ``folder``.
        run_info: extra ``run.json`` content (``command``, ``data`` hashes, family settings).
        on_log: receives ``{"step", "loss", "lr", "elapsed_s"}`` (with several phases also
            ``loss/<name>`` per phase) and validation metrics (``val/…``) on the main process.

    A clean early stop (``config.time_limit_s`` passed, or SIGTERM or SIGINT received, as a
    batch scheduler sends before its wall-time kill) ends the loop after the current step on
    every process. The run then saves a checkpoint there, validates, and writes the model
    directory as at the end; ``run.json`` says ``stopped`` and ``steps_done``. ``resume="latest"``
    with the same config continues to ``config.steps`` as if never stopped.

    Returns:
        The trained model and the losses and metrics of this call.

    Raises:
        InputError: a batch that does not split over the processes, nothing to resume, or
            phases that share parameters.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # ---- set-up ----------------------------------------------------------------------------
    phases = _resolve_phases(loss_fn, config)
    target = resolve_device("cpu" if config.cpu else config.device)  # DeviceError if absent
    if target.type == "cuda" and accelerate_local_rank() is None:
        torch.cuda.set_device(target)  # one process: accelerate's "cuda" is the current device
    # cpu=True without CUDA: accelerate only forms a multi-process CPU (gloo) group when asked.
    # With several phases each backward reaches only some parameters (the discriminator step
    # never reaches the generator), which DDP must be told.
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, cpu=target.type != "cuda",
        gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(
            broadcast_buffers=False, find_unused_parameters=len(phases) > 1)])
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = config.batch_size // (config.grad_accum * world)
    if micro * config.grad_accum * world != config.batch_size:
        raise InputError(f"batch size {config.batch_size} does not split into {config.grad_accum}"
                         f" accumulation steps × {world} processes")
    out = Path(config.output_dir)
    ckpt_root = out / CHECKPOINTS
    report = on_log if (on_log and accelerator.is_main_process) else (lambda _: None)

    # ---- model, one optimizer per phase, EMA -----------------------------------------------
    groups = _phase_parameters(model, phases)
    optimizers = [OPTIMIZERS[p.optimizer](params, lr=p.lr, betas=p.betas,
                                          weight_decay=p.weight_decay)
                  for p, params in zip(phases, groups, strict=True)]
    model, *optimizers = accelerator.prepare(model, *optimizers)
    ema = EMA(accelerator.unwrap_model(model), config.ema_decay) if config.ema_decay else None
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if frozen:  # a frozen backbone (under adapters) is not written into checkpoints
        accelerator.register_save_state_pre_hook(functools.partial(_drop_frozen, frozen))

    # ---- resume ------------------------------------------------------------------------------
    start = 0
    if config.resume:
        folder = _find_checkpoint(ckpt_root, config.resume)
        accelerator.load_state(str(folder), **({"strict": False} if frozen else {}))
        start = json.loads((folder / "trainer_state.json").read_text())["step"]
        if ema is not None:
            from safetensors.torch import load_file

            ema.load_state_dict(load_file(folder / "ema.safetensors"))
        log.info("resumed from %s at step %d", folder, start)

    # ---- data: sample n of the run comes from (seed, n); this process takes its slice -------
    loader = torch.utils.data.DataLoader(
        _Samples(data, config.seed), batch_size=micro, num_workers=config.num_workers,
        sampler=_slice_indices(start, config.steps, config.batch_size, config.grad_accum,
                               world, rank),
        collate_fn=_collate)
    batches = iter(loader)

    # ---- the loop ----------------------------------------------------------------------------
    result = TrainResult(model=accelerator.unwrap_model(model), steps_done=start)
    result.phase_losses = {p.name: [] for p in phases}
    began = time.monotonic()
    model.train()
    end = config.steps
    if config.stop_at_step and start >= config.stop_at_step and start < config.steps:
        end = start  # resumed at (or past) the quota: no step; the model is the checkpoint's
        result.stopped = f"step {config.stop_at_step}"
    with _StopSignals() as signals:
        for step in range(start, end):
            warm = config.lr_factor(step)
            micro_batches = []  # this step's micro-batches, seen by every phase
            for _ in range(config.grad_accum):
                batch, seeds = next(batches)
                micro_batches.append(({k: v.to(accelerator.device) for k, v in batch.items()},
                                      [torch.Generator().manual_seed(s) for s in seeds]))
            step_losses = torch.zeros(len(phases), device=accelerator.device)
            for i, (phase, optimizer, params) in enumerate(zip(phases, optimizers, groups,
                                                               strict=True)):
                for group in optimizer.param_groups:
                    group["lr"] = cast(float, phase.lr) * warm
                for batch, generators in micro_batches:
                    with accelerator.accumulate(model):
                        with accelerator.autocast():
                            loss = phase.loss(model, batch, generators)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(params, config.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    step_losses[i] += loss.detach().float() / config.grad_accum
                if len(phases) > 1:  # drop what this loss put on other phases' parameters
                    model.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            # one all-reduce per step: the phases' losses and whether any process must stop
            reason = signals.received or (
                "time limit" if config.time_limit_s
                and time.monotonic() - began >= config.time_limit_s
                else f"step {config.stop_at_step}" if step + 1 == config.stop_at_step else None)
            flags = torch.tensor([reason is not None, reason == "time limit"],
                                 dtype=step_losses.dtype, device=step_losses.device)
            *mean_losses, stop, timed = accelerator.reduce(
                torch.cat([step_losses, flags]), reduction="mean").tolist()
            result.steps_done = step + 1
            if stop > 0 and result.steps_done < config.steps:
                result.stopped = reason or ("time limit" if timed > 0 else "signal")
            for phase, value in zip(phases, mean_losses, strict=True):
                result.phase_losses[phase.name].append(value)
            mean_loss = float(sum(mean_losses))
            result.losses.append(mean_loss)
            done = result.steps_done
            if done % config.log_every == 0 or done == config.steps:
                per_phase = ({f"loss/{p.name}": v
                              for p, v in zip(phases, mean_losses, strict=True)}
                             if len(phases) > 1 else {})
                report({"step": done, "loss": mean_loss, **per_phase, "lr": config.lr * warm,
                        "elapsed_s": time.monotonic() - began})

            # ---- validation and checkpoints ------------------------------------------------
            if validate and config.validate_every and done % config.validate_every == 0 \
                    and done < config.steps:
                current = ema.model if ema else accelerator.unwrap_model(model)
                _validate(accelerator, validate, current, done, result, report)
                model.train()
            if result.stopped is not None:  # a checkpoint to resume from, then the model
                _save_checkpoint(accelerator, ckpt_root, done, ema, config.keep_checkpoints)
                log.warning("stopped at step %d of %d (%s); --resume latest continues", done,
                            config.steps, result.stopped)
                break
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                _save_checkpoint(accelerator, ckpt_root, done, ema, config.keep_checkpoints)

    # ---- the model directory -----------------------------------------------------------------
    final = ema.model if ema is not None else accelerator.unwrap_model(model)
    result.model = final
    if validate:
        _validate(accelerator, validate, final, result.steps_done, result, report)
    if accelerator.is_main_process:
        if save_model is not None:
            save_model(final, out)
        info = {"phases": [p.settings() for p in phases]} if len(phases) > 1 else {}
        _write_run_json(out, config, world, result, {**info, **(run_info or {})},
                        seconds=time.monotonic() - began, start=start)
    accelerator.wait_for_everyone()
    # Not accelerator.end_training(): it destroys the process group, and a caller may train
    # again in the same processes (DDPM-LQ's two stages). The group ends with the process.
    _destroy_process_group_at_exit()
    return result


# ---- helpers (the loop above reads without them) ------------------------------------------------


class _StopSignals:
    """While active, SIGTERM and SIGINT set :attr:`received` (the signal's name) instead of
    ending the process, so the loop can stop cleanly; the previous handlers come back on exit.
    Outside the main thread (where handlers cannot be set) it does nothing."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now, the usual way
            self.__exit__()
            signal.raise_signal(number)
            return
        self.received = signal.Signals(number).name

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


@functools.cache
def _destroy_process_group_at_exit() -> None:
    """Destroy the distributed process group (if any) once, when the interpreter exits."""
    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def _resolve_phases(loss_fn: LossFn | Sequence[Phase], config: TrainConfig) -> list[Phase]:
    """The phases with their learning rate and weight decay filled in from ``config``; a plain
    loss function is one AdamW phase over all parameters."""
    if callable(loss_fn):
        return [Phase("loss", loss_fn, lambda m: m.parameters(), config.lr, config.weight_decay)]
    phases = list(loss_fn)
    if not phases or len({p.name for p in phases}) != len(phases):
        raise InputError("give at least one training phase, each with its own name")
    return [replace(p, lr=config.lr if p.lr is None else p.lr,
                    weight_decay=config.weight_decay if p.weight_decay is None
                    else p.weight_decay) for p in phases]


def _phase_parameters(model: nn.Module, phases: Sequence[Phase]) -> list[list[nn.Parameter]]:
    """Each phase's parameters, checked to be disjoint and non-empty."""
    groups = [list(p.parameters(model)) for p in phases]
    seen: set[int] = set()
    for phase, params in zip(phases, groups, strict=True):
        ids = {id(q) for q in params}
        if not ids or ids & seen:
            raise InputError(f"training phase {phase.name!r} has no parameters of its own")
        seen |= ids
    return groups


class _Samples(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Sample ``n`` of the run: ``data.sample`` seeded by ``(seed, n)``, and the seed of the
    torch generator the loss draws that sample's noise from."""

    def __init__(self, data: TrainData, seed: int) -> None:
        self.data, self.seed = data, seed

    def __getitem__(self, n: int) -> tuple[dict[str, torch.Tensor], int]:
        numpy_seq, torch_seq = np.random.SeedSequence([self.seed, n]).spawn(2)
        sample = self.data.sample(np.random.default_rng(numpy_seq))
        return sample, int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def __len__(self) -> int:  # the run is defined by steps, not epochs
        return sys.maxsize


def _slice_indices(start: int, steps: int, batch: int, accum: int, world: int,
                   rank: int) -> Iterator[int]:
    """Global sample numbers this process draws, from optimizer step ``start`` on.

    Step ``s`` uses samples ``s·batch … s·batch + batch - 1``: ``accum`` consecutive micro-batches,
    each split into ``world`` consecutive slices, of which this process takes slice ``rank``.
    """
    micro = batch // (accum * world)
    for s in range(start, steps):
        for m in range(accum):
            first = s * batch + (m * world + rank) * micro
            yield from range(first, first + micro)


def _collate(items: list[tuple[dict[str, torch.Tensor], int]]
             ) -> tuple[dict[str, torch.Tensor], list[int]]:
    samples = [s for s, _ in items]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}, [n for _, n in items]


def _validate(accelerator: Any, validate: Callable[[nn.Module], dict[str, float]],
              model: nn.Module, step: int, result: TrainResult,
              report: Callable[[dict[str, float]], None]) -> None:
    if accelerator.is_main_process:
        model.eval()
        with torch.no_grad():
            metrics = validate(model)
        result.metrics = dict(metrics)
        result.history.append({"step": step, **metrics})
        report({"step": step, **{f"val/{k}": v for k, v in metrics.items()}})
    accelerator.wait_for_everyone()


def _drop_frozen(frozen: set[str], models: list[nn.Module], weights: list[dict[str, Any]],
                 output_dir: str) -> None:
    """accelerate's save-state hook: the frozen parameters leave the checkpoint's weights (the
    model they belong to is loaded again before resuming)."""
    for state in weights:
        for name in frozen & set(state):
            del state[name]


def _save_checkpoint(accelerator: Any, root: Path, step: int, ema: EMA | None,
                     keep: int) -> None:
    """``root/checkpoint-<step>``, written under a temporary name and renamed when complete."""
    from safetensors.torch import save_file

    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if ema is not None:
            save_file(ema.state_dict(), tmp / "ema.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in _checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    found = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _find_checkpoint(root: Path, resume: str) -> Path:
    if resume != "latest":
        folder = Path(resume)
        if not (folder / "trainer_state.json").is_file():
            raise InputError("not a checkpoint folder", path=resume,
                             hint=f"give --resume latest or a folder under {root}")
        return folder
    found = _checkpoints(root)
    if not found:
        raise InputError("no checkpoint to resume from", path=str(root),
                         hint="drop --resume to start afresh")
    return found[-1]


def _write_run_json(out: Path, config: TrainConfig, world: int, result: TrainResult,
                    run_info: dict[str, Any], *, seconds: float, start: int) -> None:
    import accelerate

    info = {
        "cxrkit_version": __version__,
        "command": run_info.get("command", " ".join(sys.argv)),
        "config": asdict(config),
        "num_processes": world,
        "versions": {"torch": torch.__version__, "accelerate": accelerate.__version__},
        "train_seconds": round(seconds, 1),
        "resumed_at_step": start or None,
        "steps_done": result.steps_done,
        "stopped": result.stopped,
        "final_loss": result.losses[-1] if result.losses else None,
        "validation": result.metrics,
        "validation_history": result.history,
        **{k: v for k, v in run_info.items() if k != "command"},
    }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(info, indent=2, default=_json_default) + "\n"
    (out / "run.json").write_text(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
