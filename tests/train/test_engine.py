"""The one training loop: schedule, stop and resume to the bit, non-finite losses; one module steps optimizers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from sangal.errors import NonFiniteError, SangalError
from sangal.train.engine import LoopSettings, Schedule, Stopped, Task, run_task, step_schedule
from sangal.train.hooks import Hook
from sangal.train.run_parts import Position, RunLogger

SRC = Path(__file__).resolve().parents[2] / "src" / "sangal"


class Regression(Task):
    """A linear model fitted to a fixed random problem with SGD + momentum; batches drawn per epoch from a seed."""

    name = "toy"

    def __init__(self, loss_scale: float = 1.0) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(64, 4, generator=gen), torch.randn(64, 1, generator=gen)
        self.saved: dict[str, dict] = {}
        self.lrs: list[float] = []
        self.loss_scale = loss_scale

    def batches(self, epoch: int, start: int):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch)).view(8, 8)
        return iter(order[start:])

    def step(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        loss = (self.model(self.x[batch]) - self.y[batch]).pow(2).mean() * self.loss_scale
        return {"mse": loss, "total": loss}

    def save(self, position: Position, name: str = "last") -> None:
        self.saved[name] = {"position": (position.epoch, position.step, position.global_step),
                            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
                            "optimizer": self.optimizer.state_dict()}


def _run(task: Task, tmp_path: Path, stop_after: int | None = None, position: Position | None = None) -> Position:
    schedule = step_schedule(3, 8, lr=0.1, warmup_start_lr=0.01, warmup_epochs=1, milestones=[2], milestone_lrs=[0.02])
    logger = RunLogger(tmp_path, enabled=False)
    return run_task(task, schedule, LoopSettings(torch.device("cpu"), log_every=4), logger, position or Position(),
                    stop_after)


def test_the_schedule_sets_every_steps_learning_rate(tmp_path: Path) -> None:
    task = Regression()
    end = _run(task, tmp_path)
    assert (end.epoch, end.step, end.global_step) == (3, 0, 24)
    assert task.lrs[0] == pytest.approx(0.01) and task.lrs[4] == pytest.approx(0.01 + 0.09 * 4 / 8)
    assert task.lrs[8:16] == [pytest.approx(0.1)] * 8 and task.lrs[16:] == [pytest.approx(0.02)] * 8
    assert task.saved["last"]["position"] == (3, 0, 24)  # every epoch end is checkpointed


def test_a_stopped_run_resumes_to_the_bit(tmp_path: Path) -> None:
    whole = Regression()
    _run(whole, tmp_path)
    part = Regression()
    with pytest.raises(Stopped) as stopped:
        _run(part, tmp_path, stop_after=11)  # mid-epoch 1
    assert stopped.value.position.global_step == 11 and part.saved["last"]["position"] == (1, 3, 11)
    resumed = Regression()
    resumed.model.load_state_dict(part.saved["last"]["model"])
    resumed.optimizer.load_state_dict(part.saved["last"]["optimizer"])
    _run(resumed, tmp_path, position=Position(1, 3, 11))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_non_finite_loss_stops_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match="training stopped at epoch 0 step 0: loss term 'mse' is inf"):
        _run(Regression(loss_scale=float("inf")), tmp_path)


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_finite_checkpoint(tmp_path: Path) -> None:
    """optim.lr=1e10 (issue 29 case 7): the loss explodes; the run stops at the first non-finite loss or weights,
    naming the step, and no checkpoint of non-finite weights is written (the last one stays the last good one)."""
    task = Regression()
    schedule = Schedule(3, 8, lambda progress: 1e10 if progress > 0.2 else 0.01)  # diverges from step 2 on
    with pytest.raises(NonFiniteError, match=r"^training stopped at epoch 0 step \d:") as err:
        run_task(task, schedule, LoopSettings(torch.device("cpu"), checkpoint_every=1),
                 RunLogger(tmp_path, enabled=False), Position())
    assert "\n" not in str(err.value) and isinstance(err.value, SangalError)
    last = task.saved["last"]
    assert last["position"][2] >= 2 and all(torch.isfinite(v).all() for v in last["model"].values())


def test_the_engine_is_the_only_module_that_steps_an_optimizer() -> None:
    """`optimizer.step()`, `scaler.step(...)` and `.backward()` appear in train/engine.py and nowhere else."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value).lower()
                stepping = node.func.attr == "step" and ("optim" in receiver or "scaler" in receiver)
                if stepping or node.func.attr == "backward":
                    found.add(path.relative_to(SRC).as_posix())
    assert found == {"train/engine.py"}


class GradProbe(Hook):
    """Records, after every update, whether each parameter received a non-zero gradient."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.nonzero = model, []

    def after_update(self) -> None:
        self.nonzero.append(all(bool(p.grad.abs().sum() > 0) for p in self.model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast and its GradScaler run on CUDA only")
def test_fp16_steps_go_through_a_grad_scaler(tmp_path: Path) -> None:
    """A loss scaled by 1e-7 has fp16 gradients below fp16's smallest subnormal (6e-8): without a GradScaler they
    flush to zero and nothing trains; the scaler (x65536) keeps them, and unscales them before the step."""
    task = Regression(loss_scale=1e-7)
    task.model.cuda()
    task.x, task.y = task.x.cuda(), task.y.cuda()
    task.hooks = (probe := GradProbe(task.model),)
    schedule = Schedule(1, 8, lambda progress: 0.1)
    run_task(task, schedule, LoopSettings(torch.device("cuda"), amp=True), RunLogger(tmp_path, enabled=False),
             Position())
    assert probe.nonzero == [True] * 8
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
