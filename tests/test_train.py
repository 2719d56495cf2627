"""The training loop: the loss falls, resume equals an uninterrupted run, 2 processes equal 1."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.enhancer import Enhancer, EnhancerSettings, diffusion_loss
from cxrkit.errors import InputError
from cxrkit.train import Phase, TrainConfig, _slice_indices, run_finished, train

TINY = EnhancerSettings(scale=1, block_out_channels=(8, 16), unshuffle=1)


class ToyPairs:
    """16×16 smooth random images; the LQ is their gamma-1.3 version (a learnable residual)."""

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        y, x = np.mgrid[0:16, 0:16] / 15.0
        a, b, c = generator.uniform(0.2, 0.8, 3)
        hq = np.clip(a + 0.3 * np.sin(3 * b * x + 2 * c * y), 0, 1).astype(np.float32)
        return {"hq": torch.from_numpy(hq)[None], "lq_up": torch.from_numpy(hq**1.3)[None]}


def _tiny() -> Enhancer:
    return Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tiny_unet_loss_falls(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path / "m"), steps=60, batch_size=8, lr=3e-3,
                         warmup_steps=5, checkpoint_every=0, cpu=True, log_every=20)
    logs: list[dict[str, float]] = []
    result = train(_tiny(), diffusion_loss, ToyPairs(), config, on_log=logs.append,
                   save_model=lambda m, out: m.save_pretrained(out),
                   validate=lambda m: {"score": 1.0}, run_info={"command": "test"})
    first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
    assert last < 0.6 * first, (first, last)
    assert [e["step"] for e in logs if "loss" in e] == [20, 40, 60]
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["command"] == "test" and run["config"]["steps"] == 60
    assert run["validation"] == {"score": 1.0} and run["cxrkit_version"]
    Enhancer.from_pretrained(tmp_path / "m")  # the model folder loads


def test_cosine_schedule_warms_up_then_decays_to_zero(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path / "m"), steps=12, batch_size=2, lr=1e-3,
                         warmup_steps=4, lr_schedule="cosine", checkpoint_every=0, cpu=True,
                         log_every=1)
    factors = [config.lr_factor(s) for s in range(12)]
    assert factors[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]  # linear warm-up to the peak
    assert all(a > b for a, b in itertools.pairwise(factors[4:]))  # then strictly down
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))  # → 0 after the end
    assert TrainConfig(output_dir="x", warmup_steps=4).lr_factor(11) == 1.0  # constant
    with pytest.raises(InputError, match="lr schedule"):
        TrainConfig(output_dir="x", lr_schedule="linear")
    logs: list[dict[str, float]] = []
    train(_tiny(), diffusion_loss, ToyPairs(), config, on_log=logs.append)
    logged = [e["lr"] for e in logs if "lr" in e]
    assert logged == pytest.approx([1e-3 * f for f in factors])


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    def config(out: Path, steps: int, resume: str | None = None) -> TrainConfig:
        return TrainConfig(output_dir=str(out), steps=steps, batch_size=4, lr=1e-3,
                           warmup_steps=3, checkpoint_every=3, keep_checkpoints=1,
                           ema_decay=0.9, resume=resume, cpu=True, seed=7)

    whole = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "a", 8))
    train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "b", 5))  # "killed" after 5
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["checkpoint-3"]
    resumed = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "b", 8, "latest"))
    assert len(resumed.losses) == 5  # steps 4..8
    np.testing.assert_allclose(resumed.losses, whole.losses[3:], rtol=1e-6)
    for name, value in _weights(whole.model).items():  # EMA weights, which are saved
        torch.testing.assert_close(_weights(resumed.model)[name], value, atol=1e-6, rtol=0)


def test_a_time_limit_or_sigterm_stops_cleanly_and_resume_finishes_the_run(
        tmp_path: Path) -> None:
    import signal

    def config(out: Path, **extra: object) -> TrainConfig:
        return TrainConfig(output_dir=str(out), steps=6, batch_size=4, lr=1e-3, warmup_steps=2,
                           checkpoint_every=0, ema_decay=0.9, cpu=True, seed=7,
                           **extra)  # type: ignore[arg-type]

    def save(model: torch.nn.Module, folder: Path) -> None:
        model.save_pretrained(folder)  # type: ignore[operator]

    whole = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "whole"))
    # any time limit ends the run after its first step; a checkpoint and the model are written
    cut = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "cut", time_limit_s=1e-9),
                save_model=save)
    assert (cut.stopped, cut.steps_done, len(cut.losses)) == ("time limit", 1, 1)
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (run["stopped"], run["steps_done"]) == ("time limit", 1)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-1").is_dir()
    assert not run_finished(tmp_path / "cut") and run_finished(tmp_path / "whole")
    assert Enhancer.from_pretrained(tmp_path / "cut") is not None
    resumed = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "cut",
                                                                resume="latest"))
    assert (resumed.stopped, resumed.steps_done) == (None, 6)
    assert run_finished(tmp_path / "cut")  # the resumed run rewrote run.json
    np.testing.assert_allclose(resumed.losses, whole.losses[1:], rtol=1e-6)
    for name, value in _weights(whole.model).items():
        torch.testing.assert_close(_weights(resumed.model)[name], value, atol=1e-6, rtol=0)

    # a step quota stops the same way, keeping the 6-step schedule, and resuming finishes it
    quota = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "quota", stop_at_step=4),
                  save_model=save)
    assert (quota.stopped, quota.steps_done) == ("step 4", 4)
    np.testing.assert_allclose(quota.losses, whole.losses[:4], rtol=1e-6)
    assert not run_finished(tmp_path / "quota")
    again = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "quota", stop_at_step=4,
                                                              resume="latest"), save_model=save)
    assert (again.stopped, again.steps_done, again.losses) == ("step 4", 4, [])  # no step past
    for name, value in _weights(quota.model).items():
        torch.testing.assert_close(_weights(again.model)[name], value, atol=0, rtol=0)
    rest = train(_tiny(), diffusion_loss, ToyPairs(), config(tmp_path / "quota", resume="latest"))
    assert (rest.stopped, rest.steps_done) == (None, 6)
    for name, value in _weights(whole.model).items():
        torch.testing.assert_close(_weights(rest.model)[name], value, atol=1e-6, rtol=0)

    # SIGTERM during step 3 (as a batch scheduler sends it) ends the run after that step
    calls = itertools.count(1)

    def terminated_at_3(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        generators: list[torch.Generator]) -> torch.Tensor:
        if next(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return diffusion_loss(model, batch, generators)

    before = signal.getsignal(signal.SIGTERM)
    term = train(_tiny(), terminated_at_3, ToyPairs(), config(tmp_path / "term"))
    assert (term.stopped, term.steps_done) == ("SIGTERM", 3)
    np.testing.assert_allclose(term.losses, whole.losses[:3], rtol=1e-6)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_resume_without_checkpoint_and_bad_batch_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no checkpoint"):
        train(_tiny(), diffusion_loss, ToyPairs(),
              TrainConfig(output_dir=str(tmp_path), steps=1, resume="latest", cpu=True))
    with pytest.raises(InputError, match="does not split"):
        train(_tiny(), diffusion_loss, ToyPairs(),
              TrainConfig(output_dir=str(tmp_path), steps=1, batch_size=6, grad_accum=4,
                          cpu=True))


def test_data_order_is_a_partition_of_each_global_batch() -> None:
    one = list(_slice_indices(2, 4, 8, 2, 1, 0))
    two = [list(_slice_indices(2, 4, 8, 2, 2, r)) for r in (0, 1)]
    assert one == list(range(16, 32)) and sorted(two[0] + two[1]) == one


def test_gradient_accumulation_matches_the_full_batch(tmp_path: Path) -> None:
    def run(accum: int) -> list[float]:
        config = TrainConfig(output_dir=str(tmp_path / str(accum)), steps=4, batch_size=8,
                             grad_accum=accum, lr=1e-3, checkpoint_every=0, cpu=True)
        return train(_tiny(), diffusion_loss, ToyPairs(), config).losses

    np.testing.assert_allclose(run(2), run(1), rtol=1e-4)


class TwoPlayers(torch.nn.Module):
    """``a`` and ``b``, each a 4 → 4 linear map; both players' losses depend on both."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        for p in self.parameters():
            torch.nn.init.normal_(p, 0.0, 0.5, generator=gen)

    def forward(self, player: str, x: torch.Tensor) -> torch.Tensor:
        y = self.b(torch.tanh(self.a(x)))
        return ((y - 1) ** 2).mean() if player == "a" else ((y + x) ** 2).mean() + y.mean()


