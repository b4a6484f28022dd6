"""Put user kernels into the chosen convs of a loaded model and record what was fixed.

The work of ``set-kernel`` between loading and saving (:mod:`onnxfix.commands.set_kernel` does those):
resolve the layers, check each can be fixed before anything changes, fit and cast the
kernels, lift or untie weights where needed, and write the provenance record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx

from onnxfix._proto import find_initializer
from onnxfix.dtypes import array_to_tensor, np_dtype
from onnxfix.errors import KernelShapeError, UnsupportedWeightError, param
from onnxfix.kernels.fitting import cast_kernel, fit_kernel, parse_channels
from onnxfix.kernels.layers import ConvLayer, find_convs, resolve_layers
from onnxfix.kernels.lifting import stored_values, untie_weight, weight_initializer
from onnxfix.kernels.specs import KernelSpec, array_spec, kernel_spec, load_array, load_kernel_bank
from onnxfix.modelio.modelfile import ModelFile
from onnxfix.provenance import FixedTensor, Provenance, read_provenance, write_provenance

__all__ = ["Fixes", "fix_kernels"]

KEEP_BIAS = "bias='keep'"  # how the library says --bias keep

# What set_kernel takes: a spec, a file, or an array in memory.
Kernel = Union[str, "os.PathLike[str]", np.ndarray]
Bias = Union[str, "os.PathLike[str]", np.ndarray]  # "keep", "zero", a file or an array


def _is(bias: Bias, word: str) -> bool:
    return isinstance(bias, str) and bias == word


def _bias_text(bias: Bias) -> str:
    return array_spec(bias, what="bias").text if isinstance(bias, np.ndarray) else str(bias)


@dataclass(frozen=True)
class Fixes:
    """What :func:`fix_kernels` changed in the model."""

    fixed: list[tuple[str, FixedTensor]] = field(default_factory=list)  # name, record
    changes: list[str] = field(default_factory=list)  # lifted/untied, in plain words
    # tensor name -> the values the saved file must hold
    expect: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, record: FixedTensor, values: np.ndarray) -> None:
        self.fixed.append((name, record))
        self.expect[name] = values


def _plan(
    layers: list[ConvLayer],
    selectors: list[str],
    kernel: Kernel | None,
    kernels_file: str | os.PathLike | None,
) -> list[tuple[ConvLayer, KernelSpec]]:
    plan: dict[int, tuple[ConvLayer, KernelSpec]] = {}
    if selectors:
        if kernel is None:
            raise KernelShapeError(
                f"{param('layers')} needs {param('kernel:spec', 'a kernel')} (or give "
                f"{param('kernels_file:file', 'kernels_file')})"
            )
        spec = kernel_spec(kernel)
        for layer in resolve_layers(layers, selectors):
            plan[layer.index] = (layer, spec)
    elif kernel is not None:
        raise KernelShapeError(
            f"{param('kernel')} needs at least one {param('layers', 'layer selector')} naming "
            "the conv(s) to change"
        )
    if kernels_file is not None:
        for selector, spec in load_kernel_bank(kernels_file).items():
            for layer in resolve_layers(layers, [selector]):
                if layer.index in plan:
                    raise KernelShapeError(
                        f"layer {layer.display!r} is given two kernels ({plan[layer.index][1].text!r} "
                        f"and {spec.text!r}); give each layer one"
                    )
                plan[layer.index] = (layer, spec)
    if not plan:
        raise KernelShapeError(
            f"nothing to do: give {param('layers')} and {param('kernel')}, or "
            f"{param('kernels_file:file', 'kernels_file')}"
        )
    return [plan[i] for i in sorted(plan)]


def _check_fixable(layer: ConvLayer, chosen: set[str], untie: bool, all_uses: bool) -> None:
    name = layer.display
    if layer.quantized:
        what = layer.op if layer.op != "Conv" else "Conv with a DequantizeLinear weight"
        raise UnsupportedWeightError(
            f"layer {name!r} is quantized ({what}); onnxfix fixes float kernels only. Set the "
            "kernel in the float model, fine-tune it, then quantize"
        )
    kind = layer.source.kind
    if kind == "graph input":
        raise UnsupportedWeightError(
            f"layer {name!r} reads its weight {layer.weight!r} from a graph input, fed at run time; "
            "there is no stored kernel to fix. Export the model with its weights as initializers"
        )
    if kind in ("computed", "missing"):
        raise UnsupportedWeightError(
            f"layer {name!r} computes its weight {layer.weight!r} in the graph ({kind}); there is "
            "no stored kernel to fix"
        )
    if layer.shape is None:
        raise UnsupportedWeightError(
            f"layer {name!r}: the shape of weight {layer.weight!r} cannot be determined; "
            "run onnx shape inference on the model first"
        )
    others = [s for s in layer.shared_with if s not in chosen]
    if others and not (untie or all_uses):
        raise UnsupportedWeightError(
            f"layer {name!r} shares weight {layer.source.tensor!r} with {', '.join(map(repr, others))}; "
            f"changing it would change them too. Add {param('untie', 'untie=True')} to give this "
            f"layer its own copy, or {param('all_uses', 'all_uses=True')} to change it everywhere"
        )


def _bias_values(
    layer: ConvLayer, bias: Bias, out_channels: int, chan: np.ndarray | None
) -> np.ndarray:
    """The bias values for the chosen channels (all of them without ``--channels``)."""
    count = out_channels if chan is None else len(chan)
    if _is(bias, "zero"):
        return np.zeros(count)
    if isinstance(bias, np.ndarray):
        values = array_spec(bias, what="bias").values(())
    else:
        values = load_array(bias, what="bias")
    if values.shape != (count,):
        what = f"{out_channels} output channels" if chan is None else f"{count} chosen channels"
        raise KernelShapeError(
            f"layer {layer.display!r} has {what}, so its bias must have "
            f"shape ({count},); {_bias_text(bias)!r} holds {tuple(values.shape)}"
        )
    return values


def _set_bias(
    mf: ModelFile, layer: ConvLayer, bias: Bias, dtype: np.dtype, chan: np.ndarray | None
) -> tuple[onnx.TensorProto, np.ndarray] | None:
    out_channels = _out_channels(layer)
    chosen = _bias_values(layer, bias, out_channels, chan)
    if chan is None:
        values = chosen
    else:  # the other channels keep their bias (0 when the conv has none)
        values = np.zeros(out_channels)
        if layer.bias is not None:
            found = find_initializer(mf.model, layer.bias)
            if found is not None:
                values = mf.read_array(found[1]).astype(np.float64)
        values[chan] = chosen
    if layer.bias is None:
        if _is(bias, "zero") and chan is None:
            return None  # no bias is a zero bias already
        node = layer.node_proto
        assert node is not None
        name = f"{layer.node or layer.weight}.bias"
        graph = find_initializer(mf.model, layer.weight)
        assert graph is not None
        tensor = array_to_tensor(
            cast_kernel(values, dtype, layer=layer.display, source="--bias"), name
        )
        graph[0].initializer.append(tensor)
        node.input.append(name)
        tensor = graph[0].initializer[-1]
    else:
        found = find_initializer(mf.model, layer.bias)
        if found is None:
            raise UnsupportedWeightError(
                f"layer {layer.display!r}: its bias {layer.bias!r} is not an initializer, so "
                f"{param('bias')} cannot set it; use {param('bias:keep', KEEP_BIAS)}"
            )
        tensor = found[1]
    array = cast_kernel(
        values,
        np_dtype(tensor.data_type),
        layer=layer.display,
        source="--bias",
    )
    mf.write_array(tensor, array)
    return tensor, array


def fix_kernels(
    mf: ModelFile,
    *,
    model_name: str,
    layers: list[str],
    kernel: Kernel | None,
    kernels_file: str | os.PathLike | None,
    channels: str | None,
    bias: Bias,
    untie: bool,
    all_uses: bool,
) -> Fixes:
    """Replace the chosen convs' kernels in ``mf`` (in memory) and record them in its metadata.

    Plan (which layer gets which kernel), check every chosen layer can be fixed before anything
    changes, then fix each weight (and bias), and write the provenance record. ``model_name``
    names the model in error messages. The options are :func:`~onnxfix.set_kernel`'s.
    """
    record = read_provenance(mf.model, source=model_name)
    convs = find_convs(mf.model, fixed=set(record))
    plan = _plan(convs, layers, kernel, kernels_file)
    chosen = {layer.display for layer, _ in plan}
    for layer, _ in plan:
        _check_fixable(layer, chosen, untie, all_uses)

    fixes = Fixes()
    done: set[str] = set()
    for layer, spec in plan:
        stored = layer.source.tensor
        untied = untie and bool(layer.shared_with)
        if stored in done and layer.source.kind == "initializer" and not untied:
            continue  # --all-uses: the shared tensor was set through an earlier layer
        chan = None
        if channels is not None:
            chan = parse_channels(channels, _out_channels(layer), layer.display)
        name, weight, values = _fix_weight(
            mf, layer, spec, channels, chan, untie, all_uses, record, fixes
        )
        done.add(name)
        record[name] = weight
        fixes.add(name, weight, values)
        if not _is(bias, "keep"):
            _fix_bias(mf, layer, bias, channels, chan, weight, record, fixes)
    write_provenance(mf.model, record)
    return fixes


def _fix_weight(
    mf: ModelFile,
    layer: ConvLayer,
    spec: KernelSpec,
    channels: str | None,
    chan: np.ndarray | None,
    untie: bool,
    all_uses: bool,
    record: Provenance,
    fixes: Fixes,
) -> tuple[str, FixedTensor, np.ndarray]:
    """Fit ``spec`` into ``layer``'s weight, write it, and return the tensor's name, record
    and values (the record merged with the tensor's earlier record: channels fixed before stay fixed)."""
    assert layer.shape is not None and layer.dtype is not None  # _check_fixable
    tensor: onnx.TensorProto | None = None
    if untie and layer.shared_with:
        current = stored_values(mf, layer)
    else:
        tensor, lifted = weight_initializer(mf, layer)
        if lifted:
            fixes.changes.append(lifted)
        current = mf.read_array(tensor)
    source = f"kernel {spec.text!r}"
    new = fit_kernel(
        spec.values(tuple(layer.shape[2:])),
        current,
        layer=layer.display,
        op=layer.op,
        group=layer.group,
        channels=chan,
        source=source,
    )
    new = cast_kernel(new, current.dtype, layer=layer.display, source=source)
    if tensor is None:
        tensor = untie_weight(mf, layer, new)
        fixes.changes.append(
            f"gave layer {layer.display!r} its own copy {tensor.name!r} of shared weight "
            f"{layer.source.tensor!r}"
        )
    else:
        mf.write_array(tensor, new)
    entry = _record(
        new,
        record.get(tensor.name),
        layer=layer,
        role="weight",
        kernel=spec.text,
        channels=channels,
        chan=chan,
        shared_by=tuple(layer.shared_with) if all_uses else (),
    )
    return tensor.name, entry, new


def _record(
    values: np.ndarray,
    earlier: FixedTensor | None,
    *,
    layer: ConvLayer,
    role: str,
    kernel: str,
    channels: str | None,
    chan: np.ndarray | None,
    shared_by: tuple[str, ...] = (),
) -> FixedTensor:
    """The record of a tensor just set: its chosen channels (all without ``chan``) are fixed,
    and so stay those an earlier set-kernel fixed, with both kernels named."""
    fixed = None if chan is None else {int(c) for c in chan}
    if earlier is not None and earlier.role == role and fixed is not None:
        if earlier.fixed_channels is None:  # the whole tensor was fixed, and stays so
            kernel, channels, fixed = f"{earlier.kernel}; {kernel}", None, None
        elif not set(earlier.fixed_channels) <= fixed:
            kernel = f"{earlier.kernel}; {kernel}"
            channels = f"{earlier.channels},{channels}"
            fixed |= set(earlier.fixed_channels)
    return FixedTensor.of(
        values,
        layer=layer.display,
        op=layer.op,
        role=role,
        kernel=kernel,
        channels=channels,
        shared_by=shared_by,
        fixed_channels=None if fixed is None else tuple(sorted(fixed)),
        group=layer.group,
    )


def _fix_bias(
    mf: ModelFile,
    layer: ConvLayer,
    bias: Bias,
    channels: str | None,
    chan: np.ndarray | None,
    weight: FixedTensor,
    record: Provenance,
    fixes: Fixes,
) -> None:
    """Set ``layer``'s bias as ``--bias`` says and record it: a record of its own, made from
    the bias's values (a copy of the weight's record would carry the weight's values)."""
    set_b = _set_bias(mf, layer, bias, np_dtype(weight.dtype), chan)
    if set_b is None:
        return
    tensor, values = set_b
    entry = _record(
        values,
        record.get(tensor.name),
        layer=layer,
        role="bias",
        kernel=f"--bias {_bias_text(bias)}",
        channels=channels,
        chan=chan,
    )
    record[tensor.name] = entry
    fixes.add(tensor.name, entry, values)


def _out_channels(layer: ConvLayer) -> int:
    assert layer.shape is not None
    return layer.shape[0] if layer.op != "ConvTranspose" else layer.shape[1] * layer.group
