"""Named kernels: values against OpenCV's documented numbers, independent formulas and cv2 itself.

The cv2 tests need opencv-python-headless (in the test extra) and skip without it. The others take
their expected values from literals, OpenCV's documented numbers or scalar re-derivations.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from onnxfix.errors import KernelShapeError, KernelSpecError
from onnxfix.kernels.filters import (
    FilterInfo,
    FilterParam,
    is_named_kernel,
    list_filters,
    make_named_kernel,
    parse_named_kernel,
)

ALL_NAMES = [
    "sobel-x",
    "sobel-y",
    "scharr-x",
    "scharr-y",
    "prewitt-x",
    "prewitt-y",
    "laplacian",
    "gaussian",
    "log",
    "gabor",
    "box",
    "identity",
    "sharpen",
]
KNOWN = ", ".join(ALL_NAMES)


@pytest.fixture(scope="module")
def cv2():
    return pytest.importorskip(
        "cv2", reason="opencv-python-headless is not installed (it is in the test extra)"
    )


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).uniform(-1.0, 1.0, size=(23, 29))


def correlate_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """What ONNX Conv (no padding) computes: a correlation, kernel not flipped."""
    return (sliding_window_view(image, kernel.shape) * kernel).sum(axis=(-2, -1))


# ---------------------------------------------------------------- derivative filters


def test_sobel_3x3_is_the_kernel_opencv_documents():
    assert make_named_kernel("sobel-x", (3, 3)).tolist() == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    assert make_named_kernel("sobel-y", (3, 3)).tolist() == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]


def test_sobel_takes_its_ksize_from_the_conv():
    expected_5 = [
        [-1, -2, 0, 2, 1],
        [-4, -8, 0, 8, 4],
        [-6, -12, 0, 12, 6],
        [-4, -8, 0, 8, 4],
        [-1, -2, 0, 2, 1],
    ]
    assert make_named_kernel("sobel-x", (5, 5)).tolist() == expected_5
    # Rows of cv2.getDerivKernels(1, 0, 7): derivative [-1,-4,-5,0,5,4,1], smoothing binomial(6).
    expected_7 = np.outer([1, 6, 15, 20, 15, 6, 1], [-1, -4, -5, 0, 5, 4, 1])
    np.testing.assert_array_equal(make_named_kernel("sobel-x", (7, 7)), expected_7)
    np.testing.assert_array_equal(make_named_kernel("sobel-y", (7, 7)), expected_7.T)


def test_sobel_scale_multiplies_every_weight():
    kernel = make_named_kernel("sobel-y:scale=0.125", (3, 3))
    assert kernel.tolist() == [[-0.125, -0.25, -0.125], [0, 0, 0], [0.125, 0.25, 0.125]]


def test_scharr_prewitt_and_sharpen_values():
    scharr_x = [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]
    assert make_named_kernel("scharr-x", (3, 3)).tolist() == scharr_x
    assert make_named_kernel("scharr-y", (3, 3)).tolist() == np.transpose(scharr_x).tolist()
    assert make_named_kernel("scharr-x:scale=-2", (3, 3)).tolist() == [
        [6, 0, -6],
        [20, 0, -20],
        [6, 0, -6],
    ]
    assert make_named_kernel("prewitt-x", (3, 3)).tolist() == [[-1, 0, 1]] * 3
    assert make_named_kernel("prewitt-y", (3, 3)).tolist() == [[-1, -1, -1], [0, 0, 0], [1, 1, 1]]
    assert make_named_kernel("sharpen", (3, 3)).tolist() == [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]


# Each x-filter on the ramp image[y, x] = x gives a constant, positive response (and the
# y-filter the same on image[y, x] = y): the sign shows the kernel is not flipped.
RAMP_RESPONSES = [
    ("sobel", (3, 3), 8.0),
    ("sobel", (5, 5), 128.0),
    ("sobel", (7, 7), 2048.0),
    ("scharr", (3, 3), 32.0),
    ("prewitt", (3, 3), 6.0),
]


@pytest.mark.parametrize(("family", "shape", "response"), RAMP_RESPONSES)
def test_derivative_filters_respond_positively_to_a_rising_ramp(family, shape, response):
    ramp = np.tile(np.arange(12.0), (12, 1))
    out_x = correlate_valid(ramp, make_named_kernel(f"{family}-x", shape))
    out_y = correlate_valid(ramp.T, make_named_kernel(f"{family}-y", shape))
    np.testing.assert_array_equal(out_x, np.full_like(out_x, response))
    np.testing.assert_array_equal(out_y, np.full_like(out_y, response))


def test_onnx_conv_applies_the_kernel_unflipped():
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    kernel = make_named_kernel("gabor:theta=0.4", (5, 7))  # asymmetric along both axes
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1, 11, 13])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(kernel[None, None], "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).normal(size=(11, 13))
    (y,) = ReferenceEvaluator(model).run(None, {"x": x[None, None]})
    np.testing.assert_allclose(y[0, 0], correlate_valid(x, kernel), rtol=1e-12, atol=1e-12)


LAPLACIANS = {
    1: [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    3: [[2, 0, 2], [0, -8, 0], [2, 0, 2]],
    5: [
        [2, 4, 4, 4, 2],
        [4, 0, -8, 0, 4],
        [4, -8, -24, -8, 4],
        [4, 0, -8, 0, 4],
        [2, 4, 4, 4, 2],
    ],
    7: [
        [2, 8, 14, 16, 14, 8, 2],
        [8, 24, 24, 16, 24, 24, 8],
        [14, 24, -30, -80, -30, 24, 14],
        [16, 16, -80, -160, -80, 16, 16],
        [14, 24, -30, -80, -30, 24, 14],
        [8, 24, 24, 16, 24, 24, 8],
        [2, 8, 14, 16, 14, 8, 2],
    ],
}


@pytest.mark.parametrize("ksize", [1, 3, 5, 7])
def test_laplacian_values(ksize):
    size = max(ksize, 3)
    assert make_named_kernel(f"laplacian:ksize={ksize}", (size, size)).tolist() == LAPLACIANS[ksize]


def test_laplacian_defaults_to_ksize_1_and_scales():
    assert make_named_kernel("laplacian", (3, 3)).tolist() == LAPLACIANS[1]
    kernel = make_named_kernel("laplacian:scale=0.5,ksize=3", (3, 3))
    assert kernel.tolist() == (np.array(LAPLACIANS[3]) * 0.5).tolist()


# ---------------------------------------------------------------- gaussian


def sampled_gaussian(n: int, sigma: float) -> list[float]:
    """getGaussianKernel's documented formula, for odd sizes beyond its fixed tables."""
    if sigma <= 0:
        sigma = 0.3 * ((n - 1) * 0.5 - 1) + 0.8
    weights = [math.exp(-((i - (n - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(n)]
    return [w / sum(weights) for w in weights]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [1.0]),
        (3, [0.25, 0.5, 0.25]),
        (5, [0.0625, 0.25, 0.375, 0.25, 0.0625]),
        (7, [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]),
        (
            9,
            [
                4 / 256,
                13 / 256,
                30 / 256,
                51 / 256,
                60 / 256,
                51 / 256,
                30 / 256,
                13 / 256,
                4 / 256,
            ],
        ),
    ],
)
def test_gaussian_uses_opencv_fixed_tables_when_sigma_is_0(n, expected):
    assert make_named_kernel("gaussian", (n,)).tolist() == expected


@pytest.mark.parametrize(("n", "sigma"), [(5, 1.2), (3, 0.5), (9, 2.0), (11, 0.0), (15, 0.0)])
def test_gaussian_odd_sizes_follow_the_documented_formula(n, sigma):
    kernel = make_named_kernel(f"gaussian:sigma={sigma}", (n,))
    np.testing.assert_allclose(kernel, sampled_gaussian(n, sigma), rtol=1e-13)


def test_gaussian_5_sigma_1_2_matches_opencv_printout():
    expected = [0.08562916395501292, 0.24266759672960797, 0.3434064786307582]
    kernel = make_named_kernel("gaussian:sigma=1.2", (5,))
    np.testing.assert_allclose(kernel, expected + expected[1::-1], rtol=1e-14)


def test_gaussian_even_sizes_weight_the_two_middle_taps_like_opencv():
    # cv2.getGaussianKernel(4, 0): sigma = 0.95, outer taps at +-1.5, middle taps weighted 1.
    e = math.exp(-(1.5**2) / (2 * 0.95**2))
    expected = [e / (2 + 2 * e), 1 / (2 + 2 * e), 1 / (2 + 2 * e), e / (2 + 2 * e)]
    np.testing.assert_allclose(make_named_kernel("gaussian", (4,)), expected, rtol=1e-14)
    np.testing.assert_allclose(expected[:2], [0.11165005380519624, 0.38834994619480373])
    assert make_named_kernel("gaussian:sigma=3", (2,)).tolist() == [0.5, 0.5]


def test_gaussian_2d_is_the_outer_product_with_sigma_y_down_the_height():
    kernel = make_named_kernel("gaussian:sigma=1.5,sigma_y=0.8", (3, 5))
    expected = np.outer(sampled_gaussian(3, 0.8), sampled_gaussian(5, 1.5))
    np.testing.assert_allclose(kernel, expected, rtol=1e-13)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-15)


