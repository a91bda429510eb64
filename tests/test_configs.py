"""configs/: every paper experiment and the quick start parse and build, and stay generated.

Each config is parsed by the real CLI (``main([... "--print_config"])``), then
its data module, network and W&B logger are instantiated from the printed,
fully resolved config — without any dataset on disk and without ``setup``.
The networks are built on the ``meta`` device (shapes only, no memory, no
compute), so all of Tables 3-7 are checked in seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from reaf_lightning import ImageClassifier
from reaf_lightning.cli import main
from reaf_lightning.loggers import WandbLogger
from reaf_lightning.models import create_model
from reaf_lightning.models.complexity import count_parameters
from reaf_lightning.models.paper import PaperRow, paper_rows

REPO = Path(__file__).resolve().parents[1]
DATA_CLASSES = {
    "cifar100": "reaf_lightning.data.CIFAR100DataModule",
    "imagenet": "reaf_lightning.data.ImageNetDataModule",
}


def _generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "configs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolved(*configs: str) -> dict:
    """The config ``reaf-lightning fit --config ...`` would run, as printed by the CLI."""
    args = ["fit"]
    for config in configs:
        args += ["--config", str(REPO / config)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_committed_configs_equal_the_generator_output():
    generate = _generator()
    rendered = generate.render_all()
    assert len(rendered) == len(paper_rows())
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path} is stale: run python configs/generate.py"
    assert generate.stale_files(rendered) == []


def test_table3_has_the_baseline_and_29_reaf_rows():
    rows = paper_rows("table3")
    assert sum(r.baseline for r in rows) == 1 and sum(not r.baseline for r in rows) == 29
    assert all((REPO / "configs" / "table3" / f"{r.id}.yaml").is_file() for r in rows)


@pytest.mark.parametrize("row", paper_rows(), ids=lambda r: f"{r.table}/{r.id}")
def test_paper_config_parses_and_builds(row: PaperRow):
    cfg = _resolved(f"configs/recipes/{row.dataset}.yaml", f"configs/{row.table}/{row.id}.yaml")
    assert cfg["model"]["arch"] == row.model
    assert cfg["model"]["arch_kwargs"] == {"stem": row.stem, **row.kwargs}
    assert cfg["data"]["class_path"] == DATA_CLASSES[row.dataset]
    assert cfg["trainer"]["default_root_dir"] == f"logs/{row.table}/{row.id}"

    data = instantiate_class((), cfg["data"])  # constructor only: no files are read
    assert type(data).__name__ == DATA_CLASSES[row.dataset].rsplit(".", 1)[1]
    with torch.device("meta"):
        model = ImageClassifier(num_classes=row.num_classes, **cfg["model"])
        reference = create_model(row.model, **row.model_kwargs())
    assert count_parameters(model.net) == count_parameters(reference)

    logger = instantiate_class((), cfg["trainer"]["logger"])  # lazy: no W&B run starts
    assert isinstance(logger, WandbLogger)
    init = logger._wandb_init  # what wandb.init will receive
    assert (init["name"], init["group"], init["project"]) == (
        f"{row.table}/{row.id}",
        row.table,
        "reaf-lightning",
    )


def test_recipes_are_the_papers():
    """SPEC.md section 4, value by value."""
    cifar = _resolved("configs/recipes/cifar100.yaml", "configs/table3/resnet50.yaml")
    model, trainer, data = cifar["model"], cifar["trainer"], cifar["data"]["init_args"]
    assert trainer["max_epochs"] == 200
    assert (model["lr"], model["momentum"], model["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert (model["schedule"], model["milestones"], model["gamma"]) == (
        "multistep",
        [60, 120, 160],
        0.2,
    )
    assert model["warmup_epochs"] == 1
    assert data["batch_size"] * trainer["devices"] == model["lr_reference_batch_size"] == 128
    assert data["augment"] is True and data["val_split"] == "test"

    imagenet = _resolved("configs/recipes/imagenet.yaml", "configs/table5/resnet50.yaml")
    model, trainer, data = imagenet["model"], imagenet["trainer"], imagenet["data"]["init_args"]
    assert trainer["max_epochs"] == 100
    assert (model["lr"], model["momentum"], model["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert (model["schedule"], model["step_size"], model["gamma"]) == ("step", 30, 0.1)
    assert model["warmup_epochs"] == 0
    global_batch = data["batch_size"] * trainer["devices"] * trainer["num_nodes"]
    assert global_batch == model["lr_reference_batch_size"] == 256


def test_quickstart_builds_a_reaf_model_on_digits():
    cfg = _resolved("configs/quickstart.yaml")
    assert cfg["model"]["arch_kwargs"]["reaf"] == "4-3-4"
    assert cfg["trainer"]["accelerator"] == "cpu"
    data = instantiate_class((), cfg["data"])
    model = ImageClassifier(num_classes=data.num_classes, **cfg["model"])
    convs = [m for m in model.net.modules() if type(m).__name__ == "REAFConv2d"]
    assert convs and all((c.g_i, c.g_m, c.g_o) == (4, 3, 4) for c in convs)
    assert isinstance(instantiate_class((), cfg["trainer"]["logger"]), WandbLogger)
