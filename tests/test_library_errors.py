"""Library errors name the library's parameters; the CLI names its flags in the same message."""

from __future__ import annotations

import pytest

from onnxfix import ArtifactsError, KernelShapeError, make_artifacts, set_kernel
from onnxfix.errors import OnnxfixError, param
from tests.support.factories import save, simple_cnn


def test_a_message_renders_parameters_for_the_library_and_flags_for_the_cli():
    e = OnnxfixError(f"{param('force', 'force=True')} and {param('layers')} 'x', said twice")
    assert str(e) == "force=True and layers 'x', said twice"
    assert e.render({"force": "--force"}) == "--force and layers 'x', said twice"
    assert e.render({"force": "--force", "layers": "--layer"}) == (
        "--force and --layer 'x', said twice"
    )


def test_set_kernel_speaks_its_own_parameters(tmp_path):
    src = save(simple_cnn(), tmp_path / "m.onnx")
    with pytest.raises(KernelShapeError) as e:
        set_kernel(src, tmp_path / "o.onnx", kernel="box")
    assert str(e.value) == "kernel needs at least one layer selector naming the conv(s) to change"


def test_make_artifacts_speaks_its_own_parameters_across_the_child(tmp_path, run):
    """The loss input is checked in the build's child process; its message keeps the
    parameter reference through the process boundary."""
    src = save(simple_cnn(), tmp_path / "m.onnx")
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(src, tmp_path / "art", loss_input="nope")
    assert str(e.value) == "loss_input 'nope' is not an output of the model; its outputs are: y"
    r = run("make-artifacts", src, "-o", tmp_path / "art", "--loss-input", "nope")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: --loss-input 'nope' is not an output of the model; its outputs are: y\n"
    )
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(src, tmp_path / "art", self_test=False, full_self_test=True)
    assert str(e.value) == (
        "full_self_test=True and self_test=False contradict each other; drop one"
    )