class Fixed:
    """The same 4-vector every time."""

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([0.1, -0.2, 0.3, 0.4])}


def _player(name: str) -> Phase:
    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], _: object) -> torch.Tensor:
        return model(name, batch["x"])  # type: ignore[no-any-return]

    return Phase(name, loss, lambda m: getattr(m, name).parameters(), lr=0.05,
                 betas=(0.5, 0.999), optimizer="adam", weight_decay=1e-2)


def test_phases_alternate_each_updating_only_its_own_parameters(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), steps=3, batch_size=2, warmup_steps=0,
                         max_grad_norm=0.0, ema_decay=0.0, checkpoint_every=0, cpu=True)
    start = _weights(TwoPlayers())
    only_a = _weights(train(TwoPlayers(), [_player("a")], Fixed(), config).model)
    assert all(not torch.equal(only_a[k], start[k]) for k in start if k.startswith("a."))
    assert all(torch.equal(only_a[k], start[k]) for k in start if k.startswith("b."))
    # both: step a (its Adam), then step b seeing the new a, as written out by hand
    result = train(TwoPlayers(), [_player("a"), _player("b")], Fixed(), config)
    model, x = TwoPlayers(), torch.tensor([[0.1, -0.2, 0.3, 0.4]] * 2)
    optimizers = {n: torch.optim.Adam(getattr(model, n).parameters(), lr=0.05,
                                      betas=(0.5, 0.999), weight_decay=1e-2) for n in "ab"}
    expected = []
    for _ in range(3):
        for name in "ab":
            model.zero_grad()
            loss = model(name, x)
            loss.backward()
            optimizers[name].step()
            expected.append(float(loss.detach()))
    for name, value in _weights(model).items():
        torch.testing.assert_close(_weights(result.model)[name], value, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.phase_losses["a"], expected[0::2], rtol=1e-6)
    np.testing.assert_allclose(result.losses, np.add(expected[0::2], expected[1::2]), rtol=1e-6)
    shares_a = Phase("c", _player("b").loss, lambda m: m.a.parameters())
    with pytest.raises(InputError, match="no parameters of its own"):
        train(TwoPlayers(), [_player("a"), shares_a], Fixed(), config)


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from cxrkit.train import TrainConfig, train
    config = TrainConfig(output_dir=sys.argv[1], steps=6, batch_size=8, lr=1e-3,
                         checkpoint_every=0, cpu=True)
    if sys.argv[3] == "enhancer":
        from cxrkit.enhancer import Enhancer, diffusion_loss
        from tests.test_train import TINY, ToyPairs
        model = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))
        result = train(model, diffusion_loss, ToyPairs(), config)
        # a second run in the same processes (as DDPM-LQ's two stages do) must find the group
        again = __import__("dataclasses").replace(config, output_dir=sys.argv[1] + "-again",
                                                  steps=1)
        train(Enhancer.new(TINY, generator=torch.Generator().manual_seed(1)), diffusion_loss,
              ToyPairs(), again)
    else:  # a GAN: alternating discriminator and generator phases
        import numpy as np
        from cxrkit.munit import PHASES, Munit, UnpairedCrops
        from tests.test_munit import TINY, hq_domain, lq_domain
        rng = np.random.default_rng(0)
        data = UnpairedCrops(hq_domain(rng, 4), lq_domain(rng, 4), crop=32)
        model = Munit.new(TINY, generator=torch.Generator().manual_seed(0))
        result = train(model, PHASES, data, config)
    if result.losses and int(__import__("os").environ.get("RANK", "0")) == 0:
        json.dump(result.phase_losses, open(sys.argv[2], "w"))
