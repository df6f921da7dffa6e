"""A Piper voice's decoder rewritten from 1-D to 2-D convolutions of height 1, for the CPU.

Why: a Piper voice spends most of its time in the HiFi-GAN decoder (``/dec/``): 1-D
convolutions, their LeakyReLUs and the residual additions between them. onnxruntime runs a
1-D convolution as im2col + GEMM; its NCHWc optimiser (blocked layouts, AVX2 / AVX-512
kernels, an activation and a residual addition fused into the convolution) takes only 2-D
ones. The same convolutions written as 2-D ones over a height of 1 are the same arithmetic
summed in another order: the audio is not bit-identical to piper-tts's any more, but within
a stated tolerance of it (tests/test_onnx.py), and a sentence takes markedly less time
(docs/benchmarks.md, "The decoder as 2-D convolutions").

The rewrite is local: only nodes named ``/dec/...`` (how piper's VITS export names the
decoder) are lifted to rank 4, with an Unsqueeze where a tensor enters the region and a
Squeeze where one leaves it; a node with an attribute this module does not know, or an input
it cannot place in the region, is left as it is. A model with nothing to lift is returned as
None. The backend checks the rewrite's audio against the file's at load (backend.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .join import peak_normalised
from .phonemize import phonemes_to_ids
from .voice import VoiceConfig, model_inputs

PREFIX = "/dec/"  # piper's export (torch.onnx of VITS) names the decoder's nodes so
ADDED = "/alltalk_2d/"  # the names of the nodes the rewrite adds (the region's way in and out)
CONVS = {"Conv", "ConvTranspose"}
UNARY = {"LeakyRelu", "Relu", "Tanh", "Sigmoid", "Identity"}
BINARY = {"Add", "Sub", "Mul", "Div"}
# Per-axis attributes of a 1-D convolution and their 2-D form (height: kernel 1, stride 1,
# dilation 1, no padding). Any other attribute (auto_pad other than NOTSET included) keeps
# the node as it is.
CONV_ATTRIBUTES = {"kernel_shape", "strides", "dilations", "pads", "group", "output_padding",
                   "auto_pad"}


def lift_decoder(data: bytes) -> bytes | None:
    """The model ``data`` with its decoder's 1-D convolutions as 2-D ones; None when the
    model has no such decoder (not a Piper voice, or already rewritten)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    scalars = {name for name, i in initializers.items() if len(i.dims) == 0}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value" \
                and len(node.attribute[0].t.dims) == 0:
            scalars.add(node.output[0])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    axes = _unique("alltalk_axis_2", initializers)
    if opset >= 13:  # Squeeze/Unsqueeze take their axes as an input from opset 13 on
        graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axes))

    def reshape(op: str, source: str, target: str) -> Any:
        name = f"{ADDED}{op}/{source}"
        if opset >= 13:
            return helper.make_node(op, [source, axes], [target], name=name)
        return helper.make_node(op, [source], [target], name=name, axes=[2])

    lifted: dict[str, str] = {}  # a rank-3 tensor's name -> its rank-4 twin's
    squeezed: set[str] = set()  # lifted tensors whose rank-3 name exists again
    nodes: list[Any] = []
    convs = 0

    def enter(name: str) -> str:
        """The rank-4 name of an input of a lifted node, adding an Unsqueeze if needed."""
        if name not in lifted:
            lifted[name] = _unique(name + "/2d", initializers)
            nodes.append(reshape("Unsqueeze", name, lifted[name]))
            squeezed.add(name)  # the rank-3 one exists: never squeeze it back
        return lifted[name]

    for node in graph.node:
        kind = _liftable(node, lifted, scalars, initializers)
        if kind is None:
            for name in node.input:  # leaving the region: the rank-3 tensor again
                if name in lifted and name not in squeezed:
                    nodes.append(reshape("Squeeze", lifted[name], name))
                    squeezed.add(name)
            nodes.append(node)
            continue
        inputs = list(node.input)
        if kind == "conv":
            convs += 1
            inputs[0] = enter(inputs[0])
            weight = initializers[inputs[1]]
            lifted_weight = numpy_helper.from_array(
                numpy_helper.to_array(weight)[:, :, None, :], _unique(weight.name + "/2d",
                                                                      initializers))
            graph.initializer.append(lifted_weight)
            initializers[lifted_weight.name] = lifted_weight
            inputs[1] = lifted_weight.name
            attributes = _conv_attributes(node, helper)
        else:
            inputs = [lifted.get(i, i) for i in inputs]  # lifted ones and scalars
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        outputs = [_unique(o + "/2d", initializers) for o in node.output]
        lifted.update(zip(node.output, outputs, strict=True))
        nodes.append(helper.make_node(node.op_type, inputs, outputs, name=node.name,
                                      **attributes))
    for output in graph.output:
        if output.name in lifted and output.name not in squeezed:
            nodes.append(reshape("Squeeze", lifted[output.name], output.name))
    if not convs:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


