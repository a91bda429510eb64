"""Weights & Biases logging that never blocks a training run (issue 3, item 4).

The paper's experiments are long GPU jobs, often on cluster nodes without
internet access. :class:`WandbLogger` is Lightning's logger with one policy
added: in ``mode="auto"`` it logs *online* only when W&B credentials exist
(``WANDB_API_KEY`` or a ``.netrc`` entry for the W&B host) **and** the host
answers a quick TCP probe; otherwise it writes a real offline run under
``<save_dir>/wandb/offline-run-*`` that ``wandb sync`` uploads later. An
online start that still fails (server down, timeout) falls back to offline
instead of killing the job. ``WANDB_MODE`` (``offline``/``disabled``/``online``)
always wins, as W&B users expect.
"""

from __future__ import annotations

import netrc
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["WandbLogger", "resolve_wandb_mode"]

Mode = Literal["auto", "online", "offline", "disabled"]
MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"W&B mode={mode!r} is not one of {', '.join(MODES)}")


def _wandb_host(env: Mapping[str, str]) -> tuple[str, int]:
    """(host, port) of the W&B server, from ``WANDB_BASE_URL``."""
    url = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "", port


def _has_credentials(env: Mapping[str, str], host: str) -> bool:
    """True when W&B could authenticate: an API key in the environment or ``.netrc``."""
    if env.get("WANDB_API_KEY"):
        return True
    path = Path(env.get("NETRC") or "~/.netrc").expanduser()
    if not path.is_file():
        return False
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def _reachable(host: str, port: int, timeout: float) -> bool:
    """A TCP connection to the W&B server opens within ``timeout`` seconds.

    The attempt runs in a daemon thread so that a slow DNS lookup (which the
    socket timeout does not cover) cannot hold the training up either.
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_wandb_mode(
    mode: Mode, env: Mapping[str, str] | None = None, probe_timeout: float = 3.0
) -> tuple[str, str]:
    """Decide how W&B runs: ``("online" | "offline" | "disabled", reason)``.

    Args:
        mode: the requested mode; ``auto`` picks online only when possible.
        env: environment to read (``os.environ`` by default).
        probe_timeout: seconds the reachability probe may take in ``auto`` mode.

    Returns:
        The mode and a one-line human reason (empty when nothing was decided for the user).
    """
    env = os.environ if env is None else env
    _check_mode(mode)
    forced = (env.get("WANDB_MODE") or "").lower()
    if forced in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={forced}"
    if forced == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if forced in ("online", "run") or mode == "online":
        return "online", ""
    if mode in ("offline", "disabled"):
        return mode, ""
    host, port = _wandb_host(env)
    if not _has_credentials(env, host):
        return "offline", f"no W&B credentials for {host} (WANDB_API_KEY or ~/.netrc)"
    if not _reachable(host, port, probe_timeout):
        return "offline", f"W&B server {host}:{port} is not reachable"
    return "online", ""


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that falls back to offline instead of hanging or failing.

    The decision is taken lazily, when the run is first used (on global rank 0
    only), so building the logger — e.g. to validate a config — touches
    neither the network nor the disk.

    Args:
        project: W&B project.
        name: display name of the run (the CLI uses the experiment's name).
        save_dir: directory that receives ``wandb/``; the CLI sets it to
            ``trainer.default_root_dir`` when left ``None``.
        mode: ``auto`` (online when credentials exist and the server answers,
            else offline), ``online``, ``offline`` or ``disabled``.
            ``WANDB_MODE`` in the environment overrides it.
        group: W&B group, e.g. the paper table an experiment belongs to.
        tags: W&B tags.
        entity: W&B entity (user or team); ``None`` uses the account default.
        init_timeout: seconds ``wandb.init`` may wait for the server before the
            logger gives up and goes offline.
        probe_timeout: seconds of the TCP probe of the server in ``auto`` mode.
        log_model: upload checkpoints as W&B artifacts (online runs only).
    """

    def __init__(
        self,
        project: str = "reaf-lightning",
        name: str | None = None,
        save_dir: str | None = None,
        mode: Mode = "auto",
        group: str | None = None,
        tags: Sequence[str] | None = None,
        entity: str | None = None,
        init_timeout: float = 60.0,
        probe_timeout: float = 3.0,
        log_model: bool | Literal["all"] = False,
    ) -> None:
        _check_mode(mode)
        if init_timeout <= 0 or probe_timeout <= 0:
            raise ValueError(
                f"init_timeout and probe_timeout must be > 0, "
                f"got {init_timeout!r} and {probe_timeout!r}"
            )
        super().__init__(
            name=name,
            save_dir=save_dir or "logs",
            project=project,
            log_model=log_model,
            group=group,
            tags=list(tags) if tags else None,
            entity=entity,
        )
        self._wandb_init.pop("anonymous", None)  # deprecated in W&B; it only prints a warning
        self._mode: Mode = mode
        self._init_timeout = float(init_timeout)
        self._probe_timeout = float(probe_timeout)
        self.resolved_mode: str | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started on first use in the mode chosen by :func:`resolve_wandb_mode`."""
        if self._experiment is not None or getattr(self, "_attach_id", None) is not None:
            return super().experiment
        import wandb

        mode, reason = resolve_wandb_mode(self._mode, probe_timeout=self._probe_timeout)
        if mode == "offline" and self._log_model:
            rank_zero_warn("W&B is offline, so log_model is ignored (checkpoints stay on disk)")
            self._log_model = False
        Path(self._save_dir).mkdir(parents=True, exist_ok=True)  # else W&B falls back to /tmp
        self._start(wandb, mode)
        if mode == "online" and self._experiment is None:
            reason = "wandb.init failed online"
            mode = "offline"
            self._log_model = False
            self._start(wandb, mode)
        self.resolved_mode = mode
        if mode == "offline":
            run_dir = getattr(self._experiment, "dir", None)
            where = Path(run_dir).parent if run_dir else Path(self._save_dir) / "wandb"
            rank_zero_info(
                f"W&B logs offline ({reason or 'requested'}) to {where}; "
                f"upload later with: wandb sync {where}"
            )
        return self._experiment

    def _start(self, wandb: Any, mode: str) -> None:
        """``wandb.init`` in ``mode``; on an online failure leave ``_experiment`` unset."""
        self._wandb_init["mode"] = mode
        self._wandb_init["settings"] = wandb.Settings(init_timeout=self._init_timeout)
        try:
            super().experiment  # noqa: B018  (the parent property creates the run)
        except Exception as err:  # W&B raises several types (CommError, UsageError, timeouts)
            if mode != "online":
                raise
            rank_zero_warn(f"wandb.init failed online ({type(err).__name__}: {err}); going offline")
            self._experiment = None
            wandb.finish()

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Keep the best monitored score in the run summary (the "final metric" of a run)."""
        super().after_save_checkpoint(checkpoint_callback)
        score = checkpoint_callback.best_model_score
        if score is not None and checkpoint_callback.monitor and self._experiment is not None:
            self._experiment.summary[f"best/{checkpoint_callback.monitor}"] = float(score)
