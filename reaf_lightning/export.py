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
network loads into ``create_model(**<stem>.json)`` (:func:`load_network`).

    python -m reaf_lightning.export CHECKPOINT OUTPUT_STEM   # writes the three files

(a module entry point rather than a ``reaf-lightning`` subcommand: the training
CLI's parser stays as it is). Existing files are never overwritten, and the
three files appear together or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from reaf_lightning.commands import run_command
from reaf_lightning.errors import CheckpointError, ConfigError, OutputError

__all__ = [
    "bare_state_dict",
    "check_export",
    "export_onnx",
    "export_program",
    "export_weights",
    "load_network",
    "main",
]

PREFIX = "net."


def bare_state_dict(checkpoint: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict]:
    """The network's weights without the ``net.`` prefix, and the settings that rebuild it.

    The checkpoint is read with the safe unpickler (it is untrusted input).

    Raises:
        CheckpointError: not a Lightning checkpoint of an ``ImageClassifier``.
    """
    from reaf_lightning.runs.checkpoint import read_lightning_checkpoint

    content = read_lightning_checkpoint(checkpoint, weights_only=True)
    hparams = content.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "arch" not in hparams:
        raise CheckpointError(
            f"{checkpoint}: no 'arch' in its hyper_parameters; only checkpoints of "
            "reaf_lightning.ImageClassifier can be exported"
        )
    state = {k[len(PREFIX) :]: v for k, v in content["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise CheckpointError(f"{checkpoint}: no '{PREFIX}*' weights in its state_dict")
    network = {
        "arch": str(hparams["arch"]),
        "arch_kwargs": dict(hparams.get("arch_kwargs") or {}),
        "num_classes": int(hparams["num_classes"]),
    }
    return state, network


def export_weights(
    checkpoint: str | os.PathLike[str], output_stem: str | os.PathLike[str]
) -> list[Path]:
    """Write ``<output_stem>.pt``, ``.safetensors`` and ``.json`` from a Lightning checkpoint.

    Returns:
        The three paths written.

    Raises:
        CheckpointError: an unreadable or foreign checkpoint.
        OutputError: an output exists already (nothing is overwritten) or cannot be written.
    """
    from safetensors.torch import save_file

    from reaf_lightning.io import atomic_outputs

    state, network = bare_state_dict(checkpoint)
    stem = Path(output_stem)
    paths = [stem.with_name(stem.name + suffix) for suffix in (".pt", ".safetensors", ".json")]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise OutputError(f"export refuses to overwrite {', '.join(existing)}; choose a new stem")
    # safetensors refuses tensors sharing memory; a state_dict may hold views.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_outputs(paths) as (pt, safetensors, description):
        torch.save(tensors, pt)
        save_file(tensors, str(safetensors), metadata={"network": json.dumps(network)})
        description.write_text(json.dumps(network, indent=2) + "\n")
    return paths


def load_network(stem: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported network from ``<stem>.json`` and load ``<stem>.safetensors``.

    ``arch`` is looked up only in the package's allow-listed sources (its registry,
    ``torchvision.<name>``, ``timm.<name>``); nothing named in the file is imported.
    """
    from safetensors.torch import load_file

    from reaf_lightning.models import create_model

    stem = Path(stem)
    description = stem.with_name(stem.name + ".json")
    try:
        network = json.loads(description.read_text())
        arch, kwargs = str(network["arch"]), dict(network.get("arch_kwargs") or {})
        num_classes = int(network["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{description}: not an export description ({err})") from err
    try:
        net = create_model(arch, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{description}: cannot build {arch!r}: {err}") from err
    net.load_state_dict(load_file(str(stem.with_name(stem.name + ".safetensors"))), strict=True)
    return net.eval()


def export_program(net: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` in eval mode (save it with ``torch.export.save``)."""
    with torch.no_grad():
        net.eval()(example)  # REAF impl="auto": choose each layer's strategy before tracing
        return torch.export.export(net, (example,))


def export_onnx(net: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> Path:
    """ONNX export (``torch.onnx.export``, dynamo exporter) of ``net`` in eval mode to ``path``."""
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


def main(argv: list[str] | None = None) -> None:
    """``python -m reaf_lightning.export CHECKPOINT OUTPUT_STEM``."""

    def body() -> None:
        parser = argparse.ArgumentParser(
            prog="python -m reaf_lightning.export",
            description="Write a checkpoint's bare network weights as <stem>.pt, "
            "<stem>.safetensors and <stem>.json (no 'net.' prefix).",
        )
        parser.add_argument("checkpoint", help="a Lightning checkpoint of reaf-lightning fit")
        parser.add_argument("output_stem", help="path without suffix, e.g. exports/reaf_resnet50")
        args = parser.parse_args(argv)
        for path in export_weights(args.checkpoint, args.output_stem):
            print(path)

    raise SystemExit(run_command("python -m reaf_lightning.export", body))


if __name__ == "__main__":
    main()