def test_gaussian_sigma_0_derives_each_axis_from_its_own_size():
    kernel = make_named_kernel("gaussian", (3, 11))
    np.testing.assert_allclose(kernel, np.outer([0.25, 0.5, 0.25], sampled_gaussian(11, 0)))


def test_gaussian_3d():
    kernel = make_named_kernel("gaussian", (3, 3, 3))
    assert kernel[1, 1, 1] == 0.125
    assert kernel[0, 0, 0] == 1 / 64
    assert kernel[0, 1, 2] == 1 / 32
    assert kernel.sum() == 1.0


# ---------------------------------------------------------------- log, gabor, box, identity


def test_log_3x3_sigma_1_by_hand():
    # -1/(pi s^4) (1 - r^2/2s^2) exp(-r^2/2s^2) at r^2 = 0, 1, 2, then shifted to sum 0.
    centre, edge, corner = -1 / math.pi, -0.5 / math.pi * math.exp(-0.5), 0.0
    mean = (centre + 4 * edge + 4 * corner) / 9
    expected = np.array([[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]])
    np.testing.assert_allclose(make_named_kernel("log", (3, 3)), expected - mean, rtol=1e-13)


@pytest.mark.parametrize(("size", "sigma"), [(5, 0.8), (7, 1.4), (9, 2.0)])
def test_log_sums_to_0_is_symmetric_and_negative_at_the_centre(size, sigma):
    kernel = make_named_kernel(f"log:sigma={sigma}", (size, size))
    assert abs(kernel.sum()) < 1e-14
    np.testing.assert_array_equal(kernel, kernel.T)
    np.testing.assert_array_equal(kernel, kernel[::-1, ::-1])
    assert kernel.argmin() == kernel.size // 2


