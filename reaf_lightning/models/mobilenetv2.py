"""MobileNetV2 (width 1.0) with optional REAF+ on every projection conv (paper Table 7).

Module and ``state_dict`` names follow torchvision (``features``, ``classifier``;
``features.N.conv.*`` inside inverted residuals), so torchvision's pretrained
weights load into the plain model.

REAF+ replaces the ``BN -> ReLU6`` after each depthwise conv with ``g_O``
(BN, ReLU6) pairs feeding the projection (second pointwise) conv's output
groups: ``conv.1`` keeps only the depthwise conv, ``conv.2`` becomes a
:class:`~reaf_lightning.layers.REAFPlusConv2d`.

CIFAR stem *(ours; the paper does not say)*: the first conv and the first
stride-2 stage (``t=6, c=24``) use stride 1, so a 32x32 input ends at 4x4.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from reaf_lightning.layers import REAFPlusConv2d

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), residual when shapes allow."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        reaf_plus_groups: int | None = None,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(
                Conv2dNormActivation(in_channels, hidden, kernel_size=1, activation_layer=nn.ReLU6)
            )
        if reaf_plus_groups:
            layers += [
                nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)),
                REAFPlusConv2d(
                    hidden, out_channels, 1, groups_out=reaf_plus_groups, activation=nn.ReLU6
                ),
            ]
        else:
            layers += [
                Conv2dNormActivation(
                    hidden, hidden, stride=stride, groups=hidden, activation_layer=nn.ReLU6
                ),
                nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            ]
        layers.append(nn.BatchNorm2d(out_channels))
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier 1.0.

    Args:
        num_classes: classifier outputs.
        stem: ``"imagenet"`` (224x224) or ``"cifar"`` (32x32; see module docstring).
        reaf_plus_groups: ``g_O`` of REAF+ on every projection conv; ``None`` = plain.
        dropout: dropout before the classifier (0.2 as torchvision).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stem: Literal["cifar", "imagenet"] = "imagenet",
        reaf_plus_groups: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem={stem!r} must be 'cifar' or 'imagenet'")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be a positive integer")
        cifar = stem == "cifar"
        in_channels, last_channels = 32, 1280
        features: list[nn.Module] = [
            Conv2dNormActivation(
                3, in_channels, stride=1 if cifar else 2, activation_layer=nn.ReLU6
            )
        ]
        setting = list(INVERTED_RESIDUAL_SETTING)
        if cifar:
            first_stride2 = next(i for i, row in enumerate(setting) if row[3] == 2)
            setting[first_stride2] = (*setting[first_stride2][:3], 1)
        for t, c, n, s in setting:
            for i in range(n):
                features.append(
                    InvertedResidual(in_channels, c, s if i == 0 else 1, t, reaf_plus_groups)
                )
                in_channels = c
        features.append(
            Conv2dNormActivation(
                in_channels, last_channels, kernel_size=1, activation_layer=nn.ReLU6
            )
        )
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(last_channels, num_classes)
        )
        self.num_features = last_channels
        self.stem = stem
        self.reaf_plus_groups = reaf_plus_groups
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))
