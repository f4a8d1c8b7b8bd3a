"""Edits on exported ONNX graphs that need onnx but not PyTorch: a pixels-in front, and file facts.

`pixels_in` puts the recipe's pixel arithmetic in front of a graph that takes transformed images:

    images uint8 [N, H, W, 3] -> Cast float -> Transpose [N, 3, H, W] -> * a + b -> the old input

with a = scale / std and b = -mean / std per channel, i.e. (x * scale - mean) / std. Its nodes are
named `preprocess/...`, so quantisation can leave them out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

PREFIX = "preprocess/"


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
    a = (float(pixels["scale"]) / std).astype(np.float32).reshape(1, 3, 1, 1)
    b = (-mean / std).astype(np.float32).reshape(1, 3, 1, 1)
    graph.initializer.extend([numpy_helper.from_array(a, PREFIX + "a"), numpy_helper.from_array(b, PREFIX + "b")])
    nodes = [
        helper.make_node("Cast", [name], [PREFIX + "float"], to=onnx.TensorProto.FLOAT, name=PREFIX + "cast"),
        helper.make_node("Transpose", [PREFIX + "float"], [PREFIX + "nchw"], perm=[0, 3, 1, 2], name=PREFIX + "nchw"),
        helper.make_node("Mul", [PREFIX + "nchw", PREFIX + "a"], [PREFIX + "scaled"], name=PREFIX + "scale"),
        helper.make_node("Add", [PREFIX + "scaled", PREFIX + "b"], [inner], name=PREFIX + "normalize"),
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