def _liftable(node: Any, lifted: dict[str, str], scalars: set[str],
              initializers: dict[str, Any]) -> str | None:
    """"conv" or "elementwise" when ``node`` is rewritten to rank 4, else None. A convolution
    whose weight has rank 3 takes rank-3 data (the ONNX rule), so its input may enter the
    region; an elementwise node joins it only if its other inputs are in it or scalars, whose
    broadcasting is the same at any rank."""
    if not node.name.startswith(PREFIX) or len(node.output) != 1:
        return None
    if node.op_type in CONVS:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        bias_ok = len(node.input) < 3 or node.input[2] in initializers
        known = all(a.name in CONV_ATTRIBUTES for a in node.attribute) and all(
            a.s in (b"", b"NOTSET") for a in node.attribute if a.name == "auto_pad")
        if weight is not None and len(weight.dims) == 3 and bias_ok and known:
            return "conv"
        return None
    elementwise = node.op_type in UNARY | BINARY and any(i in lifted for i in node.input)
    if elementwise and all(i in lifted or i in scalars for i in node.input):
        return "elementwise"
    return None


def _conv_attributes(node: Any, helper: Any) -> dict[str, Any]:
    """A 1-D convolution's attributes for the same convolution in 2-D, over a height of 1."""
    old = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    new: dict[str, Any] = {}
    for name, value in old.items():
        if name in ("kernel_shape", "strides", "dilations"):
            new[name] = [1, *value]
        elif name == "pads":  # [begin, end] -> [top, begin, bottom, end]
            new[name] = [0, value[0], 0, value[1]]
        elif name == "output_padding":
            new[name] = [0, *value]
        else:
            new[name] = value
    return new


def _unique(name: str, taken: dict[str, Any]) -> str:
    """``name``, or with a number added, unused by the model's initializers so far (node
    outputs carry piper's own slash-separated names, which never end in /2d)."""
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}{n}", n + 1
    return candidate


def check_feeds(voice: VoiceConfig) -> dict[str, np.ndarray]:
    """A short phrase in the voice's own phonemes, noise off: what the rewrite is checked on
    at load (the voice's phoneme map skips the ones it lacks)."""
    ids, _ = phonemes_to_ids(list("həlˈoʊ, ðɪs ɪz ɐ tˈɛst."), voice.phoneme_id_map)
    return model_inputs(ids, [0.0, voice.length_scale, 0.0], 0 if voice.multi_speaker else None)


def audio_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference between two outputs once peak-normalised, as the backend
    serves them; infinite when their lengths differ."""
    a, b = (x.squeeze().astype(np.float32) for x in (a, b))
    if a.shape != b.shape:
        return float("inf")
    a, b = peak_normalised(a), peak_normalised(b)
    return float(np.max(np.abs(a - b))) if a.size else 0.0