""")


@pytest.mark.parametrize("family", ["enhancer", "munit"])
def test_two_processes_give_the_same_loss_trajectory_as_one(tmp_path: Path, family: str) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), str(tmp_path / "1.json"),
                    family],
                   check=True, env=env, cwd=root, timeout=300)
    # `accelerate launch --cpu --num_processes 2` silently starts ONE process (accelerate 1.15);
    # --multi_gpu starts torchrun, and with no CUDA Accelerator runs MULTI_CPU over gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    subprocess.run([*launch, str(script), str(tmp_path / "two"), str(tmp_path / "2.json"), family],
                   check=True, env=env, cwd=root, timeout=300)
    one = json.loads((tmp_path / "1.json").read_text())
    two = json.loads((tmp_path / "2.json").read_text())
    assert one.keys() == two.keys() == ({"loss"} if family == "enhancer"
                                        else {"discriminator", "generator"})
    assert json.loads((tmp_path / "two" / "run.json").read_text())["num_processes"] == 2
    for name, losses in one.items():
        assert len(losses) == 6
        np.testing.assert_allclose(two[name], losses, rtol=1e-4)


def test_a_second_signal_stops_at_once() -> None:
    import signal

    from cxrkit.train import _StopSignals

    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"  # the first one only asks the loop to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
