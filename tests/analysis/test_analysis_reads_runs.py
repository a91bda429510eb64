"""``reaf-analysis`` reads a run as ``reaf-lightning`` left it, and trusts nothing named in it.

Uses the suite's ``trained_run`` (one real ``reaf-lightning fit`` of the quick start, 1
epoch): its directory holds ``config.yaml`` and ``checkpoints/last.ckpt`` exactly as the
README's quick start leaves them. Crafted copies name classes that must never be imported:
importing ``reaf_evil_data`` would create a marker file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from reaf_lightning.analysis.cli import main
from reaf_lightning.analysis.hooks import compute_selectivity
from reaf_lightning.analysis.loading import load_model
from reaf_lightning.analysis.spec import ModelSpec
from reaf_lightning.data import DigitsDataModule

FAST = ["--max_batches", "1", "--progress", "false", "--layers", "[layer4]"]


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _fails(capsys, args: list[str], message: str) -> str:
    code, out, err = _run(capsys, args)
    assert code == 2, (out, err)
    assert err.startswith("reaf-analysis: error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


def _recorded(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]


#: The digits' settings a run lends the analysis: what the network sees and which images are
#: validation; batch size and workers are the module's defaults unless the user gives them.
REUSED = ("image_size", "val_fraction", "seed")


def _expected(run_dir: Path, **override) -> np.ndarray:
    """layer4's SI on the first validation batch, with the run's reused settings (and overrides)."""
    settings = {k: v for k, v in _recorded(run_dir).items() if k in REUSED}
    settings.update(override)
    net = load_model(ModelSpec(checkpoint=str(run_dir / "checkpoints" / "last.ckpt"))).net
    data = DigitsDataModule(**settings)
    data.setup("validate")
    si = compute_selectivity(net, data.val_dataloader(), layers=["layer4"], max_batches=1)
    return si["layer4"].numpy()


def _si(out: Path) -> np.ndarray:
    return pd.read_csv(out / "selectivity.csv").sort_values("unit").si.to_numpy()


# -- 19.1 -----------------------------------------------------------------------------------------
def test_without_data_the_runs_data_module_and_settings_are_rebuilt(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    code, printed, err = _run(capsys, ["--model_a.checkpoint", str(checkpoint),
                                       "--output_dir", str(out), *FAST])  # fmt: skip
    assert code == 0, err
    assert "class selectivity on DigitsDataModule/val" in printed and "note:" not in printed
    np.testing.assert_allclose(_si(out), _expected(trained_run), rtol=1e-5, atol=1e-6)


def test_a_run_directory_is_read_like_its_last_checkpoint(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["--model_a.checkpoint", str(trained_run),
                                 "--output_dir", str(out), *FAST])  # fmt: skip
    assert code == 0, err
    np.testing.assert_allclose(_si(out), _expected(trained_run), rtol=1e-5, atol=1e-6)


def test_the_command_line_wins_with_a_note_per_differing_setting(trained_run, tmp_path, capsys):
    recorded = _recorded(trained_run)
    out = tmp_path / "out"
    size = recorded["image_size"] + 4
    batch = recorded["batch_size"] // 2
    code, printed, err = _run(capsys, [
        "--model_a.checkpoint", str(trained_run / "checkpoints" / "last.ckpt"),
        "--data.class_path", "reaf_lightning.data.DigitsDataModule",
        "--data.init_args.image_size", str(size), "--data.init_args.batch_size", str(batch),
        "--data.init_args.seed", str(recorded["seed"]),  # same: no note
        "--output_dir", str(out), *FAST,
    ])  # fmt: skip
    assert code == 0, err
    notes = [line for line in printed.splitlines() if "note:" in line]
    # the digits' statistics are computed at the image size: they change with it
    trained_std = DigitsDataModule(image_size=recorded["image_size"]).std[0]
    now_std = DigitsDataModule(image_size=size).std[0]
    assert abs(now_std - trained_std) > 1e-3
    assert notes == [
        f"[reaf-analysis] note: data image_size={size} from the command line; "
        f"the run used {recorded['image_size']}",
        f"[reaf-analysis] note: test_reaf_resnet seed0: image_size: trained "
        f"{recorded['image_size']}, evaluated {size}",
        f"[reaf-analysis] note: test_reaf_resnet seed0: std: trained ({trained_std:.4g}, "
        f"{trained_std:.4g}, {trained_std:.4g}), evaluated ({now_std:.4g}, {now_std:.4g}, "
        f"{now_std:.4g})",
    ]  # the batch size is not the run's to give: no note
    expected = _expected(trained_run, image_size=size, batch_size=batch)
    np.testing.assert_allclose(_si(out), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def evil_module(tmp_path, monkeypatch) -> Path:
    """An importable module whose import creates a marker file."""
    marker = tmp_path / "imported"
    package = tmp_path / "site"
    package.mkdir()
    (package / "reaf_evil_data.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Evil:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(package))
    sys.modules.pop("reaf_evil_data", None)
    return marker


def test_only_the_checkpoints_record_says_which_data_the_run_used(
    trained_run, tmp_path, capsys, evil_module
):
    """Without a run record in the checkpoint the run directory's files are not consulted:
    its metrics.json and config.yaml may name any class, nothing is imported."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("wandb*"))
    last = run / "checkpoints" / "last.ckpt"
    content = torch.load(last, weights_only=True)
    content.pop("reaf_run")
    torch.save(content, last)
    record = json.loads((run / "metrics.json").read_text())
    record["data"]["class_path"] = "reaf_evil_data.Evil"
    (run / "metrics.json").write_text(json.dumps(record))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["class_path"] = "reaf_evil_data.Evil"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _fails(capsys, ["--model_a.checkpoint", str(run), "--output_dir", str(tmp_path / "o")],
           "give --data.class_path: model_a's run does not record its data module")  # fmt: skip
    assert not evil_module.exists()


