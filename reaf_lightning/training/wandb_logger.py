"""Weights & Biases logging: one W&B run per experiment, and never a blocked training run.

Not part of the paper; these make its long experiments traceable on clusters:

* **Offline fallback.** :func:`start_wandb_run` (also used by ``reaf-analysis``
  for its own runs) goes online in ``mode="auto"`` only when W&B credentials
  exist (``WANDB_API_KEY`` or a ``.netrc`` entry) and the server answers a
  quick TCP probe; otherwise, or when an online start fails, it writes a real
  offline run that ``wandb sync`` uploads later. ``WANDB_MODE`` always wins.
* **One run per experiment.** :class:`WandbLogger` reuses the id of the W&B
  run already recorded in its ``save_dir`` (the run directory), with
  ``resume="allow"``: a resumed ``fit`` continues the same W&B run, and
  ``validate``/``test``/``predict`` of a trained run log into it. A run
  directory without W&B files gets a new random id *(ours: an id derived from
  the path alone would merge unrelated runs that happen to share a path, e.g.
  a deleted and retrained experiment, or two users' ``logs/`` trees)*.
"""

from __future__ import annotations

import netrc
import os
import re
import socket
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from reaf_lightning.errors import ConfigError
from reaf_lightning.runs.layout import RunDir

Mode = Literal["auto", "online", "offline", "disabled"]


MODES: tuple[str, ...] = get_args(Mode)


DEFAULT_BASE_URL = "https://api.wandb.ai"


#: W&B's run folders: ``[offline-]run-<YYYYmmdd_HHMMSS>-<id>``.
_RUN_FOLDER = re.compile(r"^(?:offline-)?run-(?P<time>\d{8}_\d{6})-(?P<id>.+)$")


