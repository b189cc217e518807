"""Layer-wise scoring of a GraphSAGE model: only the nodes each layer needs, in PyTorch and as a lean ONNX graph.

A ``k``-layer GNN scores a set of target nodes from their ``k``-hop neighbourhood, but
layer ``l`` needs outputs only for nodes within ``k - l`` hops of the targets (the
layer-wise computation graph of neighbour-sampling GNNs, Hamilton et al. 2017,
Algorithm 2, here with every neighbour kept). Scoring 1,000 new transactions of a
20,000-transaction bank then runs the last layer on 1,000 rows instead of 20,000.

Each row's messages are summed without any scatter: ONNX Runtime's CPU
``ScatterND(reduction="add")`` splits the edges between its threads and adds into shared
rows without synchronisation, so a row whose in-edges straddle two threads' ranges can
lose messages (microsoft/onnxruntime#18048). Instead :class:`ScoringBatch` lays each
row's in-edges out in fixed-width chunks (``nbr``, padded with a zero row); the graph
gathers them, sums every chunk (``ReduceSum``), takes float64 running sums over the
chunks (``CumSum``) and differences them at each row's chunk offsets (``ptr``). Every
operator writes each output element from one thread, so any number of threads gives the
same, complete sums, bit for bit. The float64 work is one row per chunk, not one per
edge: scoring the 1,000 newest transactions of a generated 20,000-transaction bank
(54k edges, hidden 64) on 2 cores, the FP32 graph runs in about 3/4 of the time of
float64 running sums over every edge (11 ms on a quiet machine), with 17 nodes a layer
instead of 24.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from fedcore.data.graph import FraudGraph
from fedcore.export.onnx_export import OUTPUT_NAME, ExportError

CHUNK_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
"""Chunk widths :meth:`NeighbourIndex.cut` chooses from, per layer."""

CHUNK_COST = 16
"""Cost of one chunk's float64 running sum, in gathered rows: :meth:`NeighbourIndex.cut`
picks the width ``C`` minimising ``(C + CHUNK_COST) * chunks``. On the benchmark batch
(``benchmarks/quantized_inference.py``) that is 16 for the first layer (widths 8 to 32
ran within 3 % of each other in ONNX Runtime, 4 was 12 % slower) and 4 for the
second, whose transactions have about 3 in-edges each."""


def input_names(layers: int) -> tuple[str, ...]:
    """ONNX input names of a ``layers``-layer model: ``x``, then ``nbr{l}``, ``ptr{l}``, ``deg_inv{l}`` per layer.

    >>> input_names(1)
    ('x', 'nbr1', 'ptr1', 'deg_inv1')
    """
    if layers < 1:
        raise ValueError(f"layers must be >= 1; found {layers}")
    return ("x", *(f"{n}{k}" for k in range(1, layers + 1) for n in ("nbr", "ptr", "deg_inv")))


def layers_of(names: Sequence[str]) -> int:
    """Number of layers of a model with these input names (inverse of :func:`input_names`).

    Raises:
        ValueError: if ``names`` is not this layer-wise input layout (e.g. an older
            ``x, edge_index`` or ``x, src1, dst1, deg_inv1`` export).
    """
    layers = (len(names) - 1) // 3
    if layers < 1 or tuple(names) != input_names(layers):
        raise ValueError(
            f"model inputs {', '.join(names) or 'none'} are not fedcore's layer-wise layout "
            f"(x, nbr1, ptr1, deg_inv1, ...); the model was exported by another fedcore "
            "version: re-run the export"
        )
    return layers


def chunk_edges(
    src: np.ndarray, degree: np.ndarray, pad: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lay out the in-edges of consecutive rows in chunks of ``width`` source rows.

    Args:
        src: Source row of every edge, ``int64 [E]``, grouped by destination row (row
            ``i``'s ``degree[i]`` edges follow row ``i - 1``'s).
        degree: In-degree of every destination row, ``[n]``.
        pad: The row index chunks are padded with (the zero row after the sources' rows).
        width: Chunk width (default: the one of :data:`CHUNK_WIDTHS` minimising
            ``(width + CHUNK_COST) * chunks``).

    Returns:
        ``nbr``: ``int64 [1 + chunks, width]``, chunk 0 all ``pad``, then row 0's
        ``ceil(degree[0] / width)`` chunks, row 1's, ... (each padded with ``pad``);
        ``ptr``: ``int64 [n + 1]``, the number of chunks before each row, so row ``i``
        owns chunks ``ptr[i] + 1 .. ptr[i + 1]``: with running sums ``S`` over the chunk
        sums, its sum is ``S[ptr[i + 1]] - S[ptr[i]]``.

    >>> nbr, ptr = chunk_edges(np.array([5, 6, 7]), np.array([2, 0, 1]), pad=9, width=2)
    >>> nbr.tolist(), ptr.tolist()
    ([[9, 9], [5, 6], [7, 9]], [0, 1, 1, 2])
    """
    deg = np.asarray(degree, dtype=np.int64)
    if src.size != int(deg.sum()):
        raise ValueError(f"src has {src.size} edges; degree sums to {int(deg.sum())}")
    if width is None:
        costs = [(w + CHUNK_COST) * int((-(-deg // w)).sum()) for w in CHUNK_WIDTHS]
        width = CHUNK_WIDTHS[int(np.argmin(costs))]
    chunks = -(-deg // width)
    ptr = np.zeros(deg.size + 1, dtype=np.int64)
    np.cumsum(chunks, out=ptr[1:])
    nbr = np.full((1 + int(ptr[-1]), width), pad, dtype=np.int64)
    if src.size:
        pos = np.arange(src.size, dtype=np.int64) - np.repeat(np.cumsum(deg) - deg, deg)
        nbr[1 + np.repeat(ptr[:-1], deg) + pos // width, pos % width] = src
    return nbr, ptr


@dataclass(frozen=True)
class ScoringBatch:
    """The inputs that score ``num_targets`` nodes with a ``layers``-layer GNN.

    Rows are ordered so that every layer's outputs are a prefix: the targets first,
    then the nodes one hop out, then two hops out, and so on. Layer ``l`` (1-based)
    computes rows ``[0, n_l)`` with ``n_l = len(deg_inv[l - 1])``; ``n_layers`` equals
    ``num_targets``. Layer ``l`` reads the ``N_l`` rows of the layer before
    (``N_1 = len(x)``).

    Attributes:
        x: Node features of every row, ``float32 [N, F]``.
        nbr: Per layer, the source rows of the in-edges of its rows, in chunks
            (:func:`chunk_edges`), padded with row ``N_l`` (a zero row the model
            appends), ``int64 [1 + chunks, width]``.
        ptr: Per layer, the chunks before each row, ``int64 [n_l + 1]``.
        deg_inv: Per layer, ``1 / max(in-degree, 1)`` of its rows, ``float32 [n_l, 1]``.
        node_ids: The graph's node id of every row, ``int64 [N]``.
        num_targets: Number of target nodes (the first rows).
    """

    x: np.ndarray
    nbr: tuple[np.ndarray, ...]
    ptr: tuple[np.ndarray, ...]
    deg_inv: tuple[np.ndarray, ...]
    node_ids: np.ndarray
    num_targets: int

    @property
    def layers(self) -> int:
        """Number of GNN layers the batch was cut for."""
        return len(self.nbr)

    @property
    def src(self) -> tuple[np.ndarray, ...]:
        """Per layer, the source row of every edge into its rows, ``int64 [E_l]``, grouped by destination row."""
        return tuple(nbr[1:][nbr[1:] != nbr[0, 0]] for nbr in self.nbr)

    @property
    def dst(self) -> tuple[np.ndarray, ...]:
        """Per layer, the destination row of those edges, ``int64 [E_l]``, non-decreasing."""
        out = []
        for nbr, ptr in zip(self.nbr, self.ptr, strict=True):
            chunk_row = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
            width = nbr.shape[1]
            out.append(np.repeat(chunk_row, width)[(nbr[1:] != nbr[0, 0]).reshape(-1)])
        return tuple(out)

    @property
    def num_edges(self) -> int:
        """Edges over all layers."""
        return sum(int(np.count_nonzero(nbr[1:] != nbr[0, 0])) for nbr in self.nbr)

    def feed(self) -> dict[str, np.ndarray]:
        """ONNX Runtime feed, keyed by :func:`input_names`."""
        out = {"x": self.x}
        for k in range(self.layers):
            out[f"nbr{k + 1}"] = self.nbr[k]
            out[f"ptr{k + 1}"] = self.ptr[k]
            out[f"deg_inv{k + 1}"] = self.deg_inv[k]
        return out

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The feed as CPU tensors in :func:`input_names` order (for :class:`LayeredGNN`)."""
        return tuple(torch.from_numpy(a) for a in self.feed().values())


def _numpy(a: torch.Tensor | np.ndarray | Sequence[int], dtype: type) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=dtype)


class NeighbourIndex:
    """In-edges of every node of a graph (CSR by destination), built once and cut many times.

    A site that scores batch after batch of new transactions keeps one index per graph
    version; :meth:`cut` then costs a few gathers per layer.

    Args:
        edge_index: Edges ``[2, E]`` (source row 0, destination row 1).
        num_nodes: Number of nodes.

    Raises:
        ValueError: for a malformed ``edge_index``.
    """

    def __init__(self, edge_index: torch.Tensor | np.ndarray, num_nodes: int) -> None:
        edges = _numpy(edge_index, np.int64)
        if edges.ndim != 2 or edges.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E]; found {list(edges.shape)}")
        if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
            raise ValueError(f"edge_index refers to nodes outside [0, {num_nodes})")
        order = np.argsort(edges[1], kind="stable")
        self.num_nodes = int(num_nodes)
        self.src_by_dst = np.ascontiguousarray(edges[0][order])
        self.degree = np.bincount(edges[1], minlength=num_nodes).astype(np.int64)
        self.rowptr = np.concatenate([[0], np.cumsum(self.degree)]).astype(np.int64)

    def cut(
        self,
        x: torch.Tensor | np.ndarray,
        layers: int,
        targets: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> ScoringBatch:
        """The layer-wise inputs that score ``targets`` (see :func:`scoring_batch`)."""
        if layers < 1:
            raise ValueError(f"layers must be >= 1; found {layers}")
        feats = _numpy(x, np.float32)
        n = self.num_nodes
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"x must have shape [{n}, F]; found {list(feats.shape)}")
        tgt = np.arange(n, dtype=np.int64) if targets is None else _numpy(targets, np.int64)
        tgt = tgt.reshape(-1)
        if tgt.size and (tgt.min() < 0 or tgt.max() >= n):
            raise ValueError(
                f"targets must be node ids in [0, {n}); found {tgt.min()}..{tgt.max()}"
            )
        local = np.full(n, -1, dtype=np.int64)
        local[tgt] = np.arange(tgt.size)
        if int((local >= 0).sum()) != tgt.size:
            raise ValueError("targets must be distinct node ids; found repeats")
        rows = tgt  # the rows whose output the current layer computes: always a prefix
        per_layer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for _ in range(layers):  # from the last layer (the targets) down to the first
            deg = self.degree[rows]
            ends = np.cumsum(deg)
            total = int(ends[-1]) if ends.size else 0
            # positions of every in-edge of `rows` in the destination-sorted edge list
            offsets = np.repeat(self.rowptr[rows] - (ends - deg), deg)
            src = self.src_by_dst[offsets + np.arange(total, dtype=np.int64)]
            fresh = np.zeros(n, dtype=bool)
            fresh[src[local[src] < 0]] = True
            added = np.flatnonzero(fresh)  # new rows, in node-id order
            local[added] = rows.size + np.arange(added.size)
            rows = np.concatenate([rows, added])
            inv = (1.0 / np.maximum(deg, 1)).astype(np.float32).reshape(-1, 1)
            nbr, ptr = chunk_edges(local[src], deg, pad=rows.size)
            per_layer.append((nbr, ptr, inv))
        per_layer.reverse()  # first layer first
        return ScoringBatch(
            x=np.ascontiguousarray(feats[rows]),
            nbr=tuple(p[0] for p in per_layer),
            ptr=tuple(p[1] for p in per_layer),
            deg_inv=tuple(p[2] for p in per_layer),
            node_ids=rows,
            num_targets=int(tgt.size),
        )


def scoring_batch(
    graph: FraudGraph | tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray],
    layers: int,
    targets: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> ScoringBatch:
    """Cut the layer-wise inputs that score ``targets`` with a ``layers``-layer GNN.

    Builds a :class:`NeighbourIndex` and cuts once; keep the index to cut many batches.

    Args:
        graph: A site graph, or ``(x [N, F], edge_index [2, E])``.
        layers: Number of message-passing layers of the model.
        targets: Node ids to score, distinct (default: every node, in id order).

    Returns:
        The batch; its scores come out in ``targets`` order.

    Raises:
        ValueError: for ``layers < 1``, a target out of range or repeated, or a malformed
            ``edge_index``.
    """
    if isinstance(graph, FraudGraph):
        x, edge_index = graph.data.x, graph.data.edge_index
    else:
        x, edge_index = graph
    return NeighbourIndex(edge_index, int(x.shape[0])).cut(x, layers, targets)


class LayeredGNN(nn.Module):
    r"""A GraphSAGE stack (mean aggregation) that scores the targets of a :class:`ScoringBatch`.

    Layer :math:`l` computes, for its rows :math:`i < n_l`,

    .. math::
        h_i' = \mathrm{ReLU}\Big(W \big[\tfrac{1}{|\mathcal{N}(i)|}\textstyle\sum_{j \in
        \mathcal{N}(i)} h_j \,\Vert\, h_i\big] + b\Big)

    with :math:`W = [W_1 \Vert W_2]`: the same numbers as PyG's ``SAGEConv`` (``lin_l``
    on the mean, ``lin_r`` on the node itself), one matrix product per layer. The sums
    are computed as in :func:`layered_onnx` (chunk sums, float64 running sums over the
    chunks, differenced per row), so ``torch.onnx`` exports the same race-free graph.

    Args:
        layers: One ``nn.Linear(2 * in, out)`` per layer.
        head: ``nn.Linear(hidden, 1)`` giving the logit.

    Shapes:
        - input: the tensors of :meth:`ScoringBatch.tensors`
        - output: logits :math:`(\text{num\_targets},)`
    """

    def __init__(self, layers: Sequence[nn.Linear], head: nn.Linear) -> None:
        super().__init__()
        if not layers:
            raise ValueError("LayeredGNN needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.head = head

    @classmethod
    def from_model(cls, model: nn.Module) -> LayeredGNN:
        """The same function as a trained :class:`~fedcore.models.fraud_gnn.FraudGNN` (a CPU copy).

        Raises:
            ExportError: for a model that is not a mean-aggregating GraphSAGE stack.
        """
        from torch_geometric.nn import SAGEConv

        from fedcore.models.fraud_gnn import FraudGNN

        if not isinstance(model, FraudGNN):
            raise ExportError(f"layer-wise export supports FraudGNN; found {type(model).__name__}")
        fused: list[nn.Linear] = []
        for conv in model.convs:
            ok = (
                isinstance(conv, SAGEConv)
                and conv.aggr == "mean"
                and conv.root_weight
                and not conv.project
                and not conv.normalize
                and conv.lin_r.bias is None
            )
            if not ok:
                raise ExportError(
                    f"layer-wise export supports SAGEConv(aggr='mean', root_weight=True, "
                    f"project=False, normalize=False); found {conv!r}"
                )
            lin_l, lin_r = cast(nn.Module, conv.lin_l), cast(nn.Module, conv.lin_r)  # PyG Linear
            w_l = cast(torch.Tensor, lin_l.weight)  # [out, in]
            w_r = cast(torch.Tensor, lin_r.weight)
            layer = nn.Linear(2 * w_l.shape[1], w_l.shape[0])
            with torch.no_grad():
                layer.weight.copy_(torch.cat([w_l, w_r], dim=1))
                layer.bias.copy_(cast(torch.Tensor, lin_l.bias))
            fused.append(layer)
        head = copy.deepcopy(model.head).cpu()
        return cls(fused, head).eval()

    def forward(self, x: torch.Tensor, *blocks: torch.Tensor) -> torch.Tensor:
        """Logits of the targets, ``[num_targets]``; ``blocks`` = (nbr, ptr, deg_inv) per layer."""
        if len(blocks) != 3 * len(self.layers):
            raise ValueError(
                f"LayeredGNN with {len(self.layers)} layer(s) takes x and "
                f"{3 * len(self.layers)} block tensors; found {len(blocks)}"
            )
        h = x
        for k, layer in enumerate(self.layers):
            nbr, ptr, deg_inv = blocks[3 * k : 3 * k + 3]
            rows = deg_inv.shape[0]
            padded = F.pad(h, (0, 0, 0, 1))  # row N: the zero row that pads the chunks
            chunks = padded.index_select(0, nbr.reshape(-1)).reshape(*nbr.shape, -1).sum(dim=1)
            running = chunks.double().cumsum(dim=0).index_select(0, ptr)
            agg = (running[1:] - running[:-1]).to(h.dtype) * deg_inv
            h = F.relu(layer(torch.cat([agg, h[:rows]], dim=1)))
        logits: torch.Tensor = self.head(h).reshape(-1)
        return logits

    def score(self, batch: ScoringBatch) -> np.ndarray:
        """Logits of ``batch``'s targets, ``float32 [num_targets]``."""
        with torch.no_grad():
            out: torch.Tensor = self(*batch.tensors())
        return out.numpy().astype(np.float32)


def layered_onnx(model: LayeredGNN, *, opset: int = 17) -> onnx.ModelProto:
    """A compact ONNX graph computing ``model``.

    Per layer: ``Pad`` the input rows with a zero row; ``Gather`` the chunks of each
    row's sources (``nbr``) and ``ReduceSum`` every chunk; ``Cast`` the chunk sums to
    float64 and take running sums (``CumSum``, chunk 0 is zero); ``Gather`` them at the
    rows' chunk offsets (``ptr``) and subtract consecutive ones (two ``Slice`` + ``Sub``):
    each row's sum; ``Cast`` back, scale by ``deg_inv``, ``Concat`` with the layer's own
    rows (``Slice``), one ``MatMul`` + ``Add`` + ``Relu``; then the head's ``MatMul`` +
    ``Add``. No operator adds into rows shared between threads, so every run gives the
    same, complete sums. Names are short: the graph structure costs about 1.3 KB, so the
    file is mostly weights.

    Raises:
        ExportError: for an opset below 16.
    """
    from onnx import TensorProto, helper, numpy_helper

    if opset < 16:
        raise ExportError(f"the layer-wise ONNX graph needs opset >= 16; found {opset}")
    num_layers = len(model.layers)
    names = input_names(num_layers)
    first = model.layers[0]
    assert isinstance(first, nn.Linear)
    in_dim = first.in_features // 2
    inits = []
    nodes = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    zero_i = init("i0", np.array([0], dtype=np.int64))
    one_i = init("i1", np.array([1], dtype=np.int64))
    minus1 = init("neg1", np.array([-1], dtype=np.int64))
    end_i = init("iE", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    axis0 = init("ax", np.array(0, dtype=np.int64))
    pad_row = init("pr", np.array([0, 0, 1, 0], dtype=np.int64))
    h = "x"
    for k, layer in enumerate(model.layers, start=1):
        assert isinstance(layer, nn.Linear)
        weight = layer.weight.detach().cpu().numpy().T.astype(np.float32)
        w = init(f"W{k}", np.ascontiguousarray(weight))
        b = init(f"b{k}", layer.bias.detach().cpu().numpy().astype(np.float32))
        nbr, ptr, inv = names[3 * k - 2 : 3 * k + 1]
        nodes += [
            helper.make_node("Pad", [h, pad_row], [f"z{k}"]),
            helper.make_node("Gather", [f"z{k}", nbr], [f"m{k}"]),
            helper.make_node("ReduceSum", [f"m{k}", one_i], [f"s{k}"], keepdims=0),
            helper.make_node("Cast", [f"s{k}"], [f"sd{k}"], to=TensorProto.DOUBLE),
            helper.make_node("CumSum", [f"sd{k}", axis0], [f"cs{k}"]),
            helper.make_node("Gather", [f"cs{k}", ptr], [f"g{k}"]),
            helper.make_node("Slice", [f"g{k}", one_i, end_i], [f"ge{k}"]),
            helper.make_node("Slice", [f"g{k}", zero_i, minus1], [f"gs{k}"]),
            helper.make_node("Sub", [f"ge{k}", f"gs{k}"], [f"gd{k}"]),
            helper.make_node("Cast", [f"gd{k}"], [f"t{k}"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"t{k}", inv], [f"a{k}"]),
            helper.make_node("Shape", [inv], [f"n{k}"], end=1),
            helper.make_node("Slice", [h, zero_i, f"n{k}"], [f"r{k}"]),
            helper.make_node("Concat", [f"a{k}", f"r{k}"], [f"c{k}"], axis=1),
            helper.make_node("MatMul", [f"c{k}", w], [f"p{k}"]),
            helper.make_node("Add", [f"p{k}", b], [f"q{k}"]),
            helper.make_node("Relu", [f"q{k}"], [f"h{k}"]),
        ]
        h = f"h{k}"
    head = model.head
    wh = init("Wh", np.ascontiguousarray(head.weight.detach().cpu().numpy().T.astype(np.float32)))
    bh = init("bh", head.bias.detach().cpu().numpy().astype(np.float32))
    nodes += [
        helper.make_node("MatMul", [h, wh], ["ph"]),
        helper.make_node("Add", ["ph", bh], ["qh"]),
        helper.make_node("Reshape", ["qh", minus1], [OUTPUT_NAME]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_dim])]
    for k in range(1, num_layers + 1):
        inputs += [
            helper.make_tensor_value_info(f"nbr{k}", TensorProto.INT64, [f"K{k}", f"C{k}"]),
            helper.make_tensor_value_info(f"ptr{k}", TensorProto.INT64, [f"P{k}"]),
            helper.make_tensor_value_info(f"deg_inv{k}", TensorProto.FLOAT, [f"n{k}", 1]),
        ]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["T"])]
    graph = helper.make_graph(nodes, "fedcore-gnn", inputs, outputs, inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fedcore"
    )
    proto.ir_version = min(proto.ir_version, 8)  # readable by ONNX Runtime >= 1.14
    onnx.checker.check_model(proto, full_check=True)
    return proto


__all__ = [
    "CHUNK_COST",
    "CHUNK_WIDTHS",
    "LayeredGNN",
    "NeighbourIndex",
    "ScoringBatch",
    "chunk_edges",
    "input_names",
    "layered_onnx",
    "layers_of",
    "scoring_batch",
]
