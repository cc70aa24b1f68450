"""The shared Lightning training loop and the in-memory image dataset, on tiny toy problems."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from defectkit.data.transforms import Albumentations
from defectkit.training import EpochAware, ImageTensorDataset, ValidationScore, fit_head
from defectkit.training.loop import low_resolution_batch


def bright_dark(n: int, seed: int, size: int = 24) -> tuple[list[np.ndarray], list[int]]:
    """Noisy images, dark (label 0) or bright (label 1): separable by mean intensity."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        base = 190 if label else 60
        images.append(np.clip(rng.normal(base, 25, (size, size, 3)), 0, 255).astype(np.uint8))
        labels.append(label)
    return images, labels


def tiny_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def mean_loss(head: nn.Module, dataset: ImageTensorDataset) -> float:
    head.eval()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return float(nn.functional.cross_entropy(head(x), y))


def test_fit_head_reduces_loss_on_separable_toy_problem() -> None:
    train = ImageTensorDataset(*bright_dark(32, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(16, 1), size=(16, 16))
    head = tiny_head()
    before = mean_loss(head, val)
    summary = fit_head(head, train, val, nn.CrossEntropyLoss(), epochs=4, batch_size=8, lr=3e-2, seed=0)
    after = mean_loss(head, val)
    assert after < 0.5 * before
    assert summary["epochs"] == 4 and summary["steps"] == 16
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]
    assert summary["best_val_loss"] <= summary["last_val_loss"]
    assert summary["seconds"] > 0 and not head.training


def test_fit_head_advances_progress_once_per_batch_and_is_quiet(capsys, caplog) -> None:
    train = ImageTensorDataset(*bright_dark(10, 0), size=(16, 16))
    bars: list[tuple[str, int]] = []
    advanced: list[int] = []

    def progress(description: str, total: int):
        bars.append((description, total))
        return lambda n=1: advanced.append(n)

    with caplog.at_level(logging.INFO):
        fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-2,
                 progress=progress, description="toy")
    assert bars == [("toy", 6)] and sum(advanced) == 6
    out = capsys.readouterr()
    assert "GPU available" not in out.out + out.err + caplog.text
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is given back


def test_fit_head_logs_one_line_per_epoch_with_its_losses() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(4, 1), size=(16, 16))
    lines: list[str] = []
    summary = fit_head(tiny_head(), train, val, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-2,
                       description="toy: train", log=lines.append)
    assert [line.split(" train loss")[0] for line in lines] == ["toy: train: epoch 1/2", "toy: train: epoch 2/2"]
    assert f"val loss {summary['history'][1]['val_loss']:.4f}" in lines[1]


