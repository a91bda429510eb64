"""A converted torchvision network trained with reaf-lightning fit and read by reaf-analysis."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision
from helpers.tiny_run import TINY_ARGS, finish_wandb, isolate_wandb

import reaf_lightning
from reaf_lightning.layers import REAFConv2d
from reaf_lightning.models.complexity import count_macs

CONVERT = "{convert: {reaf: 4-3-4, match: flops, input_size: [3, 16, 16]}}"


@pytest.mark.slow
def test_fit_a_converted_torchvision_resnet_then_analyse_it(tmp_path, monkeypatch):
    from reaf_lightning.analysis.cli import main as analysis_main
    from reaf_lightning.training.cli import run

    isolate_wandb(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [*TINY_ARGS, "--model.arch", "torchvision.resnet18", "--model.arch_kwargs", CONVERT]
    try:
        run(["fit", *args, "--trainer.max_epochs", "1"])
    finally:
        finish_wandb()
    run_dir = next(p.parent for p in (tmp_path / "logs").rglob("metrics.json"))
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["hyper_parameters"]["arch"] == "torchvision.resnet18"

    # The trained network is torchvision's ResNet18 with REAF 3x3 convs, widened to its FLOPs.
    expected, report = reaf_lightning.convert(
        torchvision.models.resnet18(num_classes=10), "4-3-4", input_size=(3, 16, 16)
    )
    assert {k: v.shape for k, v in state["state_dict"].items() if k.startswith("net.")} == {
        f"net.{k}": v.shape for k, v in expected.state_dict().items()
    }
    assert isinstance(expected.layer2[0].conv1, REAFConv2d) and report.width == 72
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["gmacs"] == pytest.approx(count_macs(expected, (3, 16, 16)) / 1e9)

    out = tmp_path / "analysis"
    with pytest.raises(SystemExit) as exit_info:
        analysis_main(["--model_a.checkpoint", str(checkpoint), "--output_dir", str(out),
                       "--data.class_path", "reaf_lightning.data.DigitsDataModule",
                       "--data.init_args.image_size", "16", "--max_batches", "2",
                       "--progress", "false"])  # fmt: skip
    assert exit_info.value.code == 0
    assert (out / "selectivity.csv").is_file() and os.path.getsize(out / "selectivity.csv") > 0
