"""Hand a trained network to the ecosystem: bare weights, ``torch.export`` and ONNX.

A Lightning checkpoint holds the whole training state, and its network weights
carry the ``net.`` prefix of :class:`~reaf_lightning.ImageClassifier`. The
export writes the bare network:

* ``<stem>.pt`` — a ``state_dict`` (``torch.save``; load with ``weights_only=True``);
* ``<stem>.safetensors`` — the same tensors in the safetensors format;
* ``<stem>.json`` — how to rebuild it (``arch``, ``arch_kwargs``, ``num_classes``) and what
  it expects and answers (``image_size``, ``mean``, ``std``: RGB in [0, 1] resized to
  ``image_size`` and normalised per channel; ``classes``: the names of its outputs), as
  the run record of the checkpoint says (``null`` where it does not).

Key names are those of the package's networks, which follow torchvision's
(``conv1``, ``layer1.0.conv2``, ``fc``, ...): a plain ``resnet18``/``resnet50``
with the ImageNet stem loads into ``torchvision.models.resnet18(num_classes=...)``
with ``strict=True``, and into timm's ResNets, which use the same names. A REAF
network is rebuilt from ``<stem>.json`` by :func:`load_network`. The checkpoint is
read by :func:`reaf_lightning.runs.checkpoint.read_network`, the one reader of a
checkpoint's network.

    python -m reaf_lightning.export CHECKPOINT OUTPUT_STEM   # writes the three files

(a module entry point rather than a ``reaf-lightning`` subcommand: the training
CLI's parser stays as it is). ``CHECKPOINT`` may be a run directory (its
``checkpoints/last.ckpt``). The weights are loaded into the network the checkpoint
records before anything is written, so an export always loads; existing files are
never overwritten, and the three files appear together, with the same permissions,
or not at all.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from jsonargparse import ArgumentParser
from pydantic import BaseModel, ConfigDict, ValidationError

from reaf_lightning.commands import parse, prepare_arguments, run_main
from reaf_lightning.errors import CheckpointError, ConfigError, OutputError, one_line

if TYPE_CHECKING:  # torch is imported where it is used: the command's --help stays light
    import torch
    from torch import Tensor, nn

    from reaf_lightning.runs.checkpoint import SavedNetwork

__all__ = [
    "ExportDescription",
    "build_parser",
    "check_export",
    "check_output_stem",
    "describe",
    "export_onnx",
    "export_program",
    "export_weights",
    "load_network",
    "main",
    "read_description",
]

PROG = "python -m reaf_lightning.export"
#: An export description is a few hundred bytes; anything over this is not one.
MAX_DESCRIPTION_BYTES = 1 << 20


def check_output_stem(stem: str | os.PathLike[str]) -> Path:
    """``stem`` as a path whose last part is a file-name prefix (``exports/net``).

    Raises:
        ConfigError: an empty stem, or one whose last part is empty (it ends in ``/``),
            ``.`` or ``..``: the files would not be named after it.
    """
    text = os.fspath(stem)
    last = re.split(r"[/\\]" if os.altsep else "/", text)[-1]
    if last in ("", ".", "..") or "\0" in text:
        raise ConfigError(
            f"output_stem {text!r} must end in a file-name prefix (e.g. exports/quickstart, "
            "which writes exports/quickstart.pt, .safetensors and .json)"
        )
    return Path(text)


def export_weights(
    checkpoint: str | os.PathLike[str],
    output_stem: str | os.PathLike[str],
    weights_only: bool = True,
) -> list[Path]:
    """Write ``<output_stem>.pt``, ``.safetensors`` and ``.json`` from a Lightning checkpoint
    (or a run directory: its ``checkpoints/last.ckpt``).

    The checkpoint is read with the safe unpickler unless ``weights_only`` is ``False``
    (only for a file whose origin you trust). Its weights are loaded into the network it
    records first, so that nothing is written for weights that would not load.

    Returns:
        The three paths written.

    Raises:
        ConfigError: a bad ``output_stem``, or a recorded network that cannot be built.
        CheckpointError: an unreadable or foreign checkpoint, or weights that do not fit
            its network.
        NumericalError: NaN or inf weights.
        OutputError: an output exists already (nothing is overwritten) or cannot be written.
    """
    import torch
    from safetensors.torch import save

    from reaf_lightning.io import atomic_outputs
    from reaf_lightning.runs.checkpoint import check_finite, checkpoint_of, read_network

    stem = check_output_stem(output_stem)
    path = checkpoint_of(checkpoint)
    saved = read_network(path, weights_only=weights_only)
    saved.rebuild()  # the weights fit the recorded network, or nothing is written
    check_finite(
        saved.state_dict,
        lambda where: f"{path} holds non-finite weights (NaN or inf) in {where}; not exported",
    )
    paths = [stem.with_name(stem.name + suffix) for suffix in (".pt", ".safetensors", ".json")]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise OutputError(f"export refuses to overwrite {', '.join(existing)}; choose a new stem")
    # safetensors refuses tensors sharing memory; a state_dict may hold views.
    tensors = {k: v.detach().contiguous().clone() for k, v in saved.state_dict.items()}
    description = describe(saved)
    with atomic_outputs(paths, inputs=[path]) as (pt, safetensors, json_file):
        torch.save(tensors, pt)
        # Written by Python into the temporary (not by safetensors' own file creation, which
        # makes owner-only files): the three files get the same, umask-given permissions.
        safetensors.write_bytes(save(tensors, metadata={"network": json.dumps(saved.settings)}))
        json_file.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return paths


def describe(saved: SavedNetwork) -> dict[str, Any]:
    """The export description: the network's settings, and what it was fed and answers as
    the checkpoint's run record says (``None`` where it does not)."""
    data = saved.record.data if saved.record is not None else None
    fed = data.inputs(str(saved.path)) if data is not None else {}
    classes = data.classes if data is not None else None
    if classes is not None and len(classes) != saved.num_classes:
        classes = None  # names of another label set than the network's outputs
    return {
        **saved.settings,
        "image_size": fed.get("image_size"),
        "mean": list(fed["mean"]) if "mean" in fed else None,
        "std": list(fed["std"]) if "std" in fed else None,
        "classes": classes,
    }


