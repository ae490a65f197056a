"""bmlib.export: ONNX export with dynamic axes, ONNX Runtime parity with eager PyTorch on shapes the
export never saw, ORT's int8 quantization, and clear errors for bad arguments."""
import numpy as np
import pytest
import torch

from bmlib.export import (TOLERANCE, LogitsOnly, export_onnx, max_abs_diff, ort_quantize_int8, ort_run,
                          ort_session)
from bmlib.models.gpt import GPT, GPTConfig

CFG = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    path = tmp_path_factory.mktemp("onnx") / "gpt.onnx"
    example = (torch.randint(0, CFG.vocab_size, (2, 8)),)
    export_onnx(LogitsOnly(model), example, path, input_names=["x0"],
                dynamic={"x0": {0: "batch", 1: "seq"}}, output_name="logits")
    return model, path


@pytest.mark.parametrize("shape", [(1, 5), (3, 17), (2, 8)])
def test_ort_matches_eager_on_unseen_batch_and_sequence(exported, shape):
    model, path = exported
    sess = ort_session(path, "cpu", threads=1)
    x = torch.randint(0, CFG.vocab_size, shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        ref = model(x)[0]
    out = ort_run(sess, x0=x)
    assert out.shape == (*shape, CFG.vocab_size)
    assert max_abs_diff(ref, out) < TOLERANCE["fp32"]


def test_ort_int8_is_smaller_and_close(exported, tmp_path):
    model, path = exported
    q = ort_quantize_int8(path, tmp_path / "gpt.int8.onnx")
    assert q.is_file() and not (tmp_path / "gpt.int8.noinfo.onnx").exists()
    sess = ort_session(q, "cpu", threads=1)
    x = torch.randint(0, CFG.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)[0]
    out = ort_run(sess, x0=x)
    diff = max_abs_diff(ref, out)
    # int8 changes the numbers (it is not a copy of the fp32 graph) but stays within its tolerance
    assert 1e-6 < diff < TOLERANCE["int8"], diff
    assert (np.argmax(out, -1) == ref.argmax(-1).numpy()).mean() > 0.9


def test_logits_only_picks_the_first_output():
    model = GPT(CFG).eval()
    x = torch.randint(0, CFG.vocab_size, (1, 4))
    with torch.no_grad():
        assert torch.equal(LogitsOnly(model)(x), model(x)[0])


def test_bad_arguments_are_named(exported, tmp_path):
    model, path = exported
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        export_onnx(lambda t: t, (x,), tmp_path / "a.onnx", ["x0"], {})
    with pytest.raises(ValueError, match="example_inputs must be a tuple of 1"):
        export_onnx(model, x, tmp_path / "a.onnx", ["x0"], {})
    with pytest.raises(ValueError, match=r"dynamic names inputs \['y'\]"):
        export_onnx(model, (x,), tmp_path / "a.onnx", ["x0"], {"y": {0: "batch"}})
    with pytest.raises(ValueError, match="device must be one of"):
        ort_session(path, "tpu")
    with pytest.raises(ValueError, match="path must be an existing .onnx file"):
        ort_session(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="path_in must be an existing .onnx file"):
        ort_quantize_int8(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    sess = ort_session(path, "cpu", threads=1)
    with pytest.raises(ValueError, match=r"inputs must be exactly \['x0'\]"):
        ort_run(sess, tokens=x)
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_diff(np.zeros(3), np.zeros(4))
