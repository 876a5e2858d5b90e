"""The prunable-layer graph: which channel sets an AMC step prunes, and what they touch.

One agent step prunes one :class:`ChannelGroup`: the output channels of a producer conv,
the BN and depthwise convs that carry them (a depthwise conv follows its producer), and the
input channels of the convs/linears that consume them. Coupling is found by Torch-Pruning's
``DependencyGraph``, which traces the model once; our own code only classifies its groups.

Residual-tied channels (those that meet in an add) are left alone by default; with
``coupled="shared"`` each such set becomes one group with one shared ratio
(docs/method.md#coupled-channels).
A grouped (non-depthwise) conv reads and writes its channels in ``groups`` equal blocks; a
channel set it touches keeps an equal number of channels in each block, so its kept count is
a multiple of :attr:`ChannelGroup.unit` and the conv keeps its ``groups``
(docs/method.md#grouped-convolutions).
Channel sets whose index mapping is not one-to-one (concat, split, flatten into a linear
with spatial positions) are skipped and reported.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from amc.errors import AmcError
from amc.flops import conv_macs


@dataclass
class LayerInfo:
    """A Conv2d or Linear of the original model, with shapes seen in one forward pass."""

    name: str
    kind: str  # "conv", "dwconv" or "linear"
    order: int  # position in forward execution
    cin: int
    cout: int
    k: tuple[int, int] = (1, 1)
    stride: int = 1
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    in_group: int | None = None  # group pruning this layer's input channels
    out_group: int | None = None  # group pruning this layer's output channels
    has_bias: bool = False

    def macs(self, cin: int | None = None, cout: int | None = None) -> int:
        cin = self.cin if cin is None else cin
        cout = self.cout if cout is None else cout
        if self.kind == "linear":
            return cin * cout * self.out_hw[0] * self.out_hw[1]
        if self.kind == "dwconv":  # one k x k filter per channel
            return cin * self.k[0] * self.k[1] * self.out_hw[0] * self.out_hw[1]
        return conv_macs(cin, cout, *self.k, self.groups, *self.out_hw)

    def params(self, cin: int | None = None, cout: int | None = None) -> int:
        cin = self.cin if cin is None else cin
        cout = self.cout if cout is None else cout
        if self.kind == "dwconv":
            return cin * self.k[0] * self.k[1] + (cin if self.has_bias else 0)
        w = cin * cout if self.kind == "linear" else (cin // self.groups) * cout * self.k[0] * self.k[1]
        return w + (cout if self.has_bias else 0)


@dataclass
class ChannelGroup:
    """One prunable channel set: one AMC step, one preserve ratio."""

    index: int
    channels: int
    producers: list[str]  # convs/linears whose output channels are pruned
    consumers: list[str]  # convs/linears whose input channels are pruned (reconstructed)
    depthwise: list[str] = field(default_factory=list)  # depthwise convs carried along
    norms: list[str] = field(default_factory=list)  # BatchNorms sliced along
    residual: bool = False  # the set meets in an add and is pruned as one shared group
    unit: int = 1  # kept counts are multiples of this: the lcm of the groups of the grouped convs it touches
    shuffle: int = 1  # groups of a channel shuffle between the producers and ``shuffled`` (1: none)
    shuffled: list[str] = field(default_factory=list)  # layers that read the channels after the shuffle
    reshaped: bool = False  # the channels pass a reshape whose map was probed (a shuffle, maybe of one group)

    def step(self, channel_round: int = 1) -> int:
        """The granularity of this set's kept counts under ``channel_round``."""
        return math.lcm(max(1, int(channel_round)), self.unit)

    @property
    def layer(self) -> str:
        """The layer whose input this step prunes (AMC's "layer t")."""
        return self.consumers[0]

    def keep_for(self, name: str, keep: torch.Tensor) -> torch.Tensor:
        """The channels layer ``name`` reads, in the slim model's order, when the producers
        keep ``keep`` (sorted). Past a channel shuffle they arrive interleaved: the slim
        model's own shuffle, of fewer channels, decides their order (:mod:`amc.shuffle`)."""
        if self.shuffle == 1 or name not in self.shuffled:
            return keep
        from amc.shuffle import shuffle_dest, shuffle_source

        return shuffle_dest(self.channels, self.shuffle)[keep][shuffle_source(len(keep), self.shuffle)]

    def producer_order(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Per-channel ``values`` seen at layer ``name``'s input, in the producers' channel order."""
        if self.shuffle == 1 or name not in self.shuffled:
            return values
        from amc.shuffle import shuffle_dest

        return values[shuffle_dest(self.channels, self.shuffle)]

    def __str__(self) -> str:
        lines = [f"group {self.index}: {self.channels} channels{' (residual, shared)' if self.residual else ''}"
                 + (f", in blocks of {self.channels // self.unit} (grouped convs{' and a channel shuffle' if self.shuffle > 1 else ''}: "
                    f"kept counts are multiples of {self.unit})" if self.unit > 1 else ""),
                 f"  producers: {', '.join(self.producers)}"]
        if self.norms or self.depthwise:
            lines.append(f"  carried:   {', '.join(self.norms + self.depthwise)}")
        lines.append(f"  consumers: {', '.join(self.consumers)}")
        return "\n".join(lines)


RESIDUAL_LEFT_ALONE = "tied to a residual add (left alone; use coupled='shared' to prune as one group)"


@dataclass
class LayerGraph:
    """All conv/linear layers in forward order, the prunable groups and a skip report."""

    layers: dict[str, LayerInfo]
    groups: list[ChannelGroup]
    skipped: list[tuple[str, str]]  # (layer names, reason)
    norms: dict[str, tuple[int, int | None]]  # affine BatchNorm name -> (features, group or None)
    input_shape: tuple[int, int, int]
    other_params: int  # parameters outside conv/linear/BN (never pruned)

    @property
    def residual_sets_left_alone(self) -> int:
        """How many residual-tied channel sets ``coupled="skip"`` leaves whole."""
        return sum(why == RESIDUAL_LEFT_ALONE for _, why in self.skipped)

    def report(self) -> str:
        lines = [f"{len(self.groups)} prunable groups, {len(self.skipped)} channel sets left alone"]
        lines += [str(g) for g in self.groups]
        lines += [f"left alone: {names}: {why}" for names, why in self.skipped]
        return "\n".join(lines)


def _trace_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, LayerInfo]:
    infos: dict[str, LayerInfo] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        n = names[m]
        if n in infos:
            raise AmcError(f"layer {n} is called more than once per forward pass; shared layers cannot be pruned")
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            infos[n] = LayerInfo(n, "dwconv" if dw else "conv", len(infos), m.in_channels, m.out_channels,
                                 tuple(m.kernel_size), m.stride[0], m.groups, tuple(inp[0].shape[-2:]),
                                 tuple(out.shape[-2:]), has_bias=m.bias is not None)
        else:
            rows = out.numel() // out.shape[0] // out.shape[-1]
            infos[n] = LayerInfo(n, "linear", len(infos), m.in_features, m.out_features,
                                 out_hw=(rows, 1), has_bias=m.bias is not None)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return infos


def _grad_fn_name(node) -> str:
    fn = getattr(node, "grad_fn", None)
    return fn.name().lower() if fn is not None and hasattr(fn, "name") else ""


@contextlib.contextmanager
def _tolerant_reshapes(unmapped: list) -> Iterator[None]:
    """Trace through reshapes whose channel mapping Torch-Pruning cannot infer.

    Its reshape index mapping divides by an inferred channel count, and a channel shuffle
    (view to 5-D, transpose, view back: ShuffleNet) makes that count 0, so tracing the whole
    model fails (its issue #14, open since 2020). Here such a reshape keeps no mapping and is
    recorded in ``unmapped``; every channel set that reaches it is then left alone, so nothing
    is pruned through an index map we do not know. Restored on exit.
    """
    from torch_pruning.dependency import index_mapping

    real = index_mapping.update_reshape_index_mapping

    def tolerant(graph, node) -> None:
        # a reshape that feeds a transpose or permute reorders channels: no map (and no time
        # spent building Torch-Pruning's per-index maps through it)
        if any(any(k in _grad_fn_name(n) for k in ("transpose", "permute")) for n in node.outputs):
            unmapped.append(node)
            return
        try:
            real(graph, node)
        except ArithmeticError:
            unmapped.append(node)

    index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = real


def build_layer_graph(model: nn.Module, input_shape: tuple[int, int, int], coupled: str = "skip",
                      leave_shuffles: dict[str, str] | None = None) -> LayerGraph:
    """Find the prunable channel groups of ``model`` for inputs of shape ``(C, H, W)``.

    Args:
        model: the unpruned model (not modified).
        input_shape: one input's shape.
        coupled: ``"skip"`` leaves residual-tied channels alone; ``"shared"`` prunes each
            residual-tied set as one group with one ratio.
        leave_shuffles: sets through a probed reshape to leave alone, by their first
            producer, with the reason (the pruner's slim/masked check found the slim model's
            shuffle to differ).
    """
    import torch_pruning as tp

    if coupled not in ("skip", "shared"):
        raise AmcError(f"coupled must be 'skip' or 'shared', got {coupled!r}")
    infos = _trace_shapes(model, input_shape)
    if not infos:
        raise AmcError("the model has no Conv2d or Linear layer, so nothing can be pruned")
    unmapped: list = []
    with _tolerant_reshapes(unmapped):  # Torch-Pruning redoes its index maps for every group
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape),
                                                       verbose=False)
        except Exception as e:  # tracing arbitrary user models can fail in many ways
            raise AmcError(f"cannot trace the model's channel dependencies: {type(e).__name__}: {e}") from e
        return _classify(model, input_shape, coupled, infos, dg, unmapped, leave_shuffles)


def _classify(model: nn.Module, input_shape: tuple[int, int, int], coupled: str, infos: dict[str, LayerInfo],
              dg, unmapped: list, leave_shuffles: dict[str, str] | None = None) -> LayerGraph:
    """The groups of a traced model: Torch-Pruning's coupling, sorted into what we prune and what not."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    out_layers = [n for n, i in infos.items() if i.kind != "dwconv" and not _feeds_layer(n, infos, dg, model)]

    groups: list[ChannelGroup] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    ordered = sorted(infos.values(), key=lambda i: i.order)
    for info in ordered:
        if info.kind == "dwconv" or info.name in seen:
            continue
        module = model.get_submodule(info.name)
        fn = tp.prune_linear_out_channels if info.kind == "linear" else tp.prune_conv_out_channels
        try:
            group = dg.get_pruning_group(module, fn, idxs=list(range(info.cout)))
        except Exception as e:  # an index map through split/shuffle it cannot follow: leave the set alone
            skipped.append((info.name, f"Torch-Pruning cannot follow its channels ({type(e).__name__})"))
            continue
        producers, consumers, dws, norms, units = [], [], [], [], [1]
        problem, residual, shuffled = None, False, False
        for dep, idxs in group:
            target = dep.target
            name = names.get(target.module, str(target.name))
            handler = getattr(dep.handler, "__name__", str(dep.handler))
            if target.type == tp.ops.OPTYPE.ELEMENTWISE and "Add" in str(target.grad_fn):
                residual = True
            if target.type in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND):
                problem = f"passes through a {target.type.name.lower()}"
            if any(target is n for n in unmapped):
                shuffled = True  # probed below, once the members are known
            if sorted(idxs) != list(range(info.cout)):
                problem = problem or "channel indices are not one-to-one (flatten, concat or split)"
            m = target.module
            if isinstance(m, nn.Conv2d) and name in infos:
                li = infos[name]
                if li.kind == "dwconv":
                    dws.append(name)
                    continue
                units.append(li.groups)
                (producers if "out" in handler else consumers).append(name)
            elif isinstance(m, nn.Linear) and name in infos:
                (producers if "out" in handler else consumers).append(name)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                norms.append(name)
            elif isinstance(m, nn.Module) and any(True for _ in m.parameters(recurse=False)) \
                    and target.type not in (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR, tp.ops.OPTYPE.BN):
                problem = f"carries layer {name} ({type(m).__name__}) that we cannot slice"
        seen.update(producers)
        # a set with no producer of ours (e.g. fed by a depthwise conv only) is named by the layer it starts from
        label = ", ".join(sorted(set(producers), key=lambda n: infos[n].order)) or info.name
        if any(p in out_layers for p in producers):
            skipped.append((label, "network output (class logits)"))
            continue
        if problem:  # before "no consumer": a consumer we cannot slice is not counted as one
            skipped.append((label, problem))
            continue
        if not consumers:
            skipped.append((label, "no consumer conv/linear to read the channels"))
            continue
        if residual and coupled == "skip":
            skipped.append((label, RESIDUAL_LEFT_ALONE))
            continue
        order = lambda n: infos[n].order  # noqa: E731
        unit, shuffle, after = math.lcm(*units), 1, []
        if shuffled:
            found = _shuffle(model, input_shape, infos, producers, consumers, dws, norms, info.cout)
            if isinstance(found, str):
                skipped.append((label, found))
                continue
            unit, shuffle, after = found
            first = min(producers, key=lambda n: infos[n].order) if producers else None
            if first in (leave_shuffles or {}):
                skipped.append((label, leave_shuffles[first]))
                continue
        if unit >= info.cout:
            skipped.append((label, f"grouped convs leave no smaller count (blocks of {info.cout // unit})"))
            continue
        groups.append(ChannelGroup(-1, info.cout, sorted(set(producers), key=order), sorted(set(consumers), key=order),
                                   sorted(set(dws), key=order), sorted(set(norms)), residual, unit, shuffle, after,
                                   reshaped=shuffled))
    # a step is "layer t": order the groups by where their first consumer runs
    groups.sort(key=lambda g: infos[g.layer].order)
    for i, g in enumerate(groups):
        g.index = i
        for n in g.producers:
            infos[n].out_group = i
        for n in g.consumers:
            infos[n].in_group = i
        for n in g.depthwise:
            infos[n].in_group = infos[n].out_group = i
    in_group = {n: g.index for g in groups for n in g.norms}
    norms = {n: (m.num_features, in_group.get(n)) for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}
    counted = sum(i.params() for i in infos.values()) + sum(2 * f for f, _ in norms.values())
    other = sum(p.numel() for p in model.parameters()) - counted
    return LayerGraph(infos, groups, skipped, norms, tuple(input_shape), other)


def _shuffle(model: nn.Module, input_shape: tuple[int, int, int], infos: dict[str, LayerInfo], producers: list[str],
             consumers: list[str], dws: list[str], norms: list[str], channels: int) -> tuple[int, int, list[str]] | str:
    """A set traced through a reshape without a channel map: ``(cells, shuffle groups, layers
    after the shuffle)`` when the map is a channel shuffle it can be pruned through, else why not."""
    from amc.shuffle import cells, probe_sources, shuffle_groups

    unknown = "passes through a reshape with an unknown channel order"
    producers, readers = sorted(set(producers)), sorted(set(consumers + dws + norms))
    if len(producers) != 1:
        return unknown + " and has several producers"
    sources = probe_sources(model, input_shape, producers[0], readers, sorted(set(dws + norms)), channels)
    if sources is None:
        return unknown + " (not a permutation of the producer's channels)"
    found = {n: shuffle_groups(src) for n, src in sources.items()}
    shuffles = {g for g in found.values() if g != 1}
    if None in found.values() or len(shuffles) > 1:
        return unknown + " (not one channel shuffle)"
    group_of = lambda n: infos[n].groups if infos[n].kind == "conv" else 1  # noqa: E731
    if not shuffles:  # a shuffle of one group: the channels keep their order
        return math.lcm(*(group_of(n) for n in producers + consumers)), 1, []
    shuffle = shuffles.pop()
    after = [n for n in readers if found[n] != 1]
    pre = [group_of(producers[0])] + [group_of(n) for n in consumers if n not in after]
    post = [group_of(n) for n in consumers if n in after]
    unit = cells(channels, pre, post, shuffle)
    if unit is None:
        return (f"a channel shuffle of {shuffle} groups whose grouped convs do not split its {channels} channels "
                "into equal cells")
    if unit >= channels:
        return f"a channel shuffle leaves no smaller count (cells of {channels // unit})"
    return unit, shuffle, sorted(after, key=lambda n: infos[n].order if n in infos else -1)


def _feeds_layer(name: str, infos: dict[str, LayerInfo], dg, model: nn.Module) -> bool:
    """Whether the output of layer ``name`` reaches another conv/linear (else it is the output)."""
    node = dg.module2node.get(model.get_submodule(name))
    if node is None:
        return True
    stack, visited = list(node.outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in visited:
            continue
        visited.add(id(n))
        if isinstance(n.module, (nn.Conv2d, nn.Linear)):
            return True
        stack.extend(n.outputs)
    return False