def _has_credentials(env: Mapping[str, str], host: str) -> bool:
    """True when W&B could authenticate: an API key in the environment or ``.netrc``."""
    if env.get("WANDB_API_KEY"):
        return True
    path = Path(env.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host) if path.is_file() else None
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def _reachable(host: str, port: int, timeout: float) -> bool:
    """A TCP connection opens within ``timeout`` s (in a daemon thread, so a slow DNS
    lookup, which the socket timeout does not cover, cannot hold the run up either)."""
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
        The mode and a one-line reason (empty when nothing was decided for the user).

    Raises:
        ConfigError: ``mode`` is not one of :data:`MODES` (checked here, where every W&B
            start passes, for callers in Python; the commands' parsers refuse it first).
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ConfigError(f"W&B mode={mode!r} is not one of {', '.join(MODES)}")
    forced = (env.get("WANDB_MODE") or "").lower()
    if forced in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={forced}"
    if forced == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if forced in ("online", "run"):
        return "online", ""
    if mode != "auto":
        return mode, ""
    url = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    if not _has_credentials(env, host):
        return "offline", f"no W&B credentials for {host} (WANDB_API_KEY or ~/.netrc)"
    if not _reachable(host, port, probe_timeout):
        return "offline", f"W&B server {host}:{port} is not reachable"
    return "online", ""


def start_wandb_run(
    mode: Mode = "auto",
    *,
    probe_timeout: float = 3.0,
    init_timeout: float = 60.0,
    **init_kwargs: Any,
) -> tuple[Any, str]:
    """``wandb.init(**init_kwargs)`` that falls back to offline instead of hanging or failing.

    The one place where the package starts W&B runs (training's logger and
    ``reaf-analysis``), so that both behave the same without credentials or
    network.

    Args:
        mode: ``auto`` (online when credentials exist and the server answers),
            ``online``, ``offline`` or ``disabled``; ``WANDB_MODE`` overrides it.
        probe_timeout: seconds of the TCP probe of the server in ``auto`` mode.
        init_timeout: seconds ``wandb.init`` may wait for the server online
            before the run goes offline.
        **init_kwargs: any other ``wandb.init`` argument (``project``, ``name``,
            ``dir``, ``id``, ``resume``, ``group``, ``tags``, ``config``...);
            ``reinit`` defaults to ``"finish_previous"``.

    Returns:
        The run and the mode it runs in.
    """
    import wandb

    resolved, reason = resolve_wandb_mode(mode, probe_timeout=probe_timeout)
    if init_kwargs.get("dir"):
        Path(init_kwargs["dir"]).mkdir(parents=True, exist_ok=True)  # else W&B uses /tmp
    # W&B's own console lines (version, sync hints, "find logs at", twice per run) give way
    # to the one line below; its warnings still show.
    settings = wandb.Settings(init_timeout=init_timeout, silent=True, show_warnings=True)
    # A new start in the same process (notebooks, tests, successive CLI calls) is a new
    # session; W&B's default outside notebooks would silently return the previous run.
    init_kwargs.setdefault("reinit", "finish_previous")
    try:
        run = wandb.init(mode=resolved, settings=settings, **init_kwargs)
    except Exception as err:  # W&B raises several types (CommError, UsageError, timeouts)
        if resolved != "online":
            raise
        rank_zero_warn(f"wandb.init failed online ({type(err).__name__}: {err}); going offline")
        wandb.teardown()  # the W&B service still holds the run id of the failed start
        resolved, reason = "offline", "wandb.init failed online"
        run = wandb.init(mode=resolved, settings=settings, **init_kwargs)
    if resolved == "offline":
        where = Path(run.dir).parent
        rank_zero_info(
            f"W&B logs offline ({reason or 'requested'}) to {where}; "
            f"upload later with: wandb sync {where}"
        )
    elif resolved == "online":
        rank_zero_info(f"W&B logs online to {run.url}")
    return run, resolved


def recorded_run_id(save_dir: str | os.PathLike[str]) -> str | None:
    """The id of the newest W&B run recorded in ``<save_dir>/wandb``, online or offline."""
    folders = (_RUN_FOLDER.match(p.name) for p in RunDir(Path(save_dir)).wandb.glob("*run-*"))
    newest = max((m for m in folders if m), key=lambda m: m["time"], default=None)
    return newest["id"] if newest else None


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger``, one W&B run per run directory, with the offline fallback.

    The W&B run starts lazily, on first use and on global rank 0 only, through
    :func:`start_wandb_run`; building the logger (e.g. to check a config) only
    lists ``<save_dir>/wandb`` to find the experiment's run id.

    Args:
        name: display name of the run (the CLI uses the experiment's name).
        save_dir: the experiment's run directory, which receives ``wandb/``; the
            CLI sets it to ``trainer.default_root_dir`` when left ``None``. One
            directory per experiment: a W&B run recorded there is continued.
            ``None`` outside the CLI: ``logs``, and always a new run.
        version: alias of ``id``, as in Lightning's logger.
        id: W&B run id; default: the run already recorded in ``save_dir``, else a new one.
        project: W&B project.
        entity: W&B entity (user or team); ``None`` uses the account default.
        group: W&B group, e.g. the paper table an experiment belongs to.
        job_type: W&B job type.
        tags: W&B tags.
        notes: W&B notes.
        resume: ``wandb.init``'s ``resume``; ``"allow"`` continues a run with this id.
        log_model: upload checkpoints as W&B artifacts.
        prefix: prefix of every metric key.
        checkpoint_name: name of the model artifact.
        mode: ``auto``, ``online``, ``offline`` or ``disabled`` (see :func:`start_wandb_run`).
        offline: Lightning's switch, the same as ``mode="offline"``.
        init_timeout: seconds ``wandb.init`` may wait online before going offline.
        probe_timeout: seconds of the TCP probe of the server in ``auto`` mode.
        **kwargs: any other ``wandb.init`` argument.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        version: str | None = None,
        id: str | None = None,  # wandb's and Lightning's name
        project: str = "reaf-lightning",
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        resume: Literal["allow", "must", "never", "auto"] | None = "allow",
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        checkpoint_name: str | None = None,
        mode: Mode = "auto",
        offline: bool = False,
        init_timeout: float = 60.0,
        probe_timeout: float = 3.0,
        **kwargs: Any,
    ) -> None:
        if init_timeout <= 0 or probe_timeout <= 0:
            raise ConfigError(
                f"init_timeout and probe_timeout must be > 0, "
                f"got {init_timeout!r} and {probe_timeout!r}"
            )
        recorded = recorded_run_id(save_dir) if save_dir else None
        save_dir = save_dir or "logs"
        self._init_kwargs: dict[str, Any] = {
            "name": name,
            "project": project,
            "dir": save_dir,
            "id": id or version or recorded or uuid.uuid4().hex[:12],
            "resume": resume,
            "entity": entity,
            "group": group,
            "job_type": job_type,
            "tags": list(tags) if tags else None,
            "notes": notes,
            **kwargs,
        }
        super().__init__(
            log_model=log_model,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            save_dir=save_dir,
            **{k: v for k, v in self._init_kwargs.items() if k != "dir"},
        )
        self._mode = "offline" if offline else mode
        self._timeouts = {"init_timeout": init_timeout, "probe_timeout": probe_timeout}
        self.resolved_mode: str | None = None  # set when the run starts

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The W&B run, started on first use by :func:`start_wandb_run`."""
        if self.resolved_mode is not None:
            return super().experiment
        run, self.resolved_mode = start_wandb_run(self._mode, **self._timeouts, **self._init_kwargs)
        with warnings.catch_warnings():  # Lightning adopts the run just started, as it should
            warnings.filterwarnings("ignore", message="There is a wandb run already in progress")
            experiment = super().experiment
        # Lightning defines its x-axis only for runs it starts itself.
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Keep the best monitored score in the run summary (the "final metric" of a run)."""
        super().after_save_checkpoint(checkpoint_callback)
        score = checkpoint_callback.best_model_score
        if score is not None and checkpoint_callback.monitor:
            self.experiment.summary[f"best/{checkpoint_callback.monitor}"] = float(score)
