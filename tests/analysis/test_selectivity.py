"""Tests of the class selectivity index (paper §IV-E) and its streaming computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from reaf_lightning.analysis.hooks import (
    DEFAULT_LAYERS,
    compute_class_means,
    compute_selectivity,
)
from reaf_lightning.analysis.selectivity import class_selectivity
from reaf_lightning.models import create_model

# ----------------------------------------------------------------------------- pure maths


def test_class_selectivity_hand_computed_three_classes():
    # Three classes (rows), four units (columns):
    #   unit 0: u = (1, 3, 2) -> u_max = 3, u_-max = (1 + 2) / 2 = 1.5
    #           SI = (3 - 1.5) / (3 + 1.5 + eps) = 1.5 / 4.5 = 1/3
    #   unit 1: u = (0, 0, 0) -> dead unit, SI = 0 / eps = 0
    #   unit 2: u = (2, 2, 2) -> u_max = 2, u_-max = 2, SI = 0 / 4 = 0
    #   unit 3: u = (4, 0, 0) -> u_max = 4, u_-max = 0, SI = 4 / (4 + eps) ~ 1
    means = torch.tensor(
        [[1.0, 0.0, 2.0, 4.0], [3.0, 0.0, 2.0, 0.0], [2.0, 0.0, 2.0, 0.0]], dtype=torch.float64
    )
    expected = torch.tensor([1.5 / (4.5 + 1e-7), 0.0, 0.0, 4.0 / (4.0 + 1e-7)], dtype=torch.float64)
    torch.testing.assert_close(class_selectivity(means), expected, rtol=0, atol=1e-12)


def test_class_selectivity_two_classes_and_dead_units():
    # Two classes: u_-max is simply the other class.  unit 0: (1, 0) -> (1-0)/(1+0) = 1;
    # unit 1: (1, 3) -> (3-1)/(3+1) = 0.5; unit 2: dead -> 0 (no NaN from 0/0).
    means = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    si = class_selectivity(means)
    torch.testing.assert_close(
        si, torch.tensor([1 / (1 + 1e-7), 2 / (4 + 1e-7), 0.0], dtype=torch.float64)
    )
    assert torch.isfinite(si).all()
    assert class_selectivity(torch.zeros(5, 7)).eq(0).all()


def test_class_selectivity_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_classes, units"):
        class_selectivity(torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_selectivity(torch.zeros(1, 4))


# ----------------------------------------------------------------------------- streaming


NUM_CLASSES = 4


def _dataset(n: int = 23, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=g)
    labels = torch.arange(n) % NUM_CLASSES  # every class present
    labels = labels[torch.randperm(n, generator=g)]
    return TensorDataset(images, labels)


def _model(name: str = "test_resnet") -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    # Random BN statistics so eval mode differs visibly from train mode.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _reference_selectivity(model, dataset, layers, reduction="mean"):
    """Independent reference: keep every activation, then loop over classes and units."""
    model.eval()
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: store[name].append(out.detach().clone())
        )
        for name in layers
    ]
    labels = []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=len(dataset)):
            model(x)
            labels.append(y)
    for h in handles:
        h.remove()
    labels = torch.cat(labels)
    result = {}
    for name in layers:
        acts = torch.cat(store[name]).double()
        units = acts.mean(dim=(2, 3)) if reduction == "mean" else acts.flatten(1)
        class_means = torch.stack([units[labels == c].mean(dim=0) for c in range(NUM_CLASSES)])
        si = torch.empty(units.shape[1], dtype=torch.float64)
        for j in range(units.shape[1]):
            col = class_means[:, j].tolist()
            top = max(col)
            rest = (sum(col) - top) / (len(col) - 1)
            si[j] = (top - rest) / (top + rest + 1e-7)
        result[name] = si
    return result


@pytest.mark.parametrize("name", ["test_resnet", "test_reaf_resnet"])
def test_compute_selectivity_matches_reference(name):
    model, data = _model(name), _dataset()
    got = compute_selectivity(model, DataLoader(data, batch_size=5), num_classes=NUM_CLASSES)
    ref = _reference_selectivity(_model(name), data, DEFAULT_LAYERS)
    assert list(got) == list(DEFAULT_LAYERS)
    for layer in DEFAULT_LAYERS:
        torch.testing.assert_close(got[layer], ref[layer], rtol=1e-4, atol=1e-5)
        assert got[layer].min() >= 0 and got[layer].max() <= 1  # post-ReLU activations


def test_reduction_none_keeps_every_unit():
    model, data = _model(), _dataset()
    layers = ["layer1", "layer3", "avgpool"]
    got = compute_selectivity(
        model, DataLoader(data, batch_size=7), layers=layers, reduction="none"
    )
    ref = _reference_selectivity(_model(), data, layers, reduction="none")
    model.eval()
    with torch.no_grad():
        x = data.tensors[0][:1]
        shapes = {}
        hooks = [
            model.get_submodule(n).register_forward_hook(
                lambda _m, _i, o, n=n: shapes.__setitem__(n, o.shape[1:])
            )
            for n in layers
        ]
        model(x)
        for h in hooks:
            h.remove()
    for layer in layers:
        assert got[layer].shape == (shapes[layer].numel(),)
        torch.testing.assert_close(got[layer], ref[layer], rtol=1e-4, atol=1e-5)
    stats = compute_class_means(
        model, DataLoader(data, batch_size=7), layers=layers, reduction="none"
    )
    assert stats.unit_shapes["layer1"] == tuple(shapes["layer1"])


def test_class_means_are_sums_over_counts_and_num_classes_inferred():
    model, data = _model(), _dataset()
    stats = compute_class_means(model, DataLoader(data, batch_size=4), layers=["layer2"])
    labels = data.tensors[1]
    assert stats.num_classes == NUM_CLASSES
    assert stats.counts.tolist() == [int((labels == c).sum()) for c in range(NUM_CLASSES)]
    explicit = compute_class_means(
        model, DataLoader(data, batch_size=9), layers=["layer2"], num_classes=NUM_CLASSES + 2
    )
    # Two extra, empty classes: their rows are dropped, the rest agrees.
    torch.testing.assert_close(explicit.class_means()["layer2"], stats.class_means()["layer2"])
    assert torch.isnan(explicit.class_means(drop_empty=False)["layer2"][-1]).all()


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_and_modes_restored():
    model, data = _model(), _dataset()
    model.train()
    model.layer2.eval()  # mixed modes must come back exactly
    before = {n: m.training for n, m in model.named_modules()}
    bn = model.bn1.running_mean.clone()
    compute_selectivity(model, DataLoader(data, batch_size=5))
    assert _no_hooks(model)
    assert {n: m.training for n, m in model.named_modules()} == before
    # Ran in eval mode: BatchNorm running statistics untouched.
    torch.testing.assert_close(model.bn1.running_mean, bn, rtol=0, atol=0)


def test_hooks_removed_after_exception_mid_loop():
    model, data = _model(), _dataset()
    model.train()

    def failing_loader():
        yield data.tensors[0][:4], data.tensors[1][:4]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        compute_selectivity(model, failing_loader())
    assert _no_hooks(model)
    assert all(m.training for m in model.modules())


def test_shared_relu_is_rejected_not_silently_mixed():
    # A BasicBlock calls its single ``relu`` module twice per forward pass
    # (torchvision's Bottleneck three times): hooking it would mix activations.
    model, data = _model(), _dataset()
    with pytest.raises(ValueError, match="more than once"):
        compute_selectivity(model, DataLoader(data, batch_size=5), layers=["layer1.0.relu"])
    assert _no_hooks(model)


def test_dotted_names_and_unknown_layer_error():
    model, data = _model(), _dataset()
    got = compute_selectivity(model, DataLoader(data, batch_size=5), layers=["layer3.0"])
    ref = _reference_selectivity(_model(), data, ["layer3"])  # one block = whole stage
    torch.testing.assert_close(got["layer3.0"], ref["layer3"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"unknown layer 'layer9'.*'layer4'.*'avgpool'"):
        compute_selectivity(model, DataLoader(data, batch_size=5), layers=["layer9"])
    with pytest.raises(ValueError, match="reduction must be one of"):
        compute_selectivity(model, DataLoader(data, batch_size=5), reduction="max")


def test_mobilenet_style_names():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=NUM_CLASSES, stem="cifar")
    data = _dataset(n=8)
    last = f"features.{len(model.features) - 1}"
    layers = ["features.2.conv.0", last]  # a block's expansion ReLU6, the last ReLU6 block
    got = compute_selectivity(model, DataLoader(data, batch_size=4), layers=layers)
    assert set(got) == set(layers)
    with pytest.raises(ValueError, match="features"):
        compute_selectivity(model, DataLoader(data, batch_size=4))  # no layer1 in MobileNetV2


def test_label_out_of_range_is_a_clear_error():
    model, data = _model(), _dataset()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        compute_selectivity(model, DataLoader(data, batch_size=5), num_classes=3)


@pytest.mark.parametrize("world,shuffle", [(2, False), (3, True), (4, True)])
def test_distributed_sampler_padding_counted_once(world, shuffle):
    """Shard by hand (no process group): per-rank sums add up to the single-process sums."""
    model, data = _model(), _dataset(n=11)
    full = compute_class_means(model, DataLoader(data, batch_size=3), num_classes=NUM_CLASSES)
    sums = {k: torch.zeros_like(v) for k, v in full.sums.items()}
    counts = torch.zeros_like(full.counts)
    for rank in range(world):
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=3)
        part = compute_class_means(
            model,
            DataLoader(data, batch_size=2, sampler=sampler),
            num_classes=NUM_CLASSES,
            sync=False,
        )
        counts += part.counts
        for k in sums:
            sums[k] += part.sums[k]
    assert counts.tolist() == full.counts.tolist()
    for k in sums:
        torch.testing.assert_close(sums[k], full.sums[k], rtol=1e-5, atol=1e-5)


def test_max_batches_stops_early():
    model, data = _model(), _dataset()
    stats = compute_class_means(model, DataLoader(data, batch_size=5), max_batches=2)
    assert int(stats.counts.sum()) == 10


def test_non_finite_activations_name_the_first_bad_layer():
    from reaf_lightning.errors import NumericalError

    model, data = _model(), _dataset()
    model.layer3[0].bn1.running_var.fill_(-1.0)  # sqrt of a negative variance: NaN from layer3 on
    with pytest.raises(NumericalError, match="layer 'layer3'"):
        compute_selectivity(model, DataLoader(data, batch_size=8), layers=["layer2", "layer3"])
    assert _no_hooks(model)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    data = _dataset()
    cpu = compute_selectivity(_model(), DataLoader(data, batch_size=5))
    gpu = compute_selectivity(_model().cuda(), DataLoader(data, batch_size=5))
    for layer in cpu:
        torch.testing.assert_close(gpu[layer], cpu[layer], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- defined layers


def _outputs_over(model: nn.Module, layer: str, loader: DataLoader) -> torch.Tensor:
    """Every output value of ``layer`` over ``loader``, by a plain hook (the independent check)."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: seen.append(o.detach().flatten().clone())  # before in-place ReLUs
    )
    model.eval()
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize(
    "arch,layer",
    [
        ("test_resnet", "fc"),  # logits
        ("test_resnet", "bn1"),  # a BatchNorm output
        ("test_resnet", "layer1.0.bn2"),
        ("mobilenet_v2", "features.3"),  # the README's old example: linear bottlenecks
        ("mobilenet_v2", "features.17"),
        ("mobilenet_v2", "classifier.1"),
    ],
)
def test_layer_with_negative_outputs_is_refused_naming_a_relu_output(arch, layer):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=NUM_CLASSES, stem="cifar")
    loader = DataLoader(_dataset(n=8), batch_size=4)
    assert float(_outputs_over(model, layer, loader).min()) < 0  # the layer does go negative
    with pytest.raises(ValueError, match=rf"layer '{layer}' .* can output negative values") as e:
        compute_selectivity(model, loader, layers=[layer])
    assert len(str(e.value).splitlines()) == 1
    nearest = str(e.value).rsplit("is '", 1)[1].rstrip("'")
    assert float(_outputs_over(model, nearest, loader).min()) >= 0  # the suggestion is defined
    si = compute_selectivity(model, loader, layers=[nearest])[nearest]
    assert bool(((si >= 0) & (si <= 1)).all())