def opencv_gabor_loop(shape, sigma, theta, lambd, gamma, psi) -> np.ndarray:
    """getGaborKernel's C++ loop, transcribed line by line."""
    sigma_x, sigma_y = sigma, sigma / gamma
    xmax, ymax = shape[1] // 2, shape[0] // 2
    c, s = math.cos(theta), math.sin(theta)
    kernel = np.zeros(shape)
    for y in range(-ymax, ymax + 1):
        for x in range(-xmax, xmax + 1):
            xr = x * c + y * s
            yr = -x * s + y * c
            v = math.exp(-0.5 / sigma_x**2 * xr * xr - 0.5 / sigma_y**2 * yr * yr)
            kernel[ymax - y, xmax - x] = v * math.cos(2 * math.pi / lambd * xr + psi)
    return kernel


GABOR_CASES = [
    ((3, 3), "", (2.0, 0.0, 4.0, 0.5, math.pi / 2)),
    ((7, 7), "theta=0.785,sigma=2,lambd=4,gamma=0.5,psi=0", (2.0, 0.785, 4.0, 0.5, 0.0)),
    ((5, 9), "sigma=1.3,theta=2,lambd=3,gamma=1.5,psi=1", (1.3, 2.0, 3.0, 1.5, 1.0)),
    ((11, 3), "theta=-0.5,lambd=6", (2.0, -0.5, 6.0, 0.5, math.pi / 2)),
    ((1, 1), "psi=0", (2.0, 0.0, 4.0, 0.5, 0.0)),
]