class ExportDescription(BaseModel):
    """The schema of ``<stem>.json``, read as untrusted input (names a network, never code)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    arch: str
    arch_kwargs: dict[str, Any] | None = None
    num_classes: int
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None


def read_description(stem: str | os.PathLike[str]) -> ExportDescription:
    """``<stem>.json``, checked: ``num_classes`` a positive integer, ``classes`` as many names.

    Raises:
        CheckpointError: not an export description (one line naming the file and the field).
    """
    from reaf_lightning.io import read_bounded

    stem = Path(stem)
    file = stem.with_name(stem.name + ".json")
    text = read_bounded(file, MAX_DESCRIPTION_BYTES, "export description", CheckpointError)
    try:
        description = ExportDescription.model_validate(json.loads(text))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CheckpointError(
            f"{file}: not an export description: {where}: {first['msg']}"
        ) from None
    except ValueError as err:
        raise CheckpointError(f"{file}: not an export description ({one_line(err)})") from None
    if description.num_classes < 1:
        raise CheckpointError(
            f"{file}: not an export description: num_classes must be >= 1, got "
            f"{description.num_classes}"
        )
    if description.classes is not None and len(description.classes) != description.num_classes:
        raise CheckpointError(
            f"{file}: {len(description.classes)} class names for {description.num_classes} outputs"
        )
    return description


def load_network(stem: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported network from ``<stem>.json`` and load ``<stem>.safetensors``.

    ``arch`` is looked up only in the package's allow-listed sources (its registry,
    ``torchvision.<name>``, ``timm.<name>``:
    :func:`~reaf_lightning.conversion.sources.build_network`); nothing named in the
    file is imported.

    Raises:
        CheckpointError: not an export description, or weights that do not fit it.
        ConfigError: a description naming a network that cannot be built.
    """
    from safetensors.torch import load_file

    from reaf_lightning.runs.checkpoint import rebuild_network

    stem = Path(stem)
    network = read_description(stem)
    kwargs = {**(network.arch_kwargs or {}), "num_classes": network.num_classes}
    weights = stem.with_name(stem.name + ".safetensors")
    return rebuild_network(network.arch, kwargs, load_file(str(weights)), str(weights))


def export_program(net: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` in eval mode (save it with ``torch.export.save``)."""
    import torch

    with torch.no_grad():
        net.eval()(example)  # REAF impl="auto": choose each layer's strategy before tracing
        return torch.export.export(net, (example,))


def export_onnx(net: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> Path:
    """ONNX export (``torch.onnx.export``, dynamo exporter) of ``net`` in eval mode to ``path``."""
    import torch

    program = export_program(net, example)
    torch.onnx.export(program, (example,), str(path), dynamo=True, verbose=False)
    return Path(path)


def check_export(
    net: nn.Module, example: Tensor, onnx_path: str | os.PathLike[str] | None = None
) -> dict[str, float]:
    """Largest difference to eager of the exported program (and of ONNX Runtime), relative
    to the largest eager output: deep untrained networks give logits in the hundreds,
    where float32 reordering alone moves them by 1e-4.

    ``onnx_path`` given: also export to ONNX there and run it with ONNX Runtime
    (CPU), which must be installed (``pip install 'reaf-lightning[onnx]'``).
    """
    import torch

    net = net.eval()
    with torch.no_grad():
        eager = net(example)
        program = export_program(net, example)
        scale = eager.abs().max().item() or 1.0
        differences = {"torch.export": (program.module()(example) - eager).abs().max().item()}
    if onnx_path is not None:
        import onnxruntime

        torch.onnx.export(program, (example,), str(onnx_path), dynamo=True, verbose=False)
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        differences["onnxruntime"] = float((torch.from_numpy(output) - eager).abs().max())
    return {runtime: difference / scale for runtime, difference in differences.items()}


def build_parser() -> ArgumentParser:
    """The command's arguments: the checkpoint, the output stem and the loader's safe mode."""
    parser = ArgumentParser(
        prog=PROG,
        description="Write a checkpoint's bare network weights as <stem>.pt, "
        "<stem>.safetensors and <stem>.json (no 'net.' prefix).",
        exit_on_error=False,
    )
    add = parser.add_argument
    add(
        "checkpoint", type=str, help="A Lightning checkpoint of reaf-lightning fit, or its run dir."
    )
    add("output_stem", type=str, help="Path without suffix, e.g. exports/reaf_resnet50.")
    add(
        "--weights_only",
        type=bool,
        default=True,
        help="Load the checkpoint with the safe unpickler; false only for files you trust.",
    )
    return parser


def _export(argv: list[str]) -> None:
    cfg = parse(build_parser(), prepare_arguments(argv))
    for path in export_weights(cfg.checkpoint, cfg.output_stem, cfg.weights_only):
        print(path)


def main(args: list[str] | None = None) -> NoReturn:
    """``python -m reaf_lightning.export CHECKPOINT OUTPUT_STEM``; ``args`` as on the command
    line (``None``: ``sys.argv``)."""
    run_main(PROG, _export, args)


if __name__ == "__main__":
    main()
