"""``set-kernel``: put user kernels into chosen conv layers and record what was fixed.

Orchestration only: the kernels are fitted and recorded by :mod:`onnxfix.kernels.fix`, the model is
read and written by :mod:`onnxfix.modelio.modelfile`. On a large model most of the time is copying the
bytes that do not change, so that copy starts first, in the output's staging folder
(:mod:`onnxfix.modelio.staging`), and runs while numpy and onnx are imported and the kernels fitted:
this module imports neither at its top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfix.errors import ModelFileError, UnsupportedWeightError, param
from onnxfix.modelio.staging import Staging
from onnxfix.modelio.targets import Read, Write, check_writes

if TYPE_CHECKING:
    import numpy as np

    from onnxfix.modelio.modelfile import ModelFile
    from onnxfix.provenance import FixedTensor

__all__ = ["FixedTensorReport", "SetKernelResult", "set_kernel"]


@dataclass(frozen=True)
class FixedTensorReport:
    """One tensor set-kernel fixed."""

    tensor: str
    layer: str
    role: str  # "weight" or "bias"
    shape: tuple[int, ...]
    dtype: str
    sha256: str  # of the fixed channels, when only some are
    kernel: str
    fixed_channels: tuple[int, ...] | None = None  # None: the whole tensor is fixed

    @classmethod
    def of(cls, name: str, record: FixedTensor) -> FixedTensorReport:
        return cls(
            name, record.layer, record.role, record.shape, record.dtype, record.sha256,
            record.kernel, record.fixed_channels,
        )  # fmt: skip


@dataclass(frozen=True)
class SetKernelResult:
    output: Path
    fixed: list[FixedTensorReport]
    changes: list[str] = field(default_factory=list)  # lifted/untied, in plain words


def set_kernel(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    layers: str | list[str] | tuple[str, ...] = (),
    kernel: str | os.PathLike | np.ndarray | None = None,
    kernels_file: str | os.PathLike | None = None,
    channels: str | None = None,
    bias: str | os.PathLike | np.ndarray = "keep",
    untie: bool = False,
    all_uses: bool = False,
    in_place: bool = False,
    check: bool = True,
) -> SetKernelResult:
    """Write ``model`` with the chosen convs' kernels replaced to ``output``.

    Records every fixed tensor in ``metadata_props["onnxfix.fixed_kernels"]``. ``layers`` is
    one selector or a list of them; ``kernel`` and ``bias`` may be numpy arrays held in memory.
    """
    model, output = Path(model), Path(output)
    if output.resolve() == model.resolve() and not in_place:
        raise ModelFileError(
            f"output {str(output)!r} is the input model; onnxfix never changes its input unless "
            f"you add {param('in_place', 'in_place=True')}"
        )
    if untie and all_uses:
        raise UnsupportedWeightError(
            f"{param('untie')} and {param('all_uses')} contradict each other; choose one"
        )
    flag = param("in_place", "in_place=True") if in_place else param("out", "output")
    given = _argument_files(kernel, kernels_file, bias)
    # Refused before any work: an output that is not a regular file, or a file this run reads.
    # The data files are known once the model is read (below).
    check_writes(
        given if in_place else [Read(model, "the input model"), *given], [Write(output, flag)]
    )
    # In place, a model with external data is patched where it is: copying its data is wasted.
    with Staging(output, copy_from=model if model.is_file() else None, data=not in_place) as stage:
        from onnxfix.kernels.fix import fix_kernels
        from onnxfix.modelio.modelfile import load_model
        from onnxfix.modelio.save import save_model

        mf = load_model(model)
        check_writes(*_model_writes(mf, output, flag, given, in_place))
        fixes = fix_kernels(
            mf,
            model_name=str(model),
            layers=[layers] if isinstance(layers, str) else list(layers),  # one, not its letters
            kernel=kernel,
            kernels_file=kernels_file,
            channels=channels,
            bias=bias,
            untie=untie,
            all_uses=all_uses,
        )
        save_model(mf, output, check=check, expect=fixes.expect, staging=stage)
    fixed = [FixedTensorReport.of(name, record) for name, record in fixes.fixed]
    return SetKernelResult(output=output, fixed=fixed, changes=fixes.changes)


def _argument_files(
    kernel: str | os.PathLike | np.ndarray | None,
    kernels_file: str | os.PathLike | None,
    bias: str | os.PathLike | np.ndarray,
) -> list[Read]:
    """The files the kernel, kernels and bias arguments name (those that exist: a name that is
    no file cannot be overwritten, and its spec is reported by the parser)."""
    named: list[tuple[str, str]] = []
    if isinstance(kernel, (str, os.PathLike)):  # not an array held in memory
        text = str(os.fspath(kernel)).strip()
        named += [
            (text, param("kernel")),
            (text.rpartition(":")[0], param("kernel")),
        ]  # FILE.npz:KEY
    if kernels_file is not None:
        named.append((os.fspath(kernels_file), param("kernels_file")))
    if isinstance(bias, (str, os.PathLike)) and bias not in ("keep", "zero"):
        path = str(os.fspath(bias))
        named += [(path, param("bias")), (path.rpartition(":")[0], param("bias"))]
    return [Read(Path(p), f"the {flag} file") for p, flag in named if p and os.path.isfile(p)]


def _model_writes(
    mf: ModelFile, output: Path, flag: str, given: list[Read], in_place: bool
) -> tuple[list[Read], list[Write]]:
    """What the save reads and writes, now that the model's data files are known.

    With -o: the model and its data files are inputs, the output and ``<output>.data`` (when
    the model keeps weights in external data) are written. In place, the model and its data
    files are written, by request; only the other files given must not be among them.
    """
    from onnxfix.modelio.modelfile import data_locations

    data = [mf.base_dir / location for location in data_locations(mf.model)]
    own_data = output.with_name(output.name + ".data")
    writes = [Write(output, flag)]
    if in_place:
        writes = [Write(p, flag, "its external data file", output) for p in data]
    if data:
        writes.append(Write(own_data, flag, "its data file", output))
    if in_place:
        return given, writes
    reads = [Read(mf.path, "the input model")]
    reads += [Read(p, "the input model's external data file") for p in data]
    return reads + given, writes