def test_readme_mobilenet_layers_that_are_relu_outputs_are_measured():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=NUM_CLASSES, stem="cifar")
    layers = ["features.0", "features.3.conv.1", "features.18"]
    loader = DataLoader(_dataset(n=8), batch_size=4)
    got = compute_selectivity(model, loader, layers=layers)
    for layer in layers:
        assert float(_outputs_over(model, layer, loader).min()) >= 0
        assert bool(((got[layer] >= 0) & (got[layer] <= 1)).all())


@pytest.mark.parametrize("names", [[""], ["layer1", " "]])
def test_an_empty_layer_name_is_refused(names):
    model, data = _model(), _dataset()
    with pytest.raises(ValueError, match="holds an empty name"):
        compute_selectivity(model, DataLoader(data, batch_size=5), layers=names)


def test_class_selectivity_refuses_negative_means():
    # u = (-1, 1): (1 - (-1)) / (1 + (-1) + eps) = 2 / eps, far outside [0, 1]
    with pytest.raises(ValueError, match="non-negative activations; a class mean is -1"):
        class_selectivity(torch.tensor([[-1.0], [1.0]]))


def test_a_relu_output_changed_in_place_is_refused():
    """Subtracting in place after the ReLU makes the output negative: not a ReLU output."""

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x).sub_(1.0)  # in place after the ReLU: no longer non-negative

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Shifted(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="layer '1' .* can output negative values"):
        compute_selectivity(model, DataLoader(_dataset(), batch_size=5), layers=["1"])


def test_layers_are_checked_inside_inference_mode_too():
    """Lightning's validation loop runs under ``torch.inference_mode``; the check still works."""
    from reaf_lightning.analysis.nonnegative import check_measurable_layers

    model = _model()
    with torch.inference_mode():
        example = torch.randn(2, 3, 8, 8)
        check_measurable_layers(model, ["layer1", "avgpool"], example)
        with pytest.raises(ValueError, match="layer 'fc' .* can output negative values"):
            check_measurable_layers(model, ["fc"], example)
