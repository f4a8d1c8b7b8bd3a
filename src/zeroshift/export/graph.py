"""Edits on exported ONNX graphs that need onnx but not PyTorch: a pixels-in front, and file facts.

`pixels_in` puts the recipe's pixel arithmetic in front of a graph that takes transformed images:

    images uint8 [N, H, W, 3] -> Cast float -> Transpose [N, 3, H, W] -> * a + b -> the old input

with a = scale / std and b = -mean / std per channel, i.e. (x * scale - mean) / std, as one
BatchNormalization node (scale a, bias b, mean 0, variance 1, epsilon 0). A per-channel Mul and Add
would do the same, but in an int8 graph onnxruntime's layout pass moves them past the Transpose, where
their broadcast over NHWC cost 1.1 ms of a 5 ms EfficientNet-Lite0 run; the normalisation stays at
0.03 ms in both graphs. Its nodes are named `preprocess/...`, so quantisation leaves them out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

PREFIX = "preprocess/"
INPUT, LOGITS, EMBEDDINGS = "images", "logits", "embeddings"  # the names exported graphs use


def pixels_in(model: "onnx.ModelProto", recipe: dict, name: str) -> "onnx.ModelProto":
    """`model` (input `name`: float [N, 3, H, W]) with a uint8 [N, H, W, 3] input of the same name instead."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    feed = next(i for i in graph.input if i.name == name)
    batch = feed.type.tensor_type.shape.dim[0]
    inner = PREFIX + "normalized"
    for node in graph.node:
        node.input[:] = [inner if x == name else x for x in node.input]
    graph.input.remove(feed)
    h, w = recipe["size"]
    pixels = recipe["pixels"]
    mean, std = np.asarray(pixels["mean"], np.float64), np.asarray(pixels["std"], np.float64)
    a = (float(pixels["scale"]) / std).astype(np.float32)
    b = (-mean / std).astype(np.float32)
    zeros, ones = np.zeros(3, np.float32), np.ones(3, np.float32)
    graph.initializer.extend(numpy_helper.from_array(v, PREFIX + k) for k, v in
                             (("a", a), ("b", b), ("zeros", zeros), ("ones", ones)))
    nodes = [
        helper.make_node("Cast", [name], [PREFIX + "float"], to=onnx.TensorProto.FLOAT, name=PREFIX + "cast"),
        helper.make_node("Transpose", [PREFIX + "float"], [PREFIX + "nchw"], perm=[0, 3, 1, 2], name=PREFIX + "nchw"),
        helper.make_node("BatchNormalization", [PREFIX + "nchw", PREFIX + "a", PREFIX + "b", PREFIX + "zeros",
                                                PREFIX + "ones"], [inner], epsilon=0.0, name=PREFIX + "normalize"),
    ]
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)
    dims = [batch.dim_param or batch.dim_value or "batch", int(h), int(w), 3]
    graph.input.insert(0, helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, dims))
    onnx.checker.check_model(model)
    return model


def preprocess_nodes(model: "onnx.ModelProto") -> list[str]:
    """Names of the pixels-in front's nodes (quantisation leaves them in float)."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX)]


def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """How many nodes of each op type the graph has."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