@pytest.mark.parametrize(("shape", "params", "args"), GABOR_CASES)
def test_gabor_matches_opencv_loop(shape, params, args):
    kernel = make_named_kernel(f"gabor:{params}" if params else "gabor", shape)
    np.testing.assert_allclose(kernel, opencv_gabor_loop(shape, *args), rtol=1e-13, atol=1e-15)


def test_gabor_default_finds_edges_with_sobel_x_sign():
    # psi = pi/2, theta = 0: the value for x is -sin(pi x / 2) * envelope, stored at column
    # xmax - x, so the left column is negative and the right one positive, as in sobel-x.
    kernel = make_named_kernel("gabor", (3, 3))
    # Envelope at x = +-1 (sigma_x = 2) and y = -1, 0, 1 (sigma_y = 2 / gamma = 4).
    down = math.exp(-1 / 32)
    envelope = [math.exp(-1 / 8) * e for e in (down, 1.0, down)]
    np.testing.assert_allclose(kernel[:, 0], [-e for e in envelope], rtol=1e-15)
    np.testing.assert_allclose(kernel[:, 2], envelope, rtol=1e-15)
    np.testing.assert_allclose(kernel[:, 1], 0.0, atol=1e-15)


def test_box():
    assert make_named_kernel("box", (2, 4)).tolist() == [[0.125] * 4] * 2
    assert make_named_kernel("box:normalize=false", (3, 3)).tolist() == [[1.0] * 3] * 3
    assert make_named_kernel("box:normalize=0", (5,)).tolist() == [1.0] * 5
    np.testing.assert_array_equal(make_named_kernel("box", (2, 2, 2)), np.full((2, 2, 2), 0.125))


def test_identity():
    assert make_named_kernel("identity", (5,)).tolist() == [0, 0, 1, 0, 0]
    assert make_named_kernel("identity", (3, 5)).tolist() == [[0] * 5, [0, 0, 1, 0, 0], [0] * 5]
    kernel = make_named_kernel("identity", (3, 3, 3))
    assert kernel[1, 1, 1] == 1.0 and kernel.sum() == 1.0


WORKING_SHAPES = {
    "sobel-x": (5, 5),
    "sobel-y": (7, 7),
    "scharr-x": (3, 3),
    "scharr-y": (3, 3),
    "prewitt-x": (3, 3),
    "prewitt-y": (3, 3),
    "laplacian": (3, 3),
    "gaussian": (4, 6),
    "log": (5, 5),
    "gabor": (5, 3),
    "box": (2, 3, 4),
    "identity": (1, 3, 5),
    "sharpen": (3, 3),
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_filter_returns_float64_of_exactly_the_conv_shape(name):
    kernel = make_named_kernel(name, WORKING_SHAPES[name])
    assert kernel.dtype == np.float64
    assert kernel.shape == WORKING_SHAPES[name]
    assert np.isfinite(kernel).all() and np.any(kernel != 0)


# ---------------------------------------------------------------- parsing and listing


def test_list_filters_describes_every_filter():
    infos = list_filters()
    assert [info.name for info in infos] == ALL_NAMES
    for info in infos:
        assert isinstance(info, FilterInfo)
        assert "cv2." in info.summary or "not in OpenCV" in info.summary, info.name
        assert info.sizes and set(info.ndims) <= {1, 2, 3}
        assert all(isinstance(p, FilterParam) and p.help for p in info.params)
    gabor = {p.name: p.default for p in infos[ALL_NAMES.index("gabor")].params}
    assert gabor == {"sigma": 2.0, "theta": 0.0, "lambd": 4.0, "gamma": 0.5, "psi": math.pi / 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("info", list_filters(), ids=lambda info: info.name)
def test_every_listed_default_parses_back_to_itself(info):
    spec = info.name + "".join(
        f"{':' if i == 0 else ','}{p.name}={str(p.default).lower()}"
        for i, p in enumerate(info.params)
    )
    assert parse_named_kernel(spec) == (info.name, {p.name: p.default for p in info.params})
    assert parse_named_kernel(info.name) == parse_named_kernel(spec)


def test_parse_fills_defaults_and_types_values():
    assert parse_named_kernel("gaussian:sigma=2") == ("gaussian", {"sigma": 2.0, "sigma_y": 0.0})
    assert isinstance(parse_named_kernel("gaussian:sigma=2")[1]["sigma"], float)
    assert parse_named_kernel("laplacian:ksize=5") == ("laplacian", {"ksize": 5, "scale": 1.0})
    assert parse_named_kernel("sobel-x") == ("sobel-x", {"scale": 1.0})
    assert parse_named_kernel("identity") == ("identity", {})


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)]
)
def test_parse_booleans(text, value):
    assert parse_named_kernel(f"box:normalize={text}") == ("box", {"normalize": value})