def test_fit_head_is_reproducible_with_a_seed() -> None:
    train = ImageTensorDataset(*bright_dark(12, 0), size=(16, 16))
    a, b = tiny_head(), tiny_head()
    fit_head(a, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2, seed=3)
    fit_head(b, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_frozen_parameters_do_not_change_during_freeze_epochs() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    head = tiny_head()
    conv_before = head[0].weight.detach().clone()
    linear_before = head[4].weight.detach().clone()
    fit_head(head, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2,
             frozen=lambda name: name.startswith("0."), freeze_epochs=1)
    assert torch.equal(head[0].weight, conv_before)
    assert not torch.equal(head[4].weight, linear_before)
    assert head[0].weight.requires_grad  # unfrozen again after the fit


def test_restore_best_loads_the_lowest_validation_loss_weights() -> None:
    train = ImageTensorDataset(*bright_dark(16, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(8, 1), size=(16, 16))
    head = tiny_head()
    # A learning rate far too high makes later epochs worse, so the best epoch is not the last.
    summary = fit_head(head, train, val, nn.CrossEntropyLoss(), epochs=4, batch_size=4, lr=5.0, restore_best=True)
    assert mean_loss(head, val) == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert summary["restored_best"] == (summary["best_epoch"] != 3)


class SwitchingLossHead(nn.Module, EpochAware):
    """A head whose loss changes after its first epoch (as TOOD's does), on another scale."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.epochs_started: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epochs_started.append(epoch)
        self.epoch = epoch

    def loss_comparable_from(self) -> int:
        return 1

    def forward(self, x, targets=None):
        scale = (0.1, 5.0, 4.0, 4.5)[self.epoch]  # epoch 0's loss is lowest but another loss
        return {"loss": scale + 0.0 * self.weight.sum() + 0.0 * x.sum()}


def test_an_epoch_aware_head_hears_each_epoch_and_its_best_epoch_is_among_comparable_losses() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(4, 1), size=(16, 16))
    head = SwitchingLossHead()
    summary = fit_head(head, train, val, None, epochs=4, batch_size=4, lr=1e-2, restore_best=True)
    assert head.epochs_started == [0, 1, 2, 3]
    assert [round(h["val_loss"], 3) for h in summary["history"]] == [0.1, 5.0, 4.0, 4.5]
    assert summary["best_epoch"] == 2 and summary["best_val_loss"] == 4.0 and summary["restored_best"]


def test_dataset_converts_like_to_input_tensor_and_resizes() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 255
    ds = ImageTensorDataset([image], [1], size=(10, 12))
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.dtype == torch.long and int(y) == 1


def test_dataset_resizes_and_augments_masks_with_their_image() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255
    mask = np.zeros((40, 40), np.uint8)
    mask[:, :20] = 1
    flip = Albumentations(transforms=[dict(type="HorizontalFlip", p=1.0)], seed=0)
    x, y = ImageTensorDataset([image], [mask], size=(20, 20), transform=flip)[0]
    assert y.shape == (20, 20) and y.dtype == torch.long
    bright = x[0] > 0
    assert torch.equal(bright, y.bool())  # the mask moved with the image
    assert bool(bright[:, -1].all()) and not bool(bright[:, 0].any())  # and both were flipped


def test_dataset_multilabel_masks_become_float_channels() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    masks = np.zeros((2, 16, 16), bool)
    masks[1, :4] = True
    _, y = ImageTensorDataset([image], [masks], size=(8, 8))[0]
    assert y.shape == (2, 8, 8) and y.dtype == torch.float32 and float(y[1, :2].min()) == 1.0


def test_dataset_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        ImageTensorDataset([np.zeros((4, 4, 3), np.uint8)] * 2, [0], size=(4, 4))


def test_adam_with_clipping_takes_the_same_step_as_a_hand_written_loop() -> None:
    # One batch holding every sample, so shuffling cannot change the step.
    images, labels = bright_dark(8, 0)
    train = ImageTensorDataset(images, labels, size=(16, 16))
    looped, manual = tiny_head(), tiny_head()
    summary = fit_head(looped, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=8, lr=1e-2, weight_decay=0.1,
                       optimizer="adam", schedule="constant", gradient_clip_val=0.1)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    optimizer = torch.optim.Adam(manual.parameters(), lr=1e-2, weight_decay=0.1)
    nn.functional.cross_entropy(manual(x), y).backward()
    assert float(nn.utils.clip_grad_norm_(manual.parameters(), 0.1)) > 0.1  # the clip did act
    optimizer.step()
    for (name, a), b in zip(looped.state_dict().items(), manual.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert summary["steps"] == 1 and summary["history"][0]["lr"] == pytest.approx(1e-2)


def test_parameters_under_an_lr_scale_prefix_step_at_that_share_of_the_rate() -> None:
    images, labels = bright_dark(8, 0)
    train = ImageTensorDataset(images, labels, size=(16, 16))
    looped, manual = tiny_head(), tiny_head()
    fit_head(looped, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=8, lr=1e-2, optimizer="adam",
             schedule="constant", lr_scales={"0.": 0.1})  # "0." is the convolution, the "encoder"
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    optimizer = torch.optim.Adam([{"params": manual[0].parameters(), "lr": 1e-3},
                                  {"params": manual[4].parameters(), "lr": 1e-2}], weight_decay=1e-4)
    nn.functional.cross_entropy(manual(x), y).backward()
    optimizer.step()
    for (name, a), b in zip(looped.state_dict().items(), manual.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match="no parameter name of the head starts with 'encoder.'"):
        fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=8, lr=1e-2,
                 lr_scales={"encoder.": 0.1})


def bn_head() -> nn.Module:
    torch.manual_seed(0)
    # Modules "0" and "1" (convolution, batch norm) play the pretrained encoder, "5" to "8" the new layers on top.
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_frozen_norms_keep_their_statistics_while_everything_else_trains() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    untrained = bn_head()
    head = bn_head()
    head.eval()  # left in eval mode before the fit: training must not depend on it
    fit_head(head, train, train, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-2, frozen_norms=("1",))
    assert torch.equal(head[1].running_mean, untrained[1].running_mean)
    assert torch.equal(head[1].running_var, untrained[1].running_var)
    assert not torch.equal(head[1].weight, untrained[1].weight)  # its scale still learns
    assert not torch.equal(head[6].running_mean, untrained[6].running_mean)  # the other norm's statistics do
    plain = bn_head()
    plain.eval()
    fit_head(plain, train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2)
    assert not torch.equal(plain[1].running_mean, untrained[1].running_mean)


def test_a_frozen_norm_prefix_without_batch_norms_is_refused() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    with pytest.raises(ValueError, match="no batch-norm layer of the head is named with the prefix 'encoder.'"):
        fit_head(bn_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2,
                 frozen_norms=("encoder.",))



def test_frozen_layers_keep_weights_and_statistics_for_the_whole_fit_and_train_again_after_it() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    untrained = bn_head()
    head = bn_head()
    summary = fit_head(head, train, train, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-2,
                       frozen_layers=("0.", "1."))
    for frozen in (0, 1):
        for name, tensor in head[frozen].state_dict().items():
            assert torch.equal(tensor, untrained[frozen].state_dict()[name]), f"{frozen}.{name} changed"
    assert not torch.equal(head[5].weight, untrained[5].weight)
    assert not torch.equal(head[6].running_mean, untrained[6].running_mean)
    assert all(p.requires_grad for p in head.parameters())
    assert summary["frozen_layers"] == ["0.", "1."]


def test_a_warm_up_freeze_does_not_release_frozen_layers() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    untrained = bn_head()
    head = bn_head()
    # Everything but the last layer waits one epoch; the stem stays frozen throughout.
    fit_head(head, train, None, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-2,
             frozen=lambda name: not name.startswith("8."), freeze_epochs=1, frozen_layers=("0.",))
    assert torch.equal(head[0].weight, untrained[0].weight)
    assert not torch.equal(head[5].weight, untrained[5].weight)  # released after the warm-up


def test_a_frozen_layer_prefix_that_names_no_parameter_is_refused() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    with pytest.raises(ValueError, match="frozen_layers: no parameter name of the head starts with 'encoder.'"):
        fit_head(bn_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2,
                 frozen_layers=("encoder.",))

def test_with_ema_the_head_ends_with_the_moving_average_of_its_weights_after_each_step() -> None:
    train = ImageTensorDataset(*bright_dark(12, 0), size=(16, 16))
    seen: list[torch.Tensor] = []  # the last layer's weight as each training step starts
    plain = tiny_head()
    plain[4].register_forward_pre_hook(lambda m, _: seen.append(m.weight.detach().clone()) if m.training else None)
    fit_head(plain, train, None, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-1)
    after_each_step = [*seen[1:], plain[4].weight.detach()]
    expected = after_each_step[0]  # the first update copies; then the decay warms up to 0.9
    for n, weight in enumerate(after_each_step[1:], start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * weight
    averaged = tiny_head()
    summary = fit_head(averaged, train, None, nn.CrossEntropyLoss(), epochs=2, batch_size=4, lr=1e-1, ema_decay=0.9)
    assert len(after_each_step) == summary["steps"] == 6 and summary["ema_decay"] == 0.9
    assert torch.allclose(averaged[4].weight, expected, atol=1e-6)
    assert not torch.allclose(averaged[4].weight, plain[4].weight, atol=1e-3)


def test_with_ema_validation_scores_the_average_and_the_best_epoch_keeps_it() -> None:
    train = ImageTensorDataset(*bright_dark(16, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(8, 1), size=(16, 16))
    head = tiny_head()
    summary = fit_head(head, train, val, nn.CrossEntropyLoss(), epochs=4, batch_size=4, lr=5.0, restore_best=True,
                       ema_decay=0.5)
    assert mean_loss(head, val) == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert summary["history"][summary["best_epoch"]]["val_loss"] == summary["best_val_loss"]


def test_constant_schedule_keeps_the_rate_and_cosine_lowers_it() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    constant = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=3, batch_size=4, lr=1e-2, schedule="constant")
    cosine = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=3, batch_size=4, lr=1e-2)
    assert [h["lr"] for h in constant["history"]] == pytest.approx([1e-2] * 3)
    assert cosine["history"][-1]["lr"] < 0.5e-2


class ClockedDataset(ImageTensorDataset):
    """Each item read advances a fake clock by one second, so an epoch of n items takes n seconds."""

    def __init__(self, clock: dict[str, float], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.clock = clock

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.clock["now"] += 1.0
        return super().__getitem__(index)


def fake_clock(monkeypatch) -> dict[str, float]:
    """The training loop's clock, moved only by :class:`ClockedDataset` reads."""
    import types

    from defectkit.training import loop

    clock = {"now": 0.0}
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    return clock


def test_a_time_budget_trains_the_epochs_that_fit_and_ends_the_schedule_with_them(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ClockedDataset(clock, *bright_dark(8, 0), size=(16, 16))  # 8 s per epoch, 2 steps
    lines: list[str] = []
    summary = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=10, batch_size=4, lr=1e-2,
                       max_minutes=30 / 60, log=lines.append)
    # 30 s hold three 8 s epochs; the cosine schedule reaches its floor (1% of lr) at the third's last step.
    assert summary["epochs"] == len(summary["history"]) == 3 and summary["steps"] == 6
    assert summary["epochs_requested"] == 10 and summary["max_minutes"] == 0.5
    assert summary["history"][-1]["lr"] == pytest.approx(1e-4)
    assert "3 of 10 epochs fit in the 0.5 min budget at 8 s per epoch" in lines[0]
    assert "epoch 3/3" in lines[-1]


def test_a_time_budget_never_adds_epochs_and_a_loose_one_changes_nothing(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ClockedDataset(clock, *bright_dark(8, 0), size=(16, 16))
    budgeted = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=3, batch_size=4, lr=1e-2, max_minutes=60)
    plain = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=3, batch_size=4, lr=1e-2)
    assert budgeted["epochs"] == 3
    assert [h["lr"] for h in budgeted["history"]] == [h["lr"] for h in plain["history"]]
    assert [h["train_loss"] for h in budgeted["history"]] == [h["train_loss"] for h in plain["history"]]


def test_a_fit_cut_short_by_its_budget_completes_its_progress_bar(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ClockedDataset(clock, *bright_dark(8, 0), size=(16, 16))  # 8 s per epoch, 2 steps
    bars: list[tuple[str, int]] = []
    advanced: list[int] = []

    def progress(description: str, total: int):
        bars.append((description, total))
        return lambda n=1: advanced.append(n)

    summary = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=10, batch_size=4, lr=1e-2,
                       max_minutes=30 / 60, progress=progress, description="toy")
    # The bar was sized for 10 epochs of 2 steps; 3 epochs ran, and the rest is filled in at the end.
    assert summary["steps"] == 6 and bars == [("toy", 20)]
    assert advanced[:6] == [1] * 6 and sum(advanced) == 20


def test_an_epoch_that_outgrows_the_budget_is_the_last(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ClockedDataset(clock, *bright_dark(8, 0), size=(16, 16))
    # A budget shorter than one epoch: the first epoch is trained, and nothing after it.
    summary = fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=5, batch_size=4, lr=1e-2, max_minutes=5 / 60)
    assert summary["epochs"] == 1 and summary["steps"] == 2


class PixelClockedHead(nn.Module):
    """A tiny classifier whose training batches advance a fake clock by one second per 32x32 pixels per image
    (inputs seen in :attr:`shapes`), so an epoch's time follows its input size."""

    def __init__(self, clock: dict[str, float], seconds_per_step: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.seconds_per_step = seconds_per_step  # a cost that does not shrink with the input (e.g. loading)
        self.net = tiny_head()
        self.shapes: list[tuple[bool, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append((self.training, tuple(x.shape)))
        if self.training:
            self.clock["now"] += self.seconds_per_step + x.shape[-2] * x.shape[-1] / (32 * 32) * len(x) / 4
        return self.net(x)


def test_progressive_resizing_trains_the_first_share_of_epochs_on_shrunk_batches_and_validates_at_full_size() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(64, 96))
    val = ImageTensorDataset(*bright_dark(4, 1), size=(64, 96))
    head = PixelClockedHead({"now": 0.0})
    summary = fit_head(head, train, val, nn.CrossEntropyLoss(), epochs=4, batch_size=4, lr=1e-2,
                       progressive_resize=(0.5, 0.5))
    train_sizes = [shape[-2:] for training, shape in head.shapes if training]
    # 2 steps per epoch: epochs 1-2 at half size (96 * 0.5 = 48 rounds to 64 on the grid of 32), 3-4 at full size.
    assert train_sizes == [(32, 64)] * 4 + [(64, 96)] * 4
    assert {shape[-2:] for training, shape in head.shapes if not training} == {(64, 96)}
    assert [h["low_resolution"] for h in summary["history"]] == [True, True, False, False]
    assert summary["progressive_resize"] == [0.5, 0.5]


def test_a_time_budget_counts_low_resolution_and_full_size_epochs_at_their_own_pace(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ImageTensorDataset(*bright_dark(8, 0), size=(64, 64))
    lines: list[str] = []
    # A full-size epoch takes 8 s (2 steps of 4 images at 64x64), a low-resolution one 2 s (32x32).
    summary = fit_head(PixelClockedHead(clock), train, None, nn.CrossEntropyLoss(), epochs=10, batch_size=4, lr=1e-2,
                       max_minutes=30 / 60, progressive_resize=(0.5, 0.5), log=lines.append)
    # 30 s hold three 2 s epochs and three 8 s ones, half of six at low resolution; the schedule ends with them.
    assert [h["low_resolution"] for h in summary["history"]] == [True] * 3 + [False] * 3
    assert clock["now"] == 30.0 and summary["history"][-1]["lr"] == pytest.approx(1e-4)
    assert "6 of 10 epochs fit in the 0.5 min budget at 2 s per low-resolution and 8 s per full-size epoch" in lines[0]
    assert "epoch 1/6 train loss at 0.5x size" in lines[1]


def test_once_an_epoch_trained_at_full_size_a_growing_plan_sends_no_epoch_back_to_low_resolution(monkeypatch) -> None:
    clock = fake_clock(monkeypatch)
    train = ImageTensorDataset(*bright_dark(8, 0), size=(64, 64))
    # With 3 s per step that does not shrink, a low-resolution epoch takes 8 s and a full-size one 14 s,
    # not the 32 s guessed from the pixels: after the first full-size epoch the plan grows from 5 to 8
    # epochs, and half of 8 would make epoch 5 a low-resolution one again.
    summary = fit_head(PixelClockedHead(clock, seconds_per_step=3.0), train, None, nn.CrossEntropyLoss(), epochs=20,
                       batch_size=4, lr=1e-2, max_minutes=102 / 60, progressive_resize=(0.5, 0.5))
    assert [h["low_resolution"] for h in summary["history"]] == [True] * 3 + [False] * 5
    assert clock["now"] == 94.0


def test_shrinking_a_batch_area_averages_float_masks_keeps_class_maps_and_labels_and_refuses_boxes() -> None:
    x = torch.rand(2, 3, 64, 64)
    thin = torch.zeros(2, 1, 64, 64)
    thin[:, :, :, 10] = 1.0  # a one-pixel line that nearest-neighbour sampling could drop
    small, masks = low_resolution_batch(x, thin, 0.5)
    assert small.shape == (2, 3, 32, 32) and masks.shape == (2, 1, 32, 32)
    assert float(masks.sum()) == pytest.approx(float(thin.sum()) / 4) and float(masks.max()) == 0.5
    class_map = torch.randint(0, 3, (2, 64, 64))
    _, small_map = low_resolution_batch(x, class_map, 0.5)
    assert small_map.dtype == torch.int64 and torch.equal(small_map, class_map[:, ::2, ::2])
    labels = torch.tensor([0, 1])
    assert low_resolution_batch(x, labels, 0.5)[1] is labels
    with pytest.raises(ValueError, match="progressive_resize shrinks image batches with their mask targets"):
        low_resolution_batch(x, [{"boxes": torch.zeros(0, 4)}] * 2, 0.5)


@pytest.mark.parametrize(
    "option, message",
    [(dict(optimizer="sgd"), r"optimizer must be one of \['adamw', 'adam'\], got 'sgd'"),
     (dict(schedule="step"), r"schedule must be one of \['cosine', 'constant'\]"),
     (dict(gradient_clip_val=0.0), "gradient_clip_val must be > 0"),
     (dict(ema_decay=1.0), r"ema_decay must be in \(0, 1\) or None"),
     (dict(max_minutes=0), "max_minutes must be > 0 or None"),
     (dict(progressive_resize=(1.0, 0.5)), r"progressive_resize must be \(scale, share\) with both in \(0, 1\)")],
)
def test_bad_loop_options_say_what_is_allowed(option, message) -> None:
    train = ImageTensorDataset(*bright_dark(4, 0), size=(16, 16))
    with pytest.raises(ValueError, match=message):
        fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2, **option)


class ScriptedScore(ValidationScore):
    """A validation score that reads the scripted value of each pass, and counts the batches it saw."""

    name = "scripted"

    def __init__(self, values: list[float | None]) -> None:
        self.values, self.passes, self.batches = list(values), -1, 0

    def reset(self) -> None:
        self.passes += 1

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        assert outputs.shape[0] == targets.shape[0]
        self.batches += 1

    def compute(self) -> float | None:
        return self.values[self.passes]


def test_a_validation_score_picks_the_kept_epoch_when_asked_to() -> None:
    train = ImageTensorDataset(*bright_dark(8, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(4, 1), size=(16, 16))
    lines: list[str] = []
    score = ScriptedScore([0.2, 0.9, None, 0.5])
    head = tiny_head()
    summary = fit_head(head, train, val, nn.CrossEntropyLoss(), epochs=4, batch_size=4, lr=1e-2, restore_best=True,
                       val_score=score, best_epoch_by="val_score", log=lines.append)
    assert [h["val_score"] for h in summary["history"]] == [0.2, 0.9, None, 0.5]
    assert summary["best_epoch"] == 1 and summary["best_epoch_by"] == "val_score" and summary["restored_best"]
    assert summary["best_val_score"] == 0.9 and summary["val_score_name"] == "scripted"
    assert summary["best_val_loss"] == summary["history"][1]["val_loss"]  # the kept epoch's loss
    assert mean_loss(head, val) == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert score.batches == 4 and "scripted 0.9000" in lines[1]


def test_a_validation_score_is_logged_but_the_loss_still_picks_by_default() -> None:
    train = ImageTensorDataset(*bright_dark(16, 0), size=(16, 16))
    val = ImageTensorDataset(*bright_dark(8, 1), size=(16, 16))
    summary = fit_head(tiny_head(), train, val, nn.CrossEntropyLoss(), epochs=3, batch_size=4, lr=5.0,
                       restore_best=True, val_score=ScriptedScore([0.1, 0.2, 0.3]))
    losses = [h["val_loss"] for h in summary["history"]]
    assert summary["best_epoch"] == losses.index(min(losses)) and summary["best_epoch_by"] == "val_loss"
    assert [h["val_score"] for h in summary["history"]] == [0.1, 0.2, 0.3]


def test_selecting_by_a_score_needs_one_and_a_score_needs_the_outputs() -> None:
    train = ImageTensorDataset(*bright_dark(4, 0), size=(16, 16))
    with pytest.raises(ValueError, match="needs a val_score"):
        fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2, best_epoch_by="val_score")
    with pytest.raises(ValueError, match="needs a loss_fn"):
        fit_head(tiny_head(), train, None, None, epochs=1, batch_size=4, lr=1e-2, val_score=ScriptedScore([0.1]))
    with pytest.raises(ValueError, match="best_epoch_by must be one of"):
        fit_head(tiny_head(), train, None, nn.CrossEntropyLoss(), epochs=1, batch_size=4, lr=1e-2, best_epoch_by="iou")
