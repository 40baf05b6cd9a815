"""Pairing their state_dict's tensors with our variables: by name, by structure (role and shapes, in the
order the layers run), with `mapping=` pins, and the check that refuses an order a state_dict cannot tell."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from jaxnets.errors import describe
from jaxnets.interop.errors import AmbiguousMapping, StateDictMismatch
from jaxnets.interop.layout import TORCH_LEAF_ORDER, Layer, LayoutRow, build_layout, layer_role, our_layers
from jaxnets.interop.state_dict import is_tensor, strip_wrappers

# The package's logger (`jaxnets.interop`): the mapping found by structure is logged at INFO.
logger = logging.getLogger("jaxnets.interop")


class TheirLayer(NamedTuple):
    """One layer of their state_dict: its module prefix, role (conv, linear, batchnorm, other) and keys."""

    module: str
    role: str
    keys: list[str]


def _their_layers(state_dict: Mapping[str, Any]) -> list[TheirLayer]:
    """Their state_dict's keys grouped per layer, in its order; counters (`num_batches_tracked`) dropped."""
    groups: dict[str, list[str]] = {}
    for key in state_dict:
        if key.endswith("num_batches_tracked"):
            continue
        module = key.rsplit(".", 1)[0] if "." in key else ""
        groups.setdefault(module, []).append(key)
    out = []
    for module, keys in groups.items():
        leaves = {key.rsplit(".", 1)[-1] for key in keys}
        weight = state_dict.get(f"{module}.weight" if module else "weight")
        ndim = len(weight.shape) if weight is not None else 0
        role = layer_role(leaves, ndim)
        out.append(TheirLayer(module, role, keys))
    return out


def _describe_theirs(state_dict, role: str, keys: list[str]) -> str:
    """`'conv weight (O, I, kh, kw), bias (O,)'`: as `Layer.describe`, for their tensors."""
    return f"{role} " + ", ".join(f"{key.rsplit('.', 1)[-1]} {tuple(state_dict[key].shape)}" for key in keys)


def _numbering(module: str) -> tuple[str, tuple[int, ...]]:
    """`('fc#', (3,))` for `'fc3'`: a name's skeleton and the numbers in it (which order layers of one skeleton)."""
    return re.sub(r"\d+", "#", module), tuple(int(n) for n in re.findall(r"\d+", module))


def _pinned_pairs(name: str, state_dict, theirs, ours: list[Layer], mapping: Mapping[str, str]) -> dict[str, str]:
    """`mapping` (their module or tensor key -> ours) as {their module: our module}, each name checked.

    Raises:
      StateDictMismatch: a name that is no layer on its side, a layer mapped twice, or a tensor mapped to
        another kind of tensor (a weight to a bias).
    """
    their_modules = [layer.module for layer in theirs]
    our_modules = [layer.module for layer in ours]
    pairs: dict[str, str] = {}
    for their_name, our_name in mapping.items():
        their_name, our_name = str(their_name), str(our_name)
        if their_name not in their_modules and their_name in state_dict and "." in their_name:  # a tensor key
            their_name, their_leaf = their_name.rsplit(".", 1)
            our_name, _, our_leaf = our_name.rpartition(".")
            if our_leaf != their_leaf:
                raise StateDictMismatch(f"{name}: mapping {their_name}.{their_leaf!s} -> {our_name}.{our_leaf}: "
                                        f"a {their_leaf} maps to a {their_leaf} (or map the layers: "
                                        f"{{{their_name!r}: ...}})")
        if their_name not in their_modules:
            raise StateDictMismatch(f"{name}: mapping names {their_name!r}, which is no layer of the state_dict "
                                    f"(its layers: {', '.join(their_modules)})")
        if our_name not in our_modules:
            raise StateDictMismatch(f"{name}: mapping maps {their_name!r} to {our_name!r}, which is no layer of "
                                    f"{name} (its layers: {', '.join(our_modules)})")
        if pairs.get(their_name, our_name) != our_name:
            raise StateDictMismatch(f"{name}: mapping maps {their_name!r} twice ({pairs[their_name]!r} and "
                                    f"{our_name!r})")
        pairs[their_name] = our_name
    taken = list(pairs.values())
    twice = next((our for our in taken if taken.count(our) > 1), None)
    if twice is not None:
        raise StateDictMismatch(f"{name}: mapping maps two layers to {twice!r}: "
                                f"{', '.join(t for t, o in pairs.items() if o == twice)}")
    return pairs