def test_parse_ignores_case_and_spaces():
    expected = ("gabor", {"sigma": 2.0, "theta": 0.5, "lambd": 4.0, "gamma": 1.0, "psi": 0.0})
    assert parse_named_kernel(" GABOR : Theta = 0.5 , gamma=1, PSI=0 ") == expected


@pytest.mark.parametrize(
    "spec", ["sobel-x", "SOBEL-X", "Gaussian:sigma=1.2", " box ", "log:sigma=2", "identity"]
)
def test_is_named_kernel_true(spec):
    assert is_named_kernel(spec)


@pytest.mark.parametrize(
    "spec",
    ["k.npy", "gaussian.npy", "kernels/sobel-x.npy", "C:\\k.npy", "[[1, 0], [0, 1]]", "", "sobel"],
)
def test_is_named_kernel_false(spec):
    assert not is_named_kernel(spec)


# ---------------------------------------------------------------- errors, exact text

SPEC_ERRORS = [
    (
        "sobelx",
        f"unknown filter 'sobelx' in 'sobelx'; known: {KNOWN}. Did you mean 'sobel-x'?",
    ),
    ("k.npy", f"unknown filter 'k.npy' in 'k.npy'; known: {KNOWN}."),
    ("", f"'' does not start with a filter name; use one of: {KNOWN}."),
    (" :sigma=1", f"' :sigma=1' does not start with a filter name; use one of: {KNOWN}."),
    ("identity:", "identity takes no parameters; write just 'identity', not 'identity:'."),
    (
        "sharpen:scale=2",
        "sharpen takes no parameters; write just 'sharpen', not 'sharpen:scale=2'.",
    ),
    (
        "gaussian:",
        "'gaussian:' has an empty parameter (a stray comma?); write e.g. gaussian:sigma=0.0.",
    ),
    (
        "log:sigma=1,,",
        "'log:sigma=1,,' has an empty parameter (a stray comma?); write e.g. log:sigma=1.0.",
    ),
    (
        "gaussian:sigma",
        "'sigma' in 'gaussian:sigma' is not key=value; write e.g. gaussian:sigma=0.0.",
    ),
    (
        "gaussian:sigma=",
        "'sigma=' in 'gaussian:sigma=' is not key=value; write e.g. gaussian:sigma=0.0.",
    ),
    ("box:=1", "'=1' in 'box:=1' is not key=value; write e.g. box:normalize=true."),
    (
        "gaussian:sigmax=1",
        "gaussian has no parameter 'sigmax' (in 'gaussian:sigmax=1'); it has: sigma, sigma_y.",
    ),
    (
        "gabor:lambda=4",
        "gabor has no parameter 'lambda' (in 'gabor:lambda=4'); it has: "
        "sigma, theta, lambd, gamma, psi.",
    ),
    (
        "gaussian:sigma=1,SIGMA=2",
        "sigma is given twice in 'gaussian:sigma=1,SIGMA=2'; give each parameter once.",
    ),
    ("gaussian:sigma=abc", "sigma must be a number, got 'abc' in 'gaussian:sigma=abc'."),
    ("gaussian:sigma=nan", "sigma must be a finite number, got 'nan' in 'gaussian:sigma=nan'."),
    ("gabor:theta=-inf", "theta must be a finite number, got '-inf' in 'gabor:theta=-inf'."),
    ("laplacian:ksize=3.0", "ksize must be an integer, got '3.0' in 'laplacian:ksize=3.0'."),
    (
        "box:normalize=yes",
        "normalize must be true or false (or 1 or 0), got 'yes' in 'box:normalize=yes'.",
    ),
    (
        "laplacian:ksize=4",
        "laplacian's ksize must be 1, 3, 5 or 7, got 4 in 'laplacian:ksize=4'.",
    ),
    (
        "gaussian:sigma=-1",
        "gaussian's sigma must be >= 0 (0 derives it from the size), got -1 in "
        "'gaussian:sigma=-1'.",
    ),
    (
        "gaussian:sigma_y=-0.5",
        "gaussian's sigma_y must be >= 0 (0 means the same as sigma), got -0.5 in "
        "'gaussian:sigma_y=-0.5'.",
    ),
    ("gabor:sigma=0", "gabor's sigma must be > 0, got 0 in 'gabor:sigma=0'."),
    ("gabor:lambd=-4", "gabor's lambd must be > 0, got -4 in 'gabor:lambd=-4'."),
    ("gabor:gamma=0", "gabor's gamma must be > 0, got 0 in 'gabor:gamma=0'."),
    ("log:sigma=0", "log's sigma must be > 0, got 0 in 'log:sigma=0'."),
]


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS)
def test_spec_errors(spec, message):
    with pytest.raises(KernelSpecError) as caught:
        parse_named_kernel(spec)
    assert str(caught.value) == message
    with pytest.raises(KernelSpecError) as caught:
        make_named_kernel(spec, (3, 3))
    assert str(caught.value) == message