def test_a_class_named_in_the_checkpoint_is_never_imported(
    trained_run, tmp_path, capsys, evil_module
):
    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    content["reaf_run"] = {"format": "reaf-run/1", "data": {"class_path": "reaf_evil_data.Evil"}}
    content["datamodule_hyper_parameters"] = {"_class_path": "reaf_evil_data.Evil"}
    crafted = tmp_path / "crafted.ckpt"  # loads under weights_only: only strings were added
    torch.save(content, crafted)
    _fails(capsys, ["--model_a.checkpoint", str(crafted), "--output_dir", str(tmp_path / "o")],
           "'reaf_evil_data.Evil', which is not one of this package's")  # fmt: skip
    assert not evil_module.exists()


# -- 19.4 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", ["../escape", "/abs", "a/b", ".."])
def test_a_stem_cannot_leave_the_output_dir(trained_run, tmp_path, capsys, stem):
    out = tmp_path / "out"
    _fails(capsys, ["--model_a.checkpoint", str(trained_run), "--output_dir", str(out),
                    "--stem", stem, *FAST], "plain file-name prefix")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, not even out/


def test_outputs_onto_links_fifos_or_inputs_are_refused_before_any_work(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "selectivity.csv")
    args = ["--model_a.checkpoint", str(trained_run), "--output_dir", str(out), *FAST]
    _fails(capsys, args, "selectivity.csv is a FIFO")
    (out / "selectivity.csv").unlink()
    (out / "selectivity.png").symlink_to(tmp_path / "elsewhere.png")
    _fails(capsys, args, "selectivity.png is a symbolic link")
    (out / "selectivity.png").unlink()
    plain = tmp_path / "weights.csv"  # a state_dict file whose name an output would take
    net = load_model(ModelSpec(checkpoint=str(trained_run))).net
    torch.save(net.state_dict(), plain)
    _fails(capsys, ["--model_a.checkpoint", str(trained_run), "--model_b.arch", "resnet18",
                    "--model_b.state_dict", str(plain), "--output_dir", str(tmp_path),
                    "--stem", "weights", *FAST], "is the input")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == []


# -- 19.5 -----------------------------------------------------------------------------------------
def test_logits_are_refused_naming_the_nearest_relu_output(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    _fails(capsys, ["--model_a.checkpoint", str(trained_run), "--output_dir", str(out),
                    "--layers", "[fc]", "--max_batches", "1", "--progress", "false"],
           "layer 'fc' (Linear) can output negative values, for which class selectivity is "
           "undefined (the paper measures stage outputs, which follow a ReLU); the nearest layer "
           "whose output is a ReLU's is 'avgpool'")  # fmt: skip
    assert not any(out.iterdir())


# -- 19.6 -----------------------------------------------------------------------------------------
def test_config_refuses_duplicate_keys_and_accepts_merge_keys(trained_run, tmp_path, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text(f"model_a:\n  checkpoint: {trained_run}\n  checkpoint: elsewhere\n")
    _fails(capsys, ["--config", str(dup), "--output_dir", str(tmp_path / "o")],
           "key 'checkpoint' is given twice (lines 2 and 3)")  # fmt: skip
    merged = tmp_path / "merged.yaml"
    out = tmp_path / "merged_out"
    merged.write_text(
        f"base: &run {{checkpoint: {trained_run}, label: base}}\n"
        "model_a:\n  <<: *run\n  label: mine\n"
        f"output_dir: {out}\nmax_batches: 1\nprogress: false\nlayers: [layer4]\n"
    )
    code, _, err = _run(capsys, ["--config", str(merged)])
    assert code == 2 and "base" in err  # an unknown top-level key stays an error ...
    merged.write_text(
        f"model_a:\n  <<: {{checkpoint: {trained_run}, label: base}}\n  label: mine\n"
        f"output_dir: {out}\nmax_batches: 1\nprogress: false\nlayers: [layer4]\n"
    )
    code, _, err = _run(capsys, ["--config", str(merged)])  # ... a merge key is not
    assert code == 0, err
    assert set(pd.read_csv(out / "selectivity.csv").model) == {"mine"}


def test_the_run_record_in_the_checkpoint_is_used_and_validated(trained_run, tmp_path, capsys):
    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    settings = {**_recorded(trained_run), "image_size": _recorded(trained_run)["image_size"] + 2}
    content["reaf_run"] = {
        "format": "reaf-run/1",
        "data": {"class_path": "reaf_lightning.data.DigitsDataModule", "init_args": settings},
    }
    alone = tmp_path / "alone.ckpt"  # no run directory around it: only the record says
    torch.save(content, alone)
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["--model_a.checkpoint", str(alone), "--output_dir", str(out),
                                 *FAST])  # fmt: skip
    assert code == 0, err
    expected = _expected(trained_run, image_size=settings["image_size"])
    np.testing.assert_allclose(_si(out), expected, rtol=1e-5, atol=1e-6)

    content["reaf_run"] = {"format": "reaf-run/1", "data": ["not", "a", "mapping"]}
    torch.save(content, alone)
    _fails(capsys, ["--model_a.checkpoint", str(alone), "--output_dir", str(out), *FAST],
           "alone.ckpt (reaf_run): not a reaf-run/1 run record: data")  # fmt: skip


def test_the_allow_list_is_every_data_module_the_package_exports():
    """A run of any of the package's data modules can be analysed: the light allow-list
    (no import at --help) names exactly the LightningDataModule classes of reaf_lightning.data."""
    import lightning.pytorch as pl

    import reaf_lightning.data as data
    from reaf_lightning.analysis.run_data import DATA_MODULES
    from reaf_lightning.data import BaseDataModule

    exported = {
        name
        for name in data.__all__
        if isinstance(getattr(data, name), type)
        and issubclass(getattr(data, name), pl.LightningDataModule)
        and getattr(data, name) is not BaseDataModule
    }
    assert set(DATA_MODULES) == exported
    for name, path in DATA_MODULES.items():
        module, _, attr = path.rpartition(".")
        assert getattr(__import__(module, fromlist=[attr]), attr) is getattr(data, name)


def test_a_checkpoint_given_as_state_dict_is_its_network_under_the_given_name(trained_run):
    """``arch`` + ``state_dict`` of a Lightning checkpoint: the checkpoint's network weights,
    built as the user says (here: as trained); the reference is Lightning's own loader."""
    from reaf_lightning import ImageClassifier

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    hp = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    kwargs = {**hp["arch_kwargs"], "num_classes": hp["num_classes"]}
    spec = ModelSpec(arch=hp["arch"], arch_kwargs=kwargs, state_dict=str(checkpoint), label="x")
    given = load_model(spec)
    reference = ImageClassifier.load_from_checkpoint(checkpoint, weights_only=True).net.eval()
    assert given.label == "x" and given.epoch == 0
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(given.net(x), reference(x), rtol=0, atol=0)
