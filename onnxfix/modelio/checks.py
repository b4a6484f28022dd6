"""Checks of a written model: onnx.checker with shape inference, an onnxruntime load, and the
changed tensors read back bit for bit.

The checker sees a light copy in which each embedded payload is an external reference into the
file itself (:func:`onnxfix.modelio.modelfile.reference_payloads`), so no weight is read into
memory whatever the model's size.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxfix._proto import cpu_session, le_bytes, library_message
from onnxfix.errors import ModelFileError
from onnxfix.modelio import reader
from onnxfix.modelio.external import check_payloads
from onnxfix.modelio.modelfile import ModelFile, all_tensors, reference_payloads
from onnxfix.outputs import temp_prefix

__all__ = [
    "SESSION_CHECK_LIMIT",
    "check_model_file",
    "check_structure",
    "check_loads",
    "read_back",
    "written_as_planned",
]

logger = logging.getLogger(__name__)


def read_back(written: ModelFile, expect: Mapping[str, np.ndarray]) -> None:
    """The tensors in ``expect`` read from the written file equal it, bit for bit."""
    tensors = {t.name: t for t in all_tensors(written.model) if t.name in expect}
    for name, array in expect.items():
        got = written.read_array(tensors[name])  # says if a data file is missing
        if le_bytes(got) != le_bytes(array):
            raise AssertionError(
                f"tensor {name!r} was not written as intended"
            )  # a bug, not user error


def written_as_planned(
    path: Path, planned: bytes, splices: Mapping[str, reader.Splice]
) -> ModelFile:
    """``path`` read back (light), after checking it is what :meth:`writer.Plan.light_view` said."""
    written = ModelFile(path, *reader.read_light_model(path))
    if written.splices != splices or written.model.SerializeToString() != planned:
        raise AssertionError(f"{str(path)!r} is not the model that was checked")  # a bug
    return written


# An onnxruntime load reads every weight; past this size only the structural checks run, to keep
# set-kernel at the memory cost of a file copy (README, "Performance").
SESSION_CHECK_LIMIT = 256 << 20


def check_model_file(path: Path, *, baseline: Path | None = None) -> ModelFile:
    """onnx.checker (with shape inference) on ``path``, then a load in an InferenceSession;
    returns ``path`` read (light), for more checks without reading its structure again.

    The checker sees a light copy in which each embedded payload is an external reference into
    ``path`` itself, so no weight is read into memory whatever the model's size. When the
    result does not load in onnxruntime but ``baseline`` (the input) does not either, e.g. a
    float64 Conv that the CPU provider lacks, the result is no worse than the input: that
    is logged and accepted.
    """
    written = ModelFile(path, *reader.read_light_model(path))
    # onnx.checker and onnxruntime open the data files themselves: onnxfix's rules first.
    check_payloads(path, all_tensors(written.model), written.splices)
    light = onnx.ModelProto()
    light.CopyFrom(written.model)
    check_structure(path, light, written.splices)
    check_loads(written, baseline=baseline)
    return written


def check_structure(
    path: Path, light: onnx.ModelProto, splices: Mapping[str, reader.Splice]
) -> None:
    """onnx.checker with shape inference on ``path``'s light model; ``light`` is used up.

    The payloads in ``splices`` are made external references into ``path`` and the result is
    written beside it, so that the checker resolves them, and the data files, from there. The
    checker reads no payload: it asks only that each file named is a regular file.
    """
    reference_payloads(light, splices, path.name)
    probe = path.parent / f"{temp_prefix(path)}check.onnx"  # fits beside a name at the limit
    try:
        with open(probe, "wb") as f:
            f.write(light.SerializeToString())
        onnx.checker.check_model(str(probe), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelFileError(
            f"the result fails onnx.checker, so it was not written: {library_message(e)}"
        ) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


def check_loads(written: ModelFile, *, baseline: Path | None) -> None:
    """A load in onnxruntime of the written model (all of it in place), when small enough.

    The data files it names are checked first (:mod:`onnxfix.modelio.external`): onnxruntime
    opens whatever a model names.
    """
    path, size = written.path, 0
    files = check_payloads(path, all_tensors(written.model), written.splices)
    for part in itertools.chain([path.stat().st_size], (f.size for f in files.values())):
        size += part
        if size > SESSION_CHECK_LIMIT:
            logger.info("%s: over %d bytes, skipping the onnxruntime load check", path, size)
            return
    problem = _session_problem(path)
    if problem is None:
        return
    if baseline is not None and _session_problem(baseline) is not None:
        logger.warning(
            "onnxruntime cannot load the input model either (%s); result not load-checked", problem
        )
        return
    raise ModelFileError(
        f"the result does not load in onnxruntime, so it was not written: {problem}"
    )


def _session_problem(path: Path) -> str | None:
    """Why onnxruntime cannot load ``path``, or None when it can."""
    try:
        cpu_session(path)
    except Exception as e:  # onnxruntime raises its own (non-exported) exception types
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None