FIX = "Use a conv with such a kernel or give the kernel as an array."
SHAPE_ERRORS = [
    (
        "sobel-x",
        (2, 2),
        f"sobel-x needs a square odd kernel of size 3, 5 or 7; this conv's kernel is 2x2. {FIX}",
    ),
    (
        "sobel-y",
        (3, 5),
        f"sobel-y needs a square odd kernel of size 3, 5 or 7; this conv's kernel is 3x5. {FIX}",
    ),
    (
        "sobel-x",
        (9, 9),
        f"sobel-x needs a square odd kernel of size 3, 5 or 7; this conv's kernel is 9x9. {FIX}",
    ),
    ("sobel-x", (7,), f"sobel-x needs a 2-D kernel; this conv's kernel is 7 (1-D). {FIX}"),
    ("scharr-y", (5, 5), f"scharr-y needs a 3x3 kernel; this conv's kernel is 5x5. {FIX}"),
    ("prewitt-x", (3, 3, 3), f"prewitt-x needs a 2-D kernel; this conv's kernel is 3x3x3. {FIX}"),
    ("sharpen", (1, 1), f"sharpen needs a 3x3 kernel; this conv's kernel is 1x1. {FIX}"),
    (
        "laplacian",
        (5, 5),
        "laplacian with ksize=1 needs a 3x3 kernel; this conv's kernel is 5x5. "
        "Use laplacian:ksize=5 for this conv or give the kernel as an array.",
    ),
    (
        "laplacian:ksize=7",
        (3, 3),
        "laplacian with ksize=7 needs a 7x7 kernel; this conv's kernel is 3x3. "
        "Use laplacian:ksize=1 or ksize=3 for this conv or give the kernel as an array.",
    ),
    (
        "laplacian:ksize=5",
        (7, 7),
        "laplacian with ksize=5 needs a 5x5 kernel; this conv's kernel is 7x7. "
        "Use laplacian:ksize=7 for this conv or give the kernel as an array.",
    ),
    (
        "laplacian",
        (9, 9),
        "laplacian with ksize=1 needs a 3x3 kernel; this conv's kernel is 9x9. "
        "Use a 3x3, 5x5 or 7x7 conv or give the kernel as an array.",
    ),
    (
        "gaussian:sigma_y=1",
        (3, 3, 3),
        "gaussian's sigma_y needs a 2-D kernel; this conv's kernel is 3x3x3. "
        "Drop sigma_y; sigma applies to every axis.",
    ),
    (
        "gaussian",
        (3, 3, 3, 3),
        f"gaussian needs a 1-D, 2-D or 3-D kernel; this conv's kernel is 3x3x3x3. {FIX}",
    ),
    (
        "log",
        (3, 5),
        f"log needs a square odd kernel (3x3, 5x5, 7x7, ...); this conv's kernel is 3x5. {FIX}",
    ),
    (
        "log",
        (4, 4),
        f"log needs a square odd kernel (3x3, 5x5, 7x7, ...); this conv's kernel is 4x4. {FIX}",
    ),
    (
        "gabor",
        (4, 5),
        "gabor needs odd sizes (cv2.getGaborKernel makes even ones 1 larger); "
        f"this conv's kernel is 4x5. {FIX}",
    ),
    (
        "identity",
        (3, 4),
        "identity needs an odd size on every axis, so it has a centre; "
        f"this conv's kernel is 3x4. {FIX}",
    ),
    (
        "box",
        (0, 3),
        "this conv's kernel shape (0, 3) has an empty axis, so box cannot fill it; "
        "check the model's weight shape.",
    ),
]


