"""Hand a trained network to the ecosystem: bare weights, ``torch.export`` and ONNX.

A Lightning checkpoint holds the whole training state, and its network weights
carry the ``net.`` prefix of :class:`~reaf_lightning.ImageClassifier`. The
export writes the bare network:

* ``<stem>.pt`` — a ``state_dict`` (``torch.save``; load with ``weights_only=True``);
* ``<stem>.safetensors`` — the same tensors in the safetensors format;
* ``<stem>.json`` — how to rebuild it: ``arch``, ``arch_kwargs``, ``num_classes``.

Key names are those of the package's networks, which follow torchvision's
(``conv1``, ``layer1.0.conv2``, ``fc``, ...): a plain ``resnet18``/``resnet50``
with the ImageNet stem loads into ``torchvision.models.resnet18(num_classes=...)``
with ``strict=True``, and into timm's ResNets, which use the same names. A REAF
network is rebuilt from ``<stem>.json`` by :func:`load_network`. The checkpoint is
read by :func:`reaf_lightning.runs.checkpoint.read_network`, the one reader of a
checkpoint's network.

    python -m reaf_lightning.export CHECKPOINT OUTPUT_STEM   # writes the three files

(a module entry point rather than a ``reaf-lightning`` subcommand: the training
CLI's parser stays as it is). Existing files are never overwritten, and the
three files appear together or not at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from jsonargparse import ArgumentParser

from reaf_lightning.commands import parse, prepare_arguments, run_main
from reaf_lightning.errors import CheckpointError, OutputError

if TYPE_CHECKING:  # torch is imported where it is used: the command's --help stays light
    import torch
    from torch import Tensor, nn

__all__ = [
    "build_parser",
    "check_export",
    "export_onnx",
    "export_program",
    "export_weights",
    "load_network",
    "main",
]

PROG = "python -m reaf_lightning.export"
#: An export description is a few hundred bytes; anything over this is not one.
MAX_DESCRIPTION_BYTES = 1 << 20


def export_weights(
    checkpoint: str | os.PathLike[str],
    output_stem: str | os.PathLike[str],
    weights_only: bool = True,
) -> list[Path]:
    """Write ``<output_stem>.pt``, ``.safetensors`` and ``.json`` from a Lightning checkpoint.

    The checkpoint is read with the safe unpickler unless ``weights_only`` is ``False``
    (only for a file whose origin you trust).

    Returns:
        The three paths written.

    Raises:
        CheckpointError: an unreadable or foreign checkpoint.
        OutputError: an output exists already (nothing is overwritten) or cannot be written.
    """
    import torch
    from safetensors.torch import save_file

    from reaf_lightning.io import atomic_outputs
    from reaf_lightning.runs.checkpoint import read_network

    saved = read_network(checkpoint, weights_only=weights_only)
    stem = Path(output_stem)
    paths = [stem.with_name(stem.name + suffix) for suffix in (".pt", ".safetensors", ".json")]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise OutputError(f"export refuses to overwrite {', '.join(existing)}; choose a new stem")
    # safetensors refuses tensors sharing memory; a state_dict may hold views.
    tensors = {k: v.detach().contiguous().clone() for k, v in saved.state_dict.items()}
    with atomic_outputs(paths) as (pt, safetensors, description):
        torch.save(tensors, pt)
        save_file(tensors, str(safetensors), metadata={"network": json.dumps(saved.settings)})
        description.write_text(json.dumps(saved.settings, indent=2) + "\n")
    return paths


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

    from reaf_lightning.io import read_bounded
    from reaf_lightning.runs.checkpoint import rebuild_network

    stem = Path(stem)
    description = stem.with_name(stem.name + ".json")
    text = read_bounded(description, MAX_DESCRIPTION_BYTES, "export description", CheckpointError)
    try:
        network = json.loads(text)
        arch, kwargs = str(network["arch"]), dict(network.get("arch_kwargs") or {})
        kwargs["num_classes"] = int(network["num_classes"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{description}: not an export description ({err})") from err
    weights = stem.with_name(stem.name + ".safetensors")
    return rebuild_network(arch, kwargs, load_file(str(weights)), str(weights))


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
    add("checkpoint", type=str, help="A Lightning checkpoint of reaf-lightning fit.")
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
