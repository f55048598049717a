"""training.TrainingLog, the one call of every stage's training loop: history, NaN refusal, partial saves, resume."""

import math

import pytest
import torch

import artifacts
import training


def test_history_keeps_every_25th_and_the_last_step_in_the_order_given(tmp_path):
    log = training.TrainingLog("test", tmp_path / "tb", 30, tag="t/", progress=False)
    for step in range(30):
        log.step(step, {"total": torch.tensor(float(step)), "part": 0.5}, watched=float("nan"))
    log.close({"final/x": 1.0})
    assert list(log.history) == ["step", "total", "part", "watched"]  # the order the artifacts' histories have
    assert log.history["step"] == [0, 25, 29] and log.history["total"] == [0.0, 25.0, 29.0]
    assert all(math.isnan(v) for v in log.history["watched"])  # watched values are logged, never refused


def test_a_nan_loss_stops_with_one_line_naming_the_kept_state_and_a_rerun_resumes(tmp_path):
    partial = tmp_path / "m.partial.pt"
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def new_log():
        return training.TrainingLog("stage x", tmp_path / "tb", 10, tag="x/", progress=False, partial=partial,
                                    partial_format="test-partial", settings={"a": 1}, made_from={},
                                    states={"model": model, "opt": opt}, save_every=3)

    log = new_log()
    assert log.start == 0
    with pytest.raises(SystemExit, match=r"^error: stage x: a loss became NaN/inf at step 7 \(loss nan\); "
                                         r"kept the state of step 6 in .*m.partial.pt$"):
        for step in range(log.start, 10):
            log.step(step, {"loss": float("nan") if step == 7 else 1.0})
    assert torch.load(partial, weights_only=True)["step"] == 6  # saved after steps 2 and 5: steps 3 and 6 next
    log = new_log()
    assert log.start == 6 and log.history["step"] == [0]
    with pytest.raises(SystemExit, match="no state was saved"):
        training.TrainingLog("stage y", tmp_path / "tb", 5, tag="y/", progress=False).step(0, {"loss": math.inf})
    assert artifacts.load_artifact(partial, "test-partial", ("step",))["step"] == 6