@pytest.mark.parametrize(("spec", "shape", "message"), SHAPE_ERRORS)
def test_shape_errors(spec, shape, message):
    with pytest.raises(KernelShapeError) as caught:
        make_named_kernel(spec, shape)
    assert str(caught.value) == message


def test_errors_are_one_line():
    for spec, message in SPEC_ERRORS:
        assert "\n" not in message, spec
    for spec, _, message in SHAPE_ERRORS:
        assert "\n" not in message, spec


# ---------------------------------------------------------------- against OpenCV itself


@pytest.mark.parametrize("ksize", [3, 5, 7])
@pytest.mark.parametrize("scale", [1.0, 0.25, -2.0])
def test_sobel_matches_cv2(cv2, image, ksize, scale):
    for name, dx, dy in (("sobel-x", 1, 0), ("sobel-y", 0, 1)):
        kernel = make_named_kernel(f"{name}:scale={scale}", (ksize, ksize))
        kx, ky = cv2.getDerivKernels(dx, dy, ksize, ktype=cv2.CV_64F)
        np.testing.assert_array_equal(kernel, scale * ky @ kx.T)
        # filter2D correlates, like ONNX Conv: our kernel there must reproduce cv2.Sobel.
        expected = cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=ksize, scale=scale)
        np.testing.assert_allclose(cv2.filter2D(image, cv2.CV_64F, kernel), expected, atol=1e-12)


def test_scharr_matches_cv2(cv2, image):
    for name, dx, dy in (("scharr-x", 1, 0), ("scharr-y", 0, 1)):
        kernel = make_named_kernel(f"{name}:scale=0.5", (3, 3))
        kx, ky = cv2.getDerivKernels(dx, dy, cv2.FILTER_SCHARR, ktype=cv2.CV_64F)
        np.testing.assert_array_equal(kernel, 0.5 * ky @ kx.T)
        expected = cv2.Scharr(image, cv2.CV_64F, dx, dy, scale=0.5)
        np.testing.assert_allclose(cv2.filter2D(image, cv2.CV_64F, kernel), expected, atol=1e-12)


@pytest.mark.parametrize("ksize", [1, 3, 5, 7])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_laplacian_matches_cv2(cv2, image, ksize, scale):
    size = max(ksize, 3)
    kernel = make_named_kernel(f"laplacian:ksize={ksize},scale={scale}", (size, size))
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1.0
    # An impulse's response is the kernel mirrored; mirror it back.
    response = cv2.Laplacian(impulse, cv2.CV_64F, ksize=ksize, scale=scale)
    r = size // 2
    np.testing.assert_array_equal(kernel, response[10 + r : 9 - r : -1, 10 + r : 9 - r : -1])
    expected = cv2.Laplacian(image, cv2.CV_64F, ksize=ksize, scale=scale)
    np.testing.assert_allclose(cv2.filter2D(image, cv2.CV_64F, kernel), expected, atol=1e-12)


