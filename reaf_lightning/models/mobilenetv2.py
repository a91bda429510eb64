"""MobileNetV2 (width 1.0) with optional REAF+ on every projection conv (paper Table 7).

Module and ``state_dict`` names follow torchvision (``features``, ``classifier``;
``features.N.conv.*`` inside inverted residuals), so torchvision's pretrained
weights load into the plain model.

REAF+ replaces the ``BN -> ReLU6`` after each depthwise conv with ``g_O``
(BN, ReLU6) pairs feeding the projection (second pointwise) conv's output
groups: ``conv.1`` keeps only the depthwise conv, ``conv.2`` becomes a
:class:`~reaf_lightning.layers.REAFPlusConv2d`.

CIFAR variant *(ours; the paper does not describe one)*: the MobileNetV2 of the
pytorch-cifar100 recipe, whose CIFAR-100 schedule the paper uses, because it
has the paper's parameter counts (Table 7: 2.37 M, 2.38 M with REAF+; ours
2.369 M and 2.382 M): a 1x1 stem conv with padding 1 and stride 1, the stage
``t=6, c=160`` at stride 1 (a 32x32 input ends at 5x5), an expansion conv in the
``t=1`` block too, and a bias in every conv except REAF+'s.

timm's arguments (``in_chans``, ``num_classes=0``, ``global_pool``, ``drop_rate``;
``reaf_lightning.models.head``) and its ``feature_info`` (the outputs timm's own
``mobilenetv2_100`` returns with ``features_only``: the end of each stage before
a stride-2 stage, and of the last) are ours.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from reaf_lightning.layers import REAFPlusConv2d
from reaf_lightning.models.head import check_head, global_pool_layer

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
        cifar: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1 or cifar:
            layers.append(
                Conv2dNormActivation(
                    in_channels, hidden, kernel_size=1, activation_layer=nn.ReLU6, bias=cifar
                )
            )
        if reaf_plus_groups:
            layers += [
                nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=cifar)),
                REAFPlusConv2d(
                    hidden, out_channels, 1, groups_out=reaf_plus_groups, activation=nn.ReLU6
                ),
            ]
        else:
            layers += [
                Conv2dNormActivation(
                    hidden,
                    hidden,
                    stride=stride,
                    groups=hidden,
                    activation_layer=nn.ReLU6,
                    bias=cifar,
                ),
                nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=cifar),
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
        num_classes: classifier outputs; 0: no classifier (the pooled features come out).
        stem: ``"imagenet"`` (224x224) or ``"cifar"`` (32x32; see module docstring).
        reaf_plus_groups: ``g_O`` of REAF+ on every projection conv; ``None`` = plain.
        drop_rate: dropout before the classifier (0.2 as torchvision; timm's name).
        in_chans: input channels (timm's name; 3 for RGB).
        global_pool: ``"avg"`` (the paper's) or timm's ``"max"``, ``"avgmax"``,
            ``"catavgmax"``, ``""`` (none; ``num_classes=0`` only).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stem: Literal["cifar", "imagenet"] = "imagenet",
        reaf_plus_groups: int | None = None,
        drop_rate: float = 0.2,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem={stem!r} must be 'cifar' or 'imagenet'")
        check_head(num_classes, in_chans, global_pool, drop_rate)
        cifar = stem == "cifar"
        in_channels, last_channels = 32, 1280
        stem_conv = {"kernel_size": 1, "stride": 1, "padding": 1, "bias": True} if cifar else {}
        stem_conv = {"stride": 2, **stem_conv}
        features: list[nn.Module] = [
            Conv2dNormActivation(in_chans, in_channels, **stem_conv, activation_layer=nn.ReLU6)
        ]
        reduction = stem_conv["stride"]
        self.feature_info = []
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            s = 1 if cifar and c == 160 else s
            reduction *= s
            for i in range(n):
                features.append(
                    InvertedResidual(in_channels, c, s if i == 0 else 1, t, reaf_plus_groups, cifar)
                )
                in_channels = c
            following = INVERTED_RESIDUAL_SETTING[stage + 1 : stage + 2]
            if not following or following[0][3] > 1:  # timm's stage ends (ImageNet strides)
                module = f"features.{len(features) - 1}"
                self.feature_info.append({"num_chs": c, "reduction": reduction, "module": module})
        features.append(
            Conv2dNormActivation(
                in_channels, last_channels, kernel_size=1, activation_layer=nn.ReLU6, bias=cifar
            )
        )
        self.features = nn.Sequential(*features)
        self.avgpool, per_channel = global_pool_layer(global_pool)
        head_width = last_channels * per_channel
        self.classifier = nn.Sequential(
            nn.Dropout(p=drop_rate),
            nn.Linear(head_width, num_classes) if num_classes else nn.Identity(),
        )
        self.num_features, self.num_classes, self.global_pool = (
            last_channels,
            num_classes,
            global_pool,
        )
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
        x = self.avgpool(self.features(x))
        if self.global_pool:  # "": the feature map itself, as timm returns it
            x = torch.flatten(x, 1)
        return self.classifier(x)
