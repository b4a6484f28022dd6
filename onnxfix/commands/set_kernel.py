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

if TYPE_CHECKING:
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
    sha256: str
    kernel: str

    @classmethod
    def of(cls, name: str, record: FixedTensor) -> FixedTensorReport:
        return cls(
            name, record.layer, record.role, record.shape, record.dtype, record.sha256,
            record.kernel,
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
    layers: list[str] | tuple[str, ...] = (),
    kernel: str | None = None,
    kernels_file: str | os.PathLike | None = None,
    channels: str | None = None,
    bias: str = "keep",
    untie: bool = False,
    all_uses: bool = False,
    in_place: bool = False,
    check: bool = True,
) -> SetKernelResult:
    """Write ``model`` with the chosen convs' kernels replaced to ``output``.

    Records every fixed tensor in ``metadata_props["onnxfix.fixed_kernels"]``.
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
    # In place, a model with external data is patched where it is: copying its data is wasted.
    with Staging(output, copy_from=model if model.is_file() else None, data=not in_place) as stage:
        from onnxfix.kernels.fix import fix_kernels
        from onnxfix.modelio.modelfile import load_model
        from onnxfix.modelio.save import save_model

        mf = load_model(model)
        fixes = fix_kernels(
            mf,
            model_name=str(model),
            layers=list(layers),
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