@pytest.mark.parametrize("n", range(1, 14))
@pytest.mark.parametrize("sigma", [0.0, 0.3, 0.8, 1.2, 2.5, 5.0])
def test_gaussian_matches_cv2_get_gaussian_kernel(cv2, n, sigma):
    expected = cv2.getGaussianKernel(n, sigma, ktype=cv2.CV_64F).ravel()
    np.testing.assert_allclose(
        make_named_kernel(f"gaussian:sigma={sigma}", (n,)), expected, rtol=1e-13
    )


@pytest.mark.parametrize("shape", [(3, 3), (5, 3), (4, 6), (7, 7), (1, 5)])
@pytest.mark.parametrize(("sigma", "sigma_y"), [(0.0, 0.0), (1.1, 0.0), (0.7, 1.9), (0.0, 1.5)])
def test_gaussian_matches_cv2_gaussian_blur(cv2, image, shape, sigma, sigma_y):
    kernel = make_named_kernel(f"gaussian:sigma={sigma},sigma_y={sigma_y}", shape)
    # GaussianBlur takes (width, height) and only odd sizes.
    if shape[0] % 2 and shape[1] % 2:
        blurred = cv2.GaussianBlur(image, shape[::-1], sigmaX=sigma, sigmaY=sigma_y)
        np.testing.assert_allclose(cv2.filter2D(image, cv2.CV_64F, kernel), blurred, atol=1e-12)
    sigma_y = sigma_y or sigma
    ky = cv2.getGaussianKernel(shape[0], sigma_y, ktype=cv2.CV_64F)
    kx = cv2.getGaussianKernel(shape[1], sigma, ktype=cv2.CV_64F)
    np.testing.assert_allclose(kernel, ky @ kx.T, rtol=1e-13)


GABOR_SHAPES = [(3, 3), (5, 5), (7, 3), (3, 9), (21, 21), (1, 1)]
GABOR_PARAMS = [
    dict(sigma=2.0, theta=0.0, lambd=4.0, gamma=0.5, psi=math.pi / 2),
    dict(sigma=2.0, theta=0.785, lambd=4.0, gamma=0.5, psi=0.0),
    dict(sigma=1.3, theta=2.0, lambd=3.0, gamma=1.5, psi=1.0),
    dict(sigma=5.0, theta=-1.2, lambd=10.0, gamma=0.3, psi=-0.4),
]


@pytest.mark.parametrize("shape", GABOR_SHAPES)
@pytest.mark.parametrize("params", GABOR_PARAMS)
def test_gabor_matches_cv2(cv2, shape, params):
    spec = "gabor:" + ",".join(f"{key}={value!r}" for key, value in params.items())
    expected = cv2.getGaborKernel(shape[::-1], ktype=cv2.CV_64F, **params)
    assert expected.shape == shape
    np.testing.assert_allclose(make_named_kernel(spec, shape), expected, rtol=1e-13, atol=1e-15)


def test_gabor_default_psi_is_opencvs(cv2):
    expected = cv2.getGaborKernel((5, 5), 2.0, 0.0, 4.0, 0.5, ktype=cv2.CV_64F)
    np.testing.assert_allclose(make_named_kernel("gabor", (5, 5)), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("shape", [(3, 3), (3, 5), (7, 1)])
@pytest.mark.parametrize("normalize", [True, False])
def test_box_matches_cv2(cv2, image, shape, normalize):
    kernel = make_named_kernel(f"box:normalize={normalize}", shape)
    expected = cv2.boxFilter(image, cv2.CV_64F, shape[::-1], normalize=normalize)
    np.testing.assert_allclose(cv2.filter2D(image, cv2.CV_64F, kernel), expected, atol=1e-12)


def test_identity_leaves_the_image_unchanged_in_cv2(cv2, image):
    kernel = make_named_kernel("identity", (5, 3))
    np.testing.assert_array_equal(cv2.filter2D(image, cv2.CV_64F, kernel), image)
