"""Named convolution kernels with OpenCV semantics: ``sobel-x``, ``gaussian:sigma=1.2``, ...

A named kernel is a spec ``name[:key=value,...]`` that :func:`make_named_kernel` turns into a
float64 array of the conv's kernel spatial shape. ONNX ``Conv`` computes a correlation, as
``cv2.filter2D`` does, so every array here is exactly the one OpenCV would pass to ``filter2D``;
nothing is flipped. ``sobel-x`` is ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``, so brightness
rising to the right gives a positive response.

Filters that OpenCV defines follow its function and parameter names (``cv2.getDerivKernels``,
``cv2.getGaussianKernel``, ``cv2.getGaborKernel``, ...). The few it lacks use the textbook
definition and say so in their summary.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from onnxfix.errors import KernelShapeError, KernelSpecError

__all__ = [
    "FilterParam",
    "FilterInfo",
    "list_filters",
    "is_named_kernel",
    "parse_named_kernel",
    "make_named_kernel",
]


@dataclass(frozen=True)
class FilterParam:
    """One ``key=value`` parameter a filter accepts; ``default``'s type is the value's type."""

    name: str
    default: float | int | bool
    help: str


@dataclass(frozen=True)
class FilterInfo:
    """What ``onnxfix kernels`` shows about one named filter."""

    name: str
    params: tuple[FilterParam, ...]
    sizes: str
    ndims: tuple[int, ...]
    summary: str


# (is the value allowed, the rule in words for the error message)
_Rule = tuple[Callable[[Any], bool], str]
# (display name, params with defaults filled in, spatial shape of a supported rank) -> kernel
_Build = Callable[[str, dict[str, Any], tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class _Filter:
    info: FilterInfo
    build: _Build
    # param name -> the rules its value must follow, in order
    rules: dict[str, tuple[_Rule, ...]]


_GIVE_ARRAY = "Use a conv with such a kernel or give the kernel as an array."


def _shape_text(shape: tuple[int, ...]) -> str:
    text = "x".join(str(n) for n in shape)
    return f"{text} (1-D)" if len(shape) == 1 else text


def _shape_error(
    name: str, needs: str, shape: tuple[int, ...], fix: str = _GIVE_ARRAY
) -> KernelShapeError:
    return KernelShapeError(
        f"{name} needs {needs}; this conv's kernel is {_shape_text(shape)}. {fix}"
    )


def _deriv_1d(order: int, ksize: int) -> np.ndarray:
    """One factor of cv2.getDerivKernels: ``ksize - 1 - order`` binomial smoothing steps, then
    ``order`` differences (OpenCV's getSobelKernels builds the same row the same way)."""
    row = np.ones(1)
    for step in [(1.0, 1.0)] * (ksize - 1 - order) + [(-1.0, 1.0)] * order:
        row = np.convolve(row, step)
    return row


def _deriv_2d(dx: int, dy: int, ksize: int) -> np.ndarray:
    return np.outer(_deriv_1d(dy, ksize), _deriv_1d(dx, ksize))


def _sobel(dx: int, dy: int) -> _Build:
    def build(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
        if shape not in ((3, 3), (5, 5), (7, 7)):
            raise _shape_error(name, "a square odd kernel of size 3, 5 or 7", shape)
        return _deriv_2d(dx, dy, shape[0]) * params["scale"]

    return build


def _fixed(kernel: Any) -> _Build:
    fixed = np.array(kernel, dtype=np.float64)

    def build(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
        if shape != fixed.shape:
            raise _shape_error(name, f"a {_shape_text(fixed.shape)} kernel", shape)
        return fixed * params.get("scale", 1.0)

    return build


def _laplacian(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    ksize = params["ksize"]
    aperture = 3 if ksize == 1 else ksize
    if shape != (aperture, aperture):
        fitting: dict[tuple[int, ...], str] = {
            (3, 3): "ksize=1 or ksize=3",
            (5, 5): "ksize=5",
            (7, 7): "ksize=7",
        }
        fits = fitting.get(shape)
        fix = f"Use laplacian:{fits} for this conv" if fits else "Use a 3x3, 5x5 or 7x7 conv"
        raise _shape_error(
            f"laplacian with ksize={ksize}",
            f"a {aperture}x{aperture} kernel",
            shape,
            f"{fix} or give the kernel as an array.",
        )
    if ksize == 1:  # cv2.Laplacian's ksize=1 is this fixed 3x3 aperture, not a Sobel sum
        kernel = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    else:
        kernel = _deriv_2d(2, 0, ksize) + _deriv_2d(0, 2, ksize)
    return kernel * params["scale"]


# cv2.getGaussianKernel's fixed kernels for sigma <= 0, as numerators over a power of two.
_SMALL_GAUSSIAN = {
    1: ([1], 1),
    3: ([1, 2, 1], 4),
    5: ([1, 4, 6, 4, 1], 16),
    7: ([1, 3.5, 7, 9, 7, 3.5, 1], 32),
    9: ([4, 13, 30, 51, 60, 51, 30, 13, 4], 256),
}


def _gaussian_1d(ksize: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, sigma) as OpenCV builds it (its getGaussianKernelBitExact)."""
    if sigma <= 0 and ksize in _SMALL_GAUSSIAN:
        taps, denominator = _SMALL_GAUSSIAN[ksize]
        return np.array(taps, dtype=np.float64) / denominator
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    # For an even size OpenCV weights both middle taps as exp(0) = 1 instead of sampling them at
    # +-0.5 (the other taps are sampled where they are); copied so even sizes match cv2 too.
    n_side = (ksize - 1) // 2
    x = np.arange(n_side) - (ksize - 1) * 0.5
    side = np.exp(-0.5 / (sigma * sigma) * x * x)
    row = np.concatenate([side, np.ones(ksize - 2 * n_side), side[::-1]])
    return row / row.sum()


def _gaussian(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    sigmas = [params["sigma"]] * len(shape)
    if params["sigma_y"] > 0:
        if len(shape) != 2:
            fix = "Drop sigma_y; sigma applies to every axis."
            raise _shape_error("gaussian's sigma_y", "a 2-D kernel", shape, fix)
        sigmas[0] = params["sigma_y"]  # cv2.GaussianBlur: sigmaY is the height axis
    kernel = np.ones(())
    for size, sigma in zip(shape, sigmas):
        kernel = np.multiply.outer(kernel, _gaussian_1d(size, sigma))
    return kernel


def _log(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] != shape[1] or shape[0] % 2 == 0:
        raise _shape_error(name, "a square odd kernel (3x3, 5x5, 7x7, ...)", shape)
    sigma = params["sigma"]
    r = shape[0] // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    q = (x * x + y * y) / (2.0 * sigma * sigma)
    kernel = -(1.0 - q) * np.exp(-q) / (math.pi * sigma**4)
    # A truncated LoG does not sum to 0, so it would respond to flat regions; shift it so it does.
    return kernel - kernel.mean()


def _gabor(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] % 2 == 0 or shape[1] % 2 == 0:
        raise _shape_error(name, "odd sizes (cv2.getGaborKernel makes even ones 1 larger)", shape)
    sigma, theta, lambd = params["sigma"], params["theta"], params["lambd"]
    sigma_y = sigma / params["gamma"]
    if sigma_y < _WIDTHS[0]:  # its square would underflow to 0, and be divided by
        raise KernelSpecError(
            f"gabor's envelope height sigma/gamma is {sigma_y:g} (sigma={sigma:g}, "
            f"gamma={params['gamma']:g}); it must be at least {_WIDTHS[0]:g}: lower gamma or "
            "raise sigma."
        )
    ymax, xmax = shape[0] // 2, shape[1] // 2
    # getGaborKernel stores the value for (x, y) at [ymax - y, xmax - x]: both axes run backwards.
    y = np.arange(ymax, -ymax - 1, -1, dtype=np.float64)[:, None]
    x = np.arange(xmax, -xmax - 1, -1, dtype=np.float64)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    xr = x * c + y * s
    yr = -x * s + y * c
    envelope = np.exp(-0.5 / (sigma * sigma) * xr * xr + -0.5 / (sigma_y * sigma_y) * yr * yr)
    return envelope * np.cos(math.pi * 2 / lambd * xr + params["psi"])


def _box(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, 1.0 / math.prod(shape) if params["normalize"] else 1.0)


def _identity(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    if any(n % 2 == 0 for n in shape):
        raise _shape_error(name, "an odd size on every axis, so it has a centre", shape)
    kernel = np.zeros(shape)
    kernel[tuple(n // 2 for n in shape)] = 1.0
    return kernel


_POSITIVE: _Rule = (lambda v: v > 0, "> 0")
# A sigma or wavelength is squared (log: to the 4th) and divided by: far below 1 it underflows
# to 0 and the formula divides by zero, far above it overflows; a kernel that narrow is a single
# 1 (identity), one that wide is flat (box) or 0.
_WIDTHS = (1e-3, 1e6)
_NARROW: _Rule = (
    lambda v: v >= _WIDTHS[0],
    f"at least {_WIDTHS[0]:g} (narrower is a single 1: use identity)",
)
_NARROW_OR_0: _Rule = (
    lambda v: v == 0 or v >= _WIDTHS[0],
    f"0 or at least {_WIDTHS[0]:g} (narrower is a single 1: use identity)",
)
_WIDE: _Rule = (lambda v: v <= _WIDTHS[1], f"at most {_WIDTHS[1]:g} (wider is 0 everywhere)")
_SCALE = FilterParam("scale", 1.0, "multiplies every weight, like cv2's scale argument")
_SCHARR_X = np.array([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]])
_PREWITT_X = np.array([[-1.0, 0.0, 1.0]] * 3)
_ANY_RANK = (1, 2, 3)


def _filter(
    name: str,
    build: _Build,
    summary: str,
    sizes: str,
    params: tuple[FilterParam, ...] = (),
    ndims: tuple[int, ...] = (2,),
    rules: dict[str, tuple[_Rule, ...]] | None = None,
) -> tuple[str, _Filter]:
    return name, _Filter(FilterInfo(name, params, sizes, ndims, summary), build, rules or {})


_FILTERS: dict[str, _Filter] = dict(
    [
        *(
            _filter(
                f"sobel-{axis}",
                _sobel(dx, 1 - dx),
                f"{axis}-derivative, as cv2.Sobel(dx={dx}, dy={1 - dx}) / cv2.getDerivKernels",
                "square 3x3, 5x5 or 7x7 (ksize taken from the conv)",
                (_SCALE,),
            )
            for axis, dx in (("x", 1), ("y", 0))
        ),
        *(
            _filter(
                f"scharr-{axis}",
                _fixed(kernel),
                f"{axis}-derivative, as cv2.Scharr(dx={dx}, dy={1 - dx})",
                "3x3 only",
                (_SCALE,),
            )
            for axis, dx, kernel in (("x", 1, _SCHARR_X), ("y", 0, _SCHARR_X.T))
        ),
        *(
            _filter(
                f"prewitt-{axis}",
                _fixed(kernel),
                f"{axis}-derivative; not in OpenCV, textbook Prewitt",
                "3x3 only",
            )
            for axis, kernel in (("x", _PREWITT_X), ("y", _PREWITT_X.T))
        ),
        _filter(
            "laplacian",
            _laplacian,
            "as cv2.Laplacian; ksize=1 is its 3x3 aperture, 3/5/7 sum 2nd-order Sobel kernels",
            "3x3 for ksize 1 or 3; 5x5 or 7x7 for ksize 5 or 7",
            (
                FilterParam("ksize", 1, "cv2.Laplacian's ksize: 1 (its 3x3 aperture), 3, 5 or 7"),
                _SCALE,
            ),
            rules={"ksize": ((lambda v: v in (1, 3, 5, 7), "1, 3, 5 or 7"),)},
        ),
        _filter(
            "gaussian",
            _gaussian,
            "cv2.getGaussianKernel on each axis, multiplied together (as cv2.GaussianBlur)",
            "any size, odd or even, non-square allowed",
            (
                FilterParam("sigma", 0.0, "standard deviation on every axis; 0 = from each size"),
                FilterParam("sigma_y", 0.0, "2-D only: sigma of the height axis; 0 = sigma"),
            ),
            _ANY_RANK,
            rules={
                "sigma": ((lambda v: v >= 0, ">= 0 (0 derives it from the size)"), _NARROW_OR_0),
                "sigma_y": ((lambda v: v >= 0, ">= 0 (0 means the same as sigma)"), _NARROW_OR_0),
            },
        ),
        _filter(
            "log",
            _log,
            "Laplacian of Gaussian; not in OpenCV, textbook formula sampled, shifted to sum to 0",
            "square odd (3x3, 5x5, 7x7, ...)",
            (FilterParam("sigma", 1.0, "standard deviation of the Gaussian"),),
            rules={"sigma": (_POSITIVE, _NARROW, _WIDE)},
        ),
        _filter(
            "gabor",
            _gabor,
            "as cv2.getGaborKernel(ksize, sigma, theta, lambd, gamma, psi, ktype=CV_64F)",
            "any odd size, non-square allowed",
            (
                FilterParam("sigma", 2.0, "standard deviation of the Gaussian envelope"),
                FilterParam("theta", 0.0, "direction of the stripes' normal, in radians"),
                FilterParam("lambd", 4.0, "wavelength of the sinusoid, in pixels"),
                FilterParam("gamma", 0.5, "spatial aspect ratio of the envelope"),
                FilterParam("psi", math.pi * 0.5, "phase in radians; OpenCV's pi/2 finds edges"),
            ),
            rules={
                "sigma": (_POSITIVE, _NARROW),
                "lambd": (_POSITIVE, (lambda v: v >= _WIDTHS[0], f"at least {_WIDTHS[0]:g}")),
                "gamma": (_POSITIVE,),
            },
        ),
        _filter(
            "box",
            _box,
            "as cv2.boxFilter / cv2.blur: all ones, divided by their count if normalize=true",
            "any size",
            (FilterParam("normalize", True, "divide by the number of weights so they sum to 1"),),
            _ANY_RANK,
        ),
        _filter(
            "identity",
            _identity,
            "1 at the centre, 0 elsewhere; not in OpenCV (filter2D with it returns the input)",
            "any odd size",
            ndims=_ANY_RANK,
        ),
        _filter(
            "sharpen",
            _fixed([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
            "[[0,-1,0],[-1,5,-1],[0,-1,0]]; not in OpenCV, textbook sharpening",
            "3x3 only",
        ),
    ]
)


def list_filters() -> list[FilterInfo]:
    """Every named filter, in the order ``onnxfix kernels`` lists them."""
    return [f.info for f in _FILTERS.values()]


def is_named_kernel(spec: str) -> bool:
    """Whether ``spec``'s part before ``:`` names a filter (any case), not a file or a literal."""
    return spec.split(":", 1)[0].strip().lower() in _FILTERS


_KIND_TEXT = {bool: "true or false (or 1 or 0)", int: "an integer", float: "a number"}


def _parse_value(param: FilterParam, text: str, spec: str) -> float | int | bool:
    kind = type(param.default)
    value: float | int | bool
    try:
        if kind is bool:
            value = {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        else:
            value = kind(text)
    except (KeyError, ValueError):
        raise KernelSpecError(
            f"{param.name} must be {_KIND_TEXT[kind]}, got '{text}' in '{spec}'."
        ) from None
    if kind is float and not math.isfinite(value):
        raise KernelSpecError(f"{param.name} must be a finite number, got '{text}' in '{spec}'.")
    return value


def parse_named_kernel(spec: str) -> tuple[str, dict[str, float | int | bool]]:
    """Split ``name[:key=value,...]`` into the filter name (lower case) and every parameter value.

    Parameters the spec leaves out are filled with their defaults, so the result records the
    whole recipe even if a default changes later.
    """
    head, has_params, rest = spec.partition(":")
    name = head.strip().lower()
    if name not in _FILTERS:
        known = ", ".join(_FILTERS)
        if not name:
            raise KernelSpecError(
                f"'{spec}' does not start with a filter name; use one of: {known}."
            )
        close = difflib.get_close_matches(name, _FILTERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KernelSpecError(f"unknown filter '{head.strip()}' in '{spec}'; known: {known}.{hint}")
    chosen = _FILTERS[name]
    params = {p.name: p for p in chosen.info.params}
    if has_params and not params:
        raise KernelSpecError(f"{name} takes no parameters; write just '{name}', not '{spec}'.")
    values: dict[str, Any] = {p.name: p.default for p in chosen.info.params}
    given: set[str] = set()
    for item in rest.split(",") if has_params else []:
        key, has_value, text = (part.strip() for part in item.partition("="))
        key = key.lower()
        if not key or not has_value or not text:
            first = chosen.info.params[0]
            example = f"e.g. {name}:{first.name}={str(first.default).lower()}"
            if not item.strip():
                raise KernelSpecError(
                    f"'{spec}' has an empty parameter (a stray comma?); write {example}."
                )
            raise KernelSpecError(
                f"'{item.strip()}' in '{spec}' is not key=value; write {example}."
            )
        if key not in params:
            raise KernelSpecError(
                f"{name} has no parameter '{key}' (in '{spec}'); it has: {', '.join(params)}."
            )
        if key in given:
            raise KernelSpecError(f"{key} is given twice in '{spec}'; give each parameter once.")
        given.add(key)
        values[key] = _parse_value(params[key], text, spec)
        for allowed, rule in chosen.rules.get(key, ()):
            if not allowed(values[key]):
                raise KernelSpecError(f"{name}'s {key} must be {rule}, got {text} in '{spec}'.")
    return name, values


def make_named_kernel(spec: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """The float64 kernel ``spec`` names, shaped exactly ``spatial_shape`` (the conv's kernel size).

    Size-free filters adapt to the shape; fixed-size ones raise :class:`KernelShapeError`.
    """
    name, params = parse_named_kernel(spec)
    shape = tuple(int(n) for n in spatial_shape)
    chosen = _FILTERS[name]
    if any(n < 1 for n in shape):
        raise KernelShapeError(
            f"this conv's kernel shape {shape} has an empty axis, so {name} cannot fill it; "
            "check the model's weight shape."
        )
    if len(shape) not in chosen.info.ndims:
        *others, last = [f"{n}-D" for n in chosen.info.ndims]
        ranks = f"{', '.join(others)} or {last}" if others else last
        raise _shape_error(name, f"a {ranks} kernel", shape)
    kernel = chosen.build(name, params, shape)
    assert kernel.shape == shape, (name, kernel.shape, shape)
    return kernel.astype(np.float64, copy=False)
