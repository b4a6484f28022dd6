"""``show``: the chosen convs' kernels as a picture, fixed ones marked, before and after.

A source is a model file (its initializers), an artifacts folder (its checkpoint's values put
into its inference model's convs, parts joined) or a checkpoint file (the conv-shaped
parameters it holds, named as in the model). With ``before``, each layer is drawn twice: as
``before`` holds it, then as the source does.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfix.errors import ArtifactsError, SelectorError, param
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.outputs import check_output
from onnxfix.plots import KernelLayer, Tile, draw_kernels, need_matplotlib
from onnxfix.provenance import Provenance

__all__ = ["ShowResult", "show"]


@dataclass(frozen=True)
class ShowResult:
    output: Path
    layers: list[str]
    tiles: list[Tile]


@dataclass(frozen=True)
class _Conv:
    layer: str
    weight: str
    op: str
    group: int
    values: np.ndarray
    modules: tuple[str, ...] = ()  # PyTorch module paths (onnxfix.kernels.layers.module_paths)


def _from_model(path: Path) -> tuple[list[_Conv], Provenance]:
    from onnxfix._proto import find_initializer
    from onnxfix.kernels.layers import find_convs
    from onnxfix.modelio.modelfile import load_model
    from onnxfix.provenance import read_provenance

    mf = load_model(path)
    record = read_provenance(mf.model, source=str(path))
    convs = []
    for conv in find_convs(mf.model, fixed=set(record)):
        name = conv.source.tensor or conv.weight
        found = find_initializer(mf.model, name)
        if found is not None and conv.shape is not None:
            values = mf.read_array(found[1])
            convs.append(_Conv(conv.display, name, conv.op, conv.group, values, conv.modules))
    return convs, record


def _checkpoint_values(path: Path) -> tuple[dict[str, np.ndarray], Provenance]:
    """Every parameter of a checkpoint file, tensors trained in parts joined."""
    from onnxfix.dtypes import from_le_bytes, np_dtype
    from onnxfix.provenance import PROVENANCE_KEY, parse_provenance
    from onnxfix.training.checkpoint import read_checkpoint
    from onnxfix.training.layout import checkpoint_parts

    stored = read_checkpoint(path)
    if stored.nominal:
        raise ArtifactsError(f"checkpoint {str(path)!r} is nominal (shapes only, no values)")
    values = {
        name: from_le_bytes(p.read(), np_dtype(p.data_type), p.dims)
        for name, p in stored.parameters.items()
    }
    for whole, parts in checkpoint_parts(stored.properties, source=str(path)).items():
        if parts.fixed_name in values and parts.train_name in values:
            values[whole] = parts.join(values.pop(parts.fixed_name), values.pop(parts.train_name))
    text = stored.properties.get(PROVENANCE_KEY)
    record = parse_provenance(text, source=str(path)) if text else {}
    return values, record


def _source(path: Path, checkpoint: Path | None) -> tuple[list[_Conv], Provenance, list[Path]]:
    """The convs of ``path`` with its values, its fixed-kernel record, and the files read."""
    from onnxfix.training.layout import ArtifactsLayout

    if path.is_dir():
        layout = ArtifactsLayout(path)
        ckpt = checkpoint or layout.checkpoint
        convs, record = _from_model(layout.inference_model)
        values, _ = _checkpoint_values(ckpt)
        convs = [dataclasses.replace(c, values=values.get(c.weight, c.values)) for c in convs]
        return convs, record, [layout.inference_model, ckpt]
    if path.suffix == ".onnx":
        convs, record = _from_model(path)
        return convs, record, [path]
    if not path.exists():
        raise ArtifactsError(f"{str(path)!r} does not exist")
    values, record = _checkpoint_values(path)
    convs = [
        _Conv(
            name,
            name,
            record[name].op if name in record else "Conv",
            record[name].group if name in record else 1,
            v,
            (name.removesuffix(".weight"),) if name.endswith(".weight") else (),
        )
        for name, v in values.items()
        if v.ndim >= 3 and v.dtype.kind == "f"
    ]
    return convs, record, [path]


def _reads(paths: list[Path]) -> list[Read]:
    """The files drawn from, with their data files (a model's external data, a checkpoint's
    .data): none may be the picture."""
    from onnxfix.modelio.modelfile import model_reads

    reads: list[Read] = []
    for path in paths:
        if path.suffix == ".onnx":
            reads += model_reads(path, "a model it draws from")
        else:
            reads += [
                Read(path, "a checkpoint it draws from"),
                Read(path.with_name(path.name + ".data"), "a checkpoint's data"),
            ]
    return reads


def _choose(convs: list[_Conv], layers: tuple[str, ...]) -> list[_Conv]:
    if not layers:
        return convs[:8]
    chosen: dict[int, _Conv] = {}  # by position: the convs' order is kept
    for selector in layers:
        hit = [
            k
            for k, c in enumerate(convs)
            if any(fnmatch.fnmatchcase(n, selector) for n in (c.layer, c.weight, *c.modules))
        ]
        if not hit:
            names = ", ".join(c.layer for c in convs[:10]) or "none"
            raise SelectorError(
                f"{param('layers', 'layer')} {selector!r} matches no conv; convs: {names}"
            )
        chosen.update((k, convs[k]) for k in hit)
    return [chosen[k] for k in sorted(chosen)]


def show(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    layers: str | tuple[str, ...] | list[str] = (),
    before: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> ShowResult:
    """Draw the kernels of ``layers`` (default: the first 8 convs) of ``source`` into the PNG
    ``output``; with ``before``, each as ``before`` holds it above."""
    need_matplotlib()  # before any work: a clear error when matplotlib is missing
    out = Path(output)
    check_output(out, what="picture")
    selectors = (layers,) if isinstance(layers, str) else tuple(layers)
    convs, record, read = _source(Path(source), Path(checkpoint) if checkpoint else None)
    chosen = _choose(convs, selectors)
    earlier: dict[str, _Conv] = {}
    if before is not None:
        previous, _, more = _source(Path(before), None)
        earlier = {c.weight: c for c in previous}
        read += more
    check_writes(_reads(read), [Write(out, param("out", "-o"))])
    drawn: list[KernelLayer] = []
    for conv in chosen:
        entry = record.get(conv.weight)
        layer = KernelLayer(
            layer=conv.layer,
            weight=conv.weight,
            op=conv.op,
            group=conv.group,
            values=conv.values,
            fixed=entry is not None,
            fixed_channels=entry.fixed_channels if entry is not None else None,
            source=entry.kernel if entry is not None else "",
        )
        then = earlier.get(conv.weight)
        if then is not None and then.values.shape == conv.values.shape:
            drawn.append(dataclasses.replace(layer, values=then.values, state="before"))
            drawn.append(dataclasses.replace(layer, state="after"))
        else:
            drawn.append(layer)
    tiles = draw_kernels(drawn, out, title=f"kernels of {Path(source).name}")
    return ShowResult(out, [c.layer for c in chosen], tiles)
