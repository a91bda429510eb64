"""``reaf-analysis`` over seeds: experiment directories, per-network accuracy, the models
compared over their networks, and the per-channel KS test kept within each pair.

Two "experiments" of three seeds are made from the suite's ``trained_run`` checkpoint
(the network's weights perturbed by seeded noise, a run record per seed), laid out as
``reaf-lightning`` leaves them (``<experiment>/seed<N>/checkpoints/last.ckpt``). The
command's tables are compared with the library run by hand and with SciPy's t-tests.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from reaf_lightning.analysis.cli import main
from reaf_lightning.analysis.hooks import TopOne, compute_selectivity
from reaf_lightning.analysis.loading import load_model
from reaf_lightning.analysis.spec import ModelSpec
from reaf_lightning.analysis.stats import at_chance
from reaf_lightning.data import DigitsDataModule

LAYERS = ["layer1", "layer4"]
SEEDS = 3
BATCHES = 2
#: The tables are written with 8 significant digits: values recomputed from them agree to this.
CSV = 1e-7


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def experiments(trained_run, tmp_path_factory) -> dict[str, Path]:
    """``a`` and ``b``: three seeds each, perturbed copies of the trained network."""
    root = tmp_path_factory.mktemp("experiments")
    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    out = {}
    for name, scale in (("a", 0.05), ("b", 0.2)):
        for seed in range(SEEDS):
            g = torch.Generator().manual_seed(seed + (100 if name == "b" else 0))
            state = {
                k: v + scale * v.std() * torch.randn(v.shape, generator=g)
                if k.startswith("net.") and k.endswith("conv1.weight") else v
                for k, v in content["state_dict"].items()
            }  # fmt: skip
            record = {**content["reaf_run"], "seed": seed}
            path = root / name / f"seed{seed}" / "checkpoints" / "last.ckpt"
            path.parent.mkdir(parents=True)
            torch.save({**content, "state_dict": state, "reaf_run": record}, path)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def analysed(experiments, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("seeds_out")
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exc:
        with contextlib.redirect_stdout(printed):
            main(["--model_a.checkpoint", str(experiments["a"]), "--model_a.label", "A",
                  "--model_b.checkpoint", str(experiments["b"]), "--model_b.label", "B",
                  "--layers", f"[{', '.join(LAYERS)}]", "--max_batches", str(BATCHES),
                  "--progress", "false", "--output_dir", str(out)])  # fmt: skip
    assert exc.value.code == 0
    return {"out": out, "printed": printed.getvalue()}


def _batches() -> list:
    """The first batches of the run's validation split (its image size, the module's batch)."""
    data = DigitsDataModule(image_size=16)
    data.setup("validate")
    return [batch for _, batch in zip(range(BATCHES), data.val_dataloader())]


def test_every_seed_is_one_network_with_its_selectivity_and_accuracy(experiments, analysed):
    out = analysed["out"]
    summary = pd.read_csv(out / "selectivity_summary.csv")
    assert sorted(set(zip(summary.model, summary.run))) == [
        (m, f"seed{s}") for m in ("A", "B") for s in range(SEEDS)
    ]
    table = pd.read_csv(out / "selectivity.csv")
    batches = _batches()
    for model, name in (("A", "a"), ("B", "b")):
        for seed in range(SEEDS):
            net = load_model(ModelSpec(checkpoint=str(experiments[name] / f"seed{seed}"))).net
            si = compute_selectivity(net, batches, layers=LAYERS)
            with torch.no_grad():
                hits = sum(int((net(x).argmax(1) == y).sum()) for x, y in batches)
            rows = table[(table.model == model) & (table.run == f"seed{seed}")]
            for layer in LAYERS:
                got = rows[rows.layer == layer].sort_values("unit").si.to_numpy()
                np.testing.assert_allclose(got, si[layer].numpy(), rtol=1e-5, atol=1e-6)
            mine = summary[(summary.model == model) & (summary.run == f"seed{seed}")]
            assert mine.acc1.iloc[0] == pytest.approx(hits / sum(len(y) for _, y in batches))


def test_models_over_seeds_and_their_difference_are_scipys_intervals(analysed):
    out = analysed["out"]
    summary = pd.read_csv(out / "selectivity_summary.csv")
    seeds = pd.read_csv(out / "selectivity_seeds.csv", keep_default_na=False)
    difference = pd.read_csv(out / "selectivity_difference.csv", keep_default_na=False)
    per_network = {("mean_si", layer): summary[summary.layer == layer] for layer in LAYERS}
    per_network[("acc1", "")] = summary.drop_duplicates(["model", "run"])
    column = {"mean_si": "mean", "acc1": "acc1"}
    for (measure, layer), rows in per_network.items():
        values = {m: rows[rows.model == m][column[measure]].to_list() for m in ("A", "B")}
        for model, x in values.items():
            got = seeds[
                (seeds.measure == measure) & (seeds.layer == layer) & (seeds.model == model)
            ]
            ref = scipy.stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy.stats.sem(x))
            if statistics.stdev(x) == 0:  # SciPy gives NaN; no spread: the mean itself
                ref = (x[0], x[0])
            assert got["runs"].item() == SEEDS
            assert got["mean"].item() == pytest.approx(statistics.fmean(x), abs=CSV)
            assert got["std"].item() == pytest.approx(statistics.stdev(x), abs=CSV)
            assert (got.ci_low.item(), got.ci_high.item()) == pytest.approx(ref, abs=CSV)
        row = difference[(difference.measure == measure) & (difference.layer == layer)]
        mean_difference = np.mean(values["B"]) - np.mean(values["A"])
        assert row.difference.item() == pytest.approx(mean_difference, abs=CSV)
        if statistics.stdev(values["A"]) + statistics.stdev(values["B"]) == 0:
            ci = (mean_difference, mean_difference)
        else:
            welch = scipy.stats.ttest_ind(values["B"], values["A"], equal_var=False)
            ci = tuple(welch.confidence_interval(0.95))
        assert (row.ci_low.item(), row.ci_high.item()) == pytest.approx(ci, abs=CSV)
    printed = analysed["printed"]
    assert "B minus A over seeds (Welch 95% interval)" in printed
    assert "no spread over seeds" not in printed


def test_the_ks_test_stays_within_each_pair_of_networks(analysed):
    ks = pd.read_csv(analysed["out"] / "selectivity_ks.csv")
    pairs = sorted(set(zip(ks.run_a, ks.run_b)))
    assert pairs == [(f"seed{s}", f"seed{s}") for s in range(SEEDS)]
    table = pd.read_csv(analysed["out"] / "selectivity.csv")
    for row in ks.itertuples():
        a = table[(table.model == "A") & (table.run == row.run_a) & (table.layer == row.layer)]
        b = table[(table.model == "B") & (table.run == row.run_b) & (table.layer == row.layer)]
        assert row.p_value == pytest.approx(scipy.stats.ks_2samp(a.si, b.si).pvalue, rel=1e-6)
    printed = analysed["printed"]
    assert "within each pair of networks" in printed and "not the models" in printed
    assert "(largest KS statistic, mean over pairs)" in printed


def test_a_list_of_runs_is_a_model_and_bad_sets_are_one_line(experiments, tmp_path, capsys):
    a = experiments["a"]
    out = tmp_path / "out"
    fast = ["--layers", "[layer4]", "--max_batches", "1", "--progress", "false"]
    code, _, err = _run(capsys, ["--model_a.checkpoint", f"[{a / 'seed0'}, {a / 'seed2'}]",
                                 "--output_dir", str(out), *fast])  # fmt: skip
    assert code == 0, err
    assert list(dict.fromkeys(pd.read_csv(out / "selectivity.csv").run)) == ["seed0", "seed2"]

    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    (broken / "seed1" / "checkpoints" / "last.ckpt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    twice = f"[{a}, {a / 'seed1' / 'checkpoints' / 'last.ckpt'}]"
    for given, message in [
        (str(broken), f"experiment directory {broken}: seed1 has no checkpoints/last.ckpt"),
        (str(empty), f"{empty} is neither a run directory (checkpoints/last.ckpt) nor an "
                     "experiment directory"),
        (twice, "is given twice"),
    ]:  # fmt: skip
        code, _, err = _run(capsys, ["--model_a.checkpoint", given,
                                     "--output_dir", str(tmp_path / "o"), *fast])  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "o").exists()  # refused before anything is created


@pytest.mark.parametrize(
    ("correct", "total", "counts"), [(36, 360, [36] * 10), (60, 360, [36] * 10), (10, 10, [9, 1])]
)
def test_chance_is_the_most_frequent_class_and_the_test_one_sided(correct, total, counts):
    chance, p = at_chance(correct, total, counts, alpha=0.05)
    assert chance == max(counts) / total
    # P(X >= correct) for X ~ Binomial(total, chance), summed term by term
    reference = sum(
        math.comb(total, k) * chance**k * (1 - chance) ** (total - k)
        for k in range(correct, total + 1)
    )
    assert p == pytest.approx(reference, rel=1e-9)


def test_top_one_counts_hits_and_refuses_what_it_cannot_score():
    top1 = TopOne(num_classes=3)
    top1(torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]]), torch.tensor([1, 2]))
    assert (top1.correct, top1.total, top1.accuracy) == (1, 2, 0.5)
    top1(torch.zeros(2, 4), torch.tensor([0, 1]))  # another label set: no accuracy at all
    assert top1.accuracy is None
    assert TopOne().accuracy is None  # nothing seen