def _pair(name: str, state_dict, their_layer: TheirLayer, mine: Layer, where: str) -> dict[str, str]:
    """{their key: our key} for one pair of layers, or `StateDictMismatch` saying how they differ."""
    module, role, keys = their_layer
    keys = sorted(keys, key=lambda k: TORCH_LEAF_ORDER.get(k.rsplit(".", 1)[-1], 9))
    their_leaves = [(k.rsplit(".", 1)[-1], tuple(state_dict[k].shape)) for k in keys]
    my_leaves = [(row.torch_leaf, tuple(row.torch_shape)) for row in mine.rows]
    if role != mine.role or their_leaves != my_leaves:
        raise StateDictMismatch(
            f"{name}: the state_dict does not match by structure; {where}: "
            f"theirs {module!r} ({_describe_theirs(state_dict, role, keys)}) vs ours {mine.module!r} "
            f"({mine.describe()}). Is this checkpoint a {name}? (create options such as num_classes must "
            "match too)")
    return {key: row.torch_key for key, row in zip(keys, mine.rows, strict=True)}


def _check_unambiguous(name: str, state_dict, pairs: list[tuple[TheirLayer, Layer]], why_untraced: str) -> None:
    """Refuse when two same-shaped layers are stored in one order but numbered the other way.

    Either order fits the architecture, and a state_dict records only the
    order the layers were registered in, not the order they run.

    Raises:
      AmbiguousMapping: naming both layers, the two pairings, and how to say which is right.
    """
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for (module, role, keys), mine in pairs:
        shapes = tuple(sorted((k.rsplit(".", 1)[-1], tuple(state_dict[k].shape)) for k in keys))
        groups.setdefault((role, shapes), []).append((module, mine.module))
    for members in groups.values():
        for (first, ours_first), (second, ours_second) in itertools.combinations(members, 2):
            (skeleton_a, numbers_a), (skeleton_b, numbers_b) = _numbering(first), _numbering(second)
            if skeleton_a != skeleton_b or numbers_a <= numbers_b:
                continue
            keys = next(keys for (module, _, keys), _ in pairs if module == first)
            role = next(role for (module, role, _), _ in pairs if module == first)
            raise AmbiguousMapping(
                f"{name}: the state_dict alone cannot say in which order its layers run: {first!r} and "
                f"{second!r} (both {_describe_theirs(state_dict, role, keys)}) are stored in the order {first}, "
                f"{second} but numbered {second}, {first}, and either order fits {name}. Stored order would give "
                f"{first} -> {ours_first}, {second} -> {ours_second}; numbered order {second} -> {ours_first}, "
                f"{first} -> {ours_second}.{why_untraced} Pass the nn.Module itself (its forward is traced to find "
                f"the order), or say which is which: mapping={{{second!r}: {ours_first!r}, {first!r}: "
                f"{ours_second!r}}} (jaxnets-convert --map {second}={ours_first} --map {first}={ours_second})")


