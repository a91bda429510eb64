"""ResNet, WideResNet and ResNeXt with REAF / REAF+ convolutions (paper §III, Tables 1-2).

One configurable :class:`ResNet` covers every residual network of the paper.
Module and ``state_dict`` names follow torchvision (``conv1, bn1, layer1..layer4,
avgpool, fc``), so torchvision's pretrained weights load into the plain models.

Widths, with the stage multiplier ``s = 1, 2, 4, 8``:

* Bottleneck: ``1x1 in -> C*s``, ``3x3 C*s -> C'*s`` (stride here, torchvision
  "v1.5"; REAF here), ``1x1 C'*s -> 4*base*s``. ``C = C' = 64`` is ResNet50,
  ``C = C' = 128`` WideResNet50-2, ``C = C' = 128`` with ``groups=32`` ResNeXt50 32x4d.
  ``reaf_convs="all"`` makes all three convs REAF and ``group_convs="all"`` groups all
  three (the paper's Table 2 / Table 6 networks, paper §IV-C); the shortcut's 1x1
  projection stays dense in both (the paper does not mention it; ours).
* BasicBlock: ``3x3 in -> C*s`` (stride; REAF here), ``3x3 C*s -> base*s`` dense.
* REAF+: the bottleneck's third conv gets ``g_O`` (BN, ReLU) pairs on its input
  in place of ``bn2 -> relu``.

Stems: ``imagenet`` = 7x7/2 conv + 3x3/2 max pool; ``cifar`` = 3x3/1 conv and no
max pool (``maxpool`` is an ``nn.Identity`` so names stay aligned).

timm's arguments (``in_chans``, ``num_classes=0``, ``global_pool``, ``drop_rate``;
``reaf_lightning.models.head``) and its ``feature_info`` (the stem's and each
stage's output, in the order they run: timm's ``features_only`` wraps the network
in ``timm.models.FeatureListNet``, see ``reaf_lightning.timm``) are ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reaf_lightning.layers import REAFPlusConv2d, REAFSpec, create_conv2d, parse_reaf
from reaf_lightning.models.head import check_head, global_pool_layer

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]

Stem = Literal["cifar", "imagenet"]
REAFConvs = Literal["middle", "all"]
StrideOn = Literal["1x1", "3x3"]


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first one (which carries the stride) may be REAF."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_width: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        reaf: REAFSpec | None = None,
        reaf_convs: REAFConvs = "middle",
        group_convs: REAFConvs = "middle",
        reaf_plus_groups: int | None = None,
        impl: str = "auto",
        stride_on: StrideOn = "3x3",
    ) -> None:
        super().__init__()
        if stride_on != "3x3":
            raise ValueError(
                f"stride_on={stride_on!r}: a BasicBlock has no 1x1 conv, its stride is on the "
                "first 3x3; stride_on='1x1' is a bottleneck layout (ResNet50 and up)"
            )
        if groups != 1 or reaf_plus_groups or out_width != width:
            raise ValueError(
                "BasicBlock supports neither groups, REAF+ nor out_width != width "
                f"(got groups={groups}, reaf_plus_groups={reaf_plus_groups}, "
                f"width={width}, out_width={out_width})"
            )
        self.conv1 = create_conv2d(in_channels, width, 3, stride, reaf=reaf, impl=impl)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        second_reaf = reaf if reaf_convs == "all" else None
        self.conv2 = create_conv2d(width, out_channels, 3, reaf=second_reaf, impl=impl)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups or REAF) -> 1x1, optionally REAF+ on the last conv."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_width: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        reaf: REAFSpec | None = None,
        reaf_convs: REAFConvs = "middle",
        group_convs: REAFConvs = "middle",
        reaf_plus_groups: int | None = None,
        impl: str = "auto",
        stride_on: StrideOn = "3x3",
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        outer_reaf = reaf if reaf_convs == "all" else None
        outer_groups = groups if group_convs == "all" else 1
        self.conv1 = create_conv2d(
            in_channels, width, 1, stride_1x1, groups=outer_groups, reaf=outer_reaf, impl=impl
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = create_conv2d(
            width, out_width, 3, stride_3x3, groups=groups, reaf=reaf, impl=impl
        )
        self.reaf_plus = bool(reaf_plus_groups)
        if self.reaf_plus:
            if outer_reaf is not None or outer_groups != 1:
                raise ValueError(
                    "REAF+ on the third conv needs a dense third conv: it cannot be combined "
                    "with reaf_convs='all' or group_convs='all'"
                )
            # bn2 -> relu are replaced by the per-group pairs inside the REAF+ conv.
            self.conv3 = REAFPlusConv2d(out_width, out_channels, 1, groups_out=reaf_plus_groups)
        else:
            self.bn2 = nn.BatchNorm2d(out_width)
            self.conv3 = create_conv2d(
                out_width, out_channels, 1, groups=outer_groups, reaf=outer_reaf, impl=impl
            )
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if not self.reaf_plus:
            out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class ResNet(nn.Module):
    """A residual network with optional REAF / REAF+ convolutions.

    Args:
        block: ``"basic"`` (ResNet18/34) or ``"bottleneck"`` (ResNet50 and up).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        num_classes: classifier outputs; 0: no classifier (the pooled features come out).
        stem: ``"imagenet"`` (7x7/2 conv + max pool, 224x224 input) or ``"cifar"``
            (3x3/1 conv, no max pool, 32x32 input).
        width: ``C``, channels of the first conv of a stage-1 block (times ``s`` later).
        out_width: ``C'``, output channels of the (REAF) 3x3 conv; defaults to ``width``.
        groups: ordinary grouped 3x3 conv (ResNeXt cardinality).
        reaf: the REAF setting of the 3x3 conv (``"4-3-4"``, a tuple or a ``REAFSpec``;
            parsed once, here, and handed to every layer as a ``REAFSpec``), or ``None``
            for a plain network.
        reaf_convs: ``"middle"`` (the paper's default) or ``"all"`` convs of a block.
        group_convs: ``"middle"`` (ResNeXt) or ``"all"`` (the paper's Table 2 / 6 ResNeXt:
            the three bottleneck convs grouped, paper §IV-C) convs carry ``groups``.
        reaf_plus_groups: ``g_O`` of REAF+ on each bottleneck's third conv; ``None`` = off.
        impl: REAF execution strategy, ``"auto"`` (the default, timed per layer) or a name of
            ``reaf_lightning.layers.STRATEGIES``.
        base_channels: stem width; stage ``s`` outputs ``base * s * expansion``
            channels (64 in every paper model; smaller for tests).
        zero_init_residual: zero the last BN of each block (Goyal et al.); off, as in the paper.
        stride_on: the conv of a downsampling bottleneck that carries the stride.
        in_chans: input channels (timm's name; 3 for RGB).
        drop_rate: dropout before the classifier (timm's; 0, as in the paper).
        global_pool: ``"avg"`` (the paper's) or timm's ``"max"``, ``"avgmax"``,
            ``"catavgmax"``, ``""`` (none; ``num_classes=0`` only).
    """

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: tuple[int, int, int, int] | list[int],
        num_classes: int = 1000,
        stem: Stem = "imagenet",
        width: int = 64,
        out_width: int | None = None,
        groups: int = 1,
        reaf: str | Sequence[int] | REAFSpec | None = None,
        reaf_convs: REAFConvs = "middle",
        group_convs: REAFConvs = "middle",
        reaf_plus_groups: int | None = None,
        impl: str = "auto",
        base_channels: int = 64,
        zero_init_residual: bool = False,
        stride_on: StrideOn = "3x3",
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise ValueError(f"block={block!r} must be one of {sorted(blocks)}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem={stem!r} must be 'cifar' or 'imagenet'")
        if stride_on not in ("1x1", "3x3"):
            raise ValueError(f"stride_on={stride_on!r} must be '1x1' or '3x3'")
        for name, value in (("reaf_convs", reaf_convs), ("group_convs", group_convs)):
            if value not in ("middle", "all"):
                raise ValueError(f"{name}={value!r} must be 'middle' or 'all'")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers={list(layers)} must be four positive block counts")
        check_head(num_classes, in_chans, global_pool, drop_rate)
        for name, value in (
            ("width", width),
            ("base_channels", base_channels),
            ("groups", groups),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        out_width = width if out_width is None else out_width
        if out_width < 1:
            raise ValueError(f"out_width={out_width} must be a positive integer")
        block_cls = blocks[block]
        reaf = None if reaf is None else parse_reaf(reaf)
        self.stem = stem
        self.reaf = reaf
        # The resolved architecture, as reaf-zoo reports it.
        self.width, self.out_width, self.groups = width, out_width, groups
        self.reaf_convs = None if reaf is None else reaf_convs
        self.reaf_plus_groups = reaf_plus_groups
        self.stride_on = stride_on

        # Registered in the order they run (timm's FeatureListNet relies on it).
        imagenet = stem == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, 1)
        self.conv1 = nn.Conv2d(in_chans, base_channels, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        reduction = stride
        self.feature_info = [{"num_chs": base_channels, "reduction": reduction, "module": "relu"}]
        reduction *= 2 if imagenet else 1

        in_channels = base_channels
        for stage, num_blocks in enumerate(layers):
            s = 2**stage
            reduction *= 2 if stage > 0 else 1
            out_channels = base_channels * s * block_cls.expansion
            stage_blocks = []
            for i in range(num_blocks):
                stage_blocks.append(
                    block_cls(
                        in_channels,
                        width * s,
                        out_width * s,
                        out_channels,
                        stride=2 if (i == 0 and stage > 0) else 1,
                        groups=groups,
                        reaf=reaf,
                        reaf_convs=reaf_convs,
                        group_convs=group_convs,
                        reaf_plus_groups=reaf_plus_groups,
                        impl=impl,
                        stride_on=stride_on,
                    )
                )
                in_channels = out_channels
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
            self.feature_info.append(
                {"num_chs": out_channels, "reduction": reduction, "module": f"layer{stage + 1}"}
            )
        self.avgpool, per_channel = global_pool_layer(global_pool)
        self.fc = (
            nn.Linear(in_channels * per_channel, num_classes) if num_classes else nn.Identity()
        )
        self.num_features, self.num_classes = in_channels, num_classes
        self.global_pool, self.drop_rate = global_pool, float(drop_rate)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    nn.init.zeros_(last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and the four stages: the feature map before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling, dropout and the classifier (``pre_logits``: stop before it), as timm's."""
        x = self.avgpool(x)
        if self.global_pool:  # "": the feature map itself, as timm returns it
            x = torch.flatten(x, 1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
