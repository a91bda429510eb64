"""Issue 6, item 8: without network and without credentials a run neither hangs nor fails.

Two real ``reaf-lightning fit`` processes with the project's W&B logger in its
default ``mode: auto`` and no ``WANDB_MODE``: one without any credentials, one
with an API key but no way to reach the server. Where the machine allows it
(root, ``unshare -n``), both run in a network namespace of their own with no
network at all (not even DNS); otherwise the second one points ``WANDB_BASE_URL``
at a closed local port. Both must finish with status 0 and leave a complete
offline W&B run whose summary matches the checkpoint.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import one_thread, tiny_config, write_config  # noqa: F401 (fixture)
from wandb_records import run_contents

TESTS = Path(__file__).resolve().parent


def _network_namespace() -> list[str]:
    """``["unshare", "-n"]`` when this user may create a network namespace, else ``[]``."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_and_no_credentials_means_offline_not_failure(tmp_path):
    isolate = _network_namespace()
    cases = {
        "no_credentials": ({}, "no W&B credentials for api.wandb.ai"),
        "key_but_no_network": ({"WANDB_API_KEY": "local-" + "0" * 40}, "is not reachable"),
    }
    procs = {}
    for name, (extra, _) in cases.items():
        home = tmp_path / name / "home"
        home.mkdir(parents=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("WANDB_") and k not in ("NETRC", "REAF_DEBUG")
        }
        env.update(
            HOME=str(home),
            NETRC=str(home / "no-netrc"),
            WANDB_CONFIG_DIR=str(home / "wandb-config"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            **extra,
        )
        if not isolate and extra:
            env["WANDB_BASE_URL"] = f"http://127.0.0.1:{_closed_port()}"
        root = tmp_path / name / "run"
        cfg = tiny_config(root, max_epochs=1)
        cfg["trainer"]["logger"] = {
            "class_path": "reaf_lightning.loggers.WandbLogger",
            "init_args": {"project": "reaf-lightning", "name": name},
        }
        config = write_config(tmp_path / name / "tiny.yaml", cfg)
        cmd = [*isolate, sys.executable, "-m", "reaf_lightning.cli", "fit", "--config", str(config)]
        procs[name] = (
            root,
            subprocess.Popen(
                cmd,
                cwd=tmp_path / name,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
    for name, (root, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=300)  # a hang fails here
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name}: the run hung")
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        reason = cases[name][1]
        assert "W&B logs offline (" in out + err and reason in out + err, name
        (run_file,) = glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb"))
        summary = run_contents(run_file)["summary"]
        ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
        (state,) = [v for v in ckpt["callbacks"].values() if "best_model_score" in v]
        assert summary["best/val/acc1"] == pytest.approx(float(state["best_model_score"]))
        assert summary["val/acc1"] == pytest.approx(float(state["best_model_score"]))  # 1 epoch