def _match_by_structure(name: str, state_dict: Mapping[str, Any], layout: list[LayoutRow],
                        mapping: Mapping[str, str] | None = None, order_known: bool = False,
                        why_untraced: str = "") -> dict[str, str]:
    """{their key: our key}, pairing layers in order by role and shapes (`mapping`'s pairs pinned first).

    Args:
      state_dict: theirs, in the order its layers run when `order_known`
        (traced from the module), else in stored order.
      mapping: {their module or key: our module or key} to pin by hand.
      order_known: the order is the call order: no ambiguity check.
      why_untraced: said in an `AmbiguousMapping` message (why the module could not be traced).

    Raises:
      StateDictMismatch: naming the first pair of layers that differ (both
        names and shapes), or the layers left over on either side.
      AmbiguousMapping: see `_check_unambiguous`.
    """
    ours = our_layers(layout)
    theirs = _their_layers(state_dict)
    pinned = _pinned_pairs(name, state_dict, theirs, ours, mapping or {})
    by_module = {layer.module: layer for layer in ours}
    result: dict[str, str] = {}
    for layer in theirs:
        if layer.module in pinned:
            result.update(_pair(name, state_dict, layer, by_module[pinned[layer.module]],
                                f"mapping {layer.module!r} -> {pinned[layer.module]!r}"))
    ours = [layer for layer in ours if layer.module not in set(pinned.values())]
    theirs = [layer for layer in theirs if layer.module not in pinned]
    for index, (mine, layer) in enumerate(zip(ours, theirs, strict=False)):
        result.update(_pair(name, state_dict, layer, mine, f"first mismatch at layer {index}"))
    if len(theirs) != len(ours):
        if len(theirs) > len(ours):
            module, role, keys = theirs[len(ours)]
            extra = f"theirs has {len(theirs) - len(ours)} more layer(s), the first {module!r} " \
                    f"({_describe_theirs(state_dict, role, keys)})"
        else:
            mine = ours[len(theirs)]
            extra = f"ours has {len(ours) - len(theirs)} more layer(s), the first {mine.module!r} ({mine.describe()})"
        raise StateDictMismatch(f"{name}: the state_dict does not match by structure: {len(theirs)} layers in the "
                                f"state_dict, {len(ours)} in {name}; {extra}")
    if not order_known:
        _check_unambiguous(name, state_dict, list(zip(theirs, ours, strict=True)), why_untraced)
    return {key: result[key] for key in state_dict if key in result}  # in the state_dict's order


def _check_by_name(name: str, state_dict: Mapping[str, Any], layout: list[LayoutRow]) -> None:
    """Raise `StateDictMismatch` for the first missing, unexpected or mis-shaped key (our names)."""
    expected = {row.torch_key for row in layout}
    for row in layout:
        if row.torch_key not in state_dict:
            raise StateDictMismatch(f"{name}: state_dict is missing key {row.torch_key!r} "
                                    f"(expected shape {row.torch_shape})")
    unexpected = [k for k in state_dict if k not in expected and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise StateDictMismatch(f"{name}: unexpected key {unexpected[0]!r} in state_dict ({len(unexpected)} in all)")
    wanted_shapes = {row.torch_key: tuple(row.torch_shape) for row in layout}
    for key, value in state_dict.items():  # in the user's order, so "first" means first there
        if key in wanted_shapes and tuple(value.shape) != wanted_shapes[key]:
            raise StateDictMismatch(f"{name}: {key!r} has shape {tuple(value.shape)}, expected {wanted_shapes[key]}")


def _call_order(module: Any, model) -> tuple[list[str] | None, str]:
    """The names of `module`'s layers holding tensors, in the order its forward calls them.

    One forward (eval mode, no gradients, each submodule's train/eval flag put
    back after) on zeros of the jaxnets model's input shape (`[1, C, H, W]`,
    or `[1, D]` for a flat input), with a pre-hook on every layer that owns
    parameters or buffers. Names are the module's own (`named_modules`), so
    they prefix its `state_dict()` keys.

    Returns:
      (the names, "") or, when the order cannot be known, (None, why): the
      forward failed, or some layers were not called as modules (weights
      used through `torch.nn.functional`).
    """
    import torch  # a module was given, so torch is there

    def owns_tensors(layer) -> bool:
        return next(itertools.chain(layer.parameters(recurse=False), layer.buffers(recurse=False)), None) is not None

    holders = [(layer_name, layer) for layer_name, layer in module.named_modules() if owns_tensors(layer)]
    if not holders:
        return None, " (the module holds no tensors)"
    names = {id(layer): layer_name for layer_name, layer in holders}
    called: list[str] = []

    def record(layer, args):
        if names[id(layer)] not in called:
            called.append(names[id(layer)])

    reference = next(itertools.chain(module.parameters(), module.buffers()))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    shape = tuple(model.input_shape)
    shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape  # NHWC -> NCHW
    hooks = [layer.register_forward_pre_hook(record) for _, layer in holders]
    modes = [(layer, layer.training) for layer in module.modules()]
    runner = getattr(module, "_orig_mod", module)  # torch.compile's wrapper: trace the module itself
    try:
        module.eval()
        with torch.no_grad():
            runner(torch.zeros((1, *shape), dtype=dtype, device=reference.device))
    except Exception as err:  # whatever the user's forward raises
        return None, (f" (its forward could not be traced on a [1, {', '.join(map(str, shape))}] input: "
                      f"{describe(err)})")
    finally:
        for hook in hooks:
            hook.remove()
        for layer, training in modes:
            layer.training = training
    missed = [layer_name for layer_name, _ in holders if layer_name not in called]
    if missed:
        return None, (f" (tracing its forward did not see {', '.join(repr(m) for m in missed[:5])} called as a "
                      "module)")
    return called, ""


def _in_call_order(state_dict: dict[str, Any], module: Any, model) -> tuple[dict[str, Any], bool, str]:
    """`state_dict` (wrapper prefixes stripped) reordered as `module`'s forward calls its layers.

    Returns:
      (the state_dict, whether its order is the call order, why not).
    """
    if module is None:
        return state_dict, False, ""
    order, why = _call_order(module, model)
    if order is None:
        return state_dict, False, why
    raw = list(module.state_dict())
    stripped = strip_wrappers(raw)
    cut = len(raw[0]) - len(stripped[raw[0]])  # the wrapper prefix (`module.`, `_orig_mod.`) every key shares
    rank = {layer_name[cut:]: index for index, layer_name in enumerate(order)}

    def position(item):
        index, key = item
        return rank.get(key.rsplit(".", 1)[0] if "." in key else "", len(rank)), index

    keys = [key for _, key in sorted(enumerate(state_dict), key=position)]
    return {key: state_dict[key] for key in keys}, True, ""


def resolve(name: str, state_dict: dict[str, Any], create_kwargs: dict, mapping: Mapping[str, str] | None = None,
            module: Any = None) -> tuple[list[LayoutRow], dict[str, str]]:
    """(layout, {their key: our key}) for a prefix-stripped state_dict.

    Keys that are all ours map to themselves; otherwise layers are matched by structure, in the order
    `module` (the nn.Module the state_dict came from, or None) calls them, `mapping`'s pairs pinned first.

    Raises:
      StateDictMismatch, AmbiguousMapping: as `from_torch`.
      ValueError: the model cannot be built (`build_layout`).
    """
    model, layout = build_layout(name, create_kwargs)
    for key, value in state_dict.items():
        if not is_tensor(value):
            raise StateDictMismatch(f"{name}: state_dict value {key!r} is a {type(value).__name__}, not a tensor")
    ours = {row.torch_key for row in layout}
    theirs = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if theirs == ours and not mapping:
        _check_by_name(name, state_dict, layout)
        return layout, {key: key for key in state_dict if key in ours}
    ordered, order_known, why = _in_call_order(state_dict, module, model)
    try:
        matched = _match_by_structure(name, ordered, layout, mapping, order_known, why)
    except AmbiguousMapping:
        raise
    except StateDictMismatch:
        if not mapping and len(theirs & ours) * 2 >= len(theirs):  # mostly our names: say which key is off
            _check_by_name(name, state_dict, layout)
        raise
    matched = {key: matched[key] for key in state_dict if key in matched}  # in the source's order
    logger.info("%s: matched %d tensors by structure%s: %s", name, len(matched),
                " (layers in the order the module's forward calls them)" if order_known else "",
                ", ".join(f"{a} -> {b}" for a, b in matched.items()))
    return layout, matched
