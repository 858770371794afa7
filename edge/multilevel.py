"""Multi-level training's three operators (Zou, Zhang, Deng, arXiv 2404.07999), for every registered
architecture: coalesce a model into a smaller one of the same family, de-coalesce it back, interpolate.

Width: a factor w merges w units into one in each of three spaces: the hidden features (the residual
stream), each layer's attention heads (whole heads: the head size and so the attention's scale stay)
and each layer's FFN neurons. Small unit i stands for large units i, i + n, ..., i + (w-1) n (n: the
small count), so a tensor's large dimension is its small one tiled w times. Where a parameter WRITES a
space (a Linear's output rows, an embedding, a norm, a bias) coalescing averages the w copies and
de-coalescing repeats them; where it READS one (a Linear's input columns) coalescing sums them and
de-coalescing splits them evenly. A de-coalesced model therefore computes exactly its small model's
function on tiled features (a LayerNorm over tiled features has the same statistics; a head reads a
tiled input through halved columns), and coalesce(de-coalesce(m)) is m again.
Depth: a factor k averages k adjacent layers into one (coalescing) and copies one into k (de-coalescing).
Interpolation: large = (1 - alpha) large + alpha de-coalesce(small): the copies' symmetry is broken.

Tied input/output embeddings (a masked-language model's decoder reads the hidden space with the
embedding's own matrix, which writes it) are the one place the two sides meet in one tensor: the
embedding is treated as writing, and the LayerNorm that feeds the decoder is scaled by 1/w on
de-coalescing (x w on coalescing), so the decoder's logits stay exact for any factor.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from edge.arch import arch_for
from edge.errors import EdgeError

HIDDEN, HEADS, FFN = "hidden", "heads", "ffn"
# a dimension's role: (space, writes) where writes is True on the output side, False on the input side
Role = tuple[str, bool]


def _sizes(model: nn.Module) -> tuple[int, int, int, int]:
    """(hidden, heads, ffn, layers) read from the config through the adapter's size fields."""
    arch = arch_for(model)
    return tuple(int(getattr(model.config, f)) for f in arch.size_fields)


def check_factors(model: nn.Module, width: int, depth: int) -> None:
    """One EdgeError naming the first size a factor does not divide."""
    for name, f in (("width", width), ("depth", depth)):
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise EdgeError(f"the {name} factor must be an integer >= 1, got {f!r}")
    arch = arch_for(model)
    for field, n, f in zip(arch.size_fields, _sizes(model), (width, width, width, depth)):
        if n % f:
            raise EdgeError(f"{field}={n} of this {model.config.model_type} model is not divisible by the "
                            f"{'width' if f is width else 'depth'} factor {f}; pick a divisor")


def _tied_norm(model: nn.Module, d: int) -> nn.Module | None:
    """The LayerNorm feeding a decoder that shares the input embedding's matrix (the last LayerNorm over
    the hidden size, in module order: BERT's, RoBERTa's and ELECTRA's language-model heads), or None."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    emb, out = get_in(), get_out()
    if emb is None or out is None or out.weight is not emb.weight or emb.weight.shape[-1] != d:
        return None
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d,)]
    if not norms:
        raise EdgeError(f"{type(model).__name__} ties its decoder to its embeddings without a LayerNorm before the "
                        "decoder; untie them (tie_word_embeddings=False) to coalesce its width")
    return norms[-1]


def roles(model: nn.Module) -> dict[str, list[Role | None]]:
    """Every parameter's name (as named_parameters gives it, shared ones once) -> each dimension's role:
    (space, writes) or None (a dimension no factor touches: the vocabulary, the labels, a kernel)."""
    arch = arch_for(model)
    d = _sizes(model)[0]
    special: dict[int, tuple[Role | None, Role | None]] = {}  # id(Linear) -> (output role, input role)
    for layer in arch.layers(model):
        h = arch.heads(layer)
        if h is not None:
            for lin in (h.q, h.k, h.v):
                special[id(lin)] = ((HEADS, True), (HIDDEN, False))
            special[id(h.o)] = ((HIDDEN, True), (HEADS, False))
        f = arch.ffn(layer, model.config)
        special[id(f.fc1)], special[id(f.fc2)] = ((FFN, True), (HIDDEN, False)), ((HIDDEN, True), (FFN, False))
    out: dict[str, list[Role | None]] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mname}.{pname}" if mname else pname
            r: list[Role | None] = [None] * p.dim()
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):  # weight (out, in, ...)
                o, i = special.get(id(module), ((HIDDEN, True) if p.shape[0] == d else None,
                                                (HIDDEN, False) if p.dim() > 1 and p.shape[1] == d else None))
                r[0] = o
                if pname == "weight":
                    r[1] = i
            elif p.dim() and p.shape[-1] == d:  # embeddings, norms, a class token, position tables
                r[-1] = (HIDDEN, True)
            out[name] = r
    return out


def _width_map(t: torch.Tensor, role: list[Role | None], w: int, down: bool) -> torch.Tensor:
    """Coalesce (down) or de-coalesce one tensor along each dimension that has a role."""
    for dim, r in enumerate(role):
        if r is None or w == 1:
            continue
        _, writes = r
        if down:
            n = t.shape[dim] // w
            parts = t.unflatten(dim, (w, n))  # large index k*n + i -> (k, i)
            t = parts.mean(dim) if writes else parts.sum(dim)
        else:
            reps = [1] * t.dim()
            reps[dim] = w
            t = t.repeat(*reps) if writes else t.repeat(*reps) / w
    return t


def _layer_of(model: nn.Module) -> tuple[dict[str, int], list[str]]:
    """Parameter name -> its layer's index (those outside the layers are absent), and the layers' prefixes."""
    arch = arch_for(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(layer)] + "." for layer in arch.layers(model)]
    index = {}
    for name, _ in model.named_parameters():
        for i, p in enumerate(prefixes):
            if name.startswith(p):
                index[name] = i
                break
    return index, prefixes


def _small_config(model: nn.Module, width: int, depth: int):
    arch = arch_for(model)
    cfg = copy.deepcopy(model.config)
    hidden = _sizes(model)[0]
    for field, f in zip(arch.size_fields, (width, width, width, depth)):
        setattr(cfg, field, int(getattr(cfg, field)) // f)
    for field in arch.also_hidden:
        if getattr(cfg, field, None) == hidden:
            setattr(cfg, field, hidden // width)
    return cfg


def _build(model: nn.Module, cfg) -> nn.Module:
    """A new model of model's class from cfg, without the submodules `model` was built without (a BERT
    made with add_pooling_layer=False has pooler None: the class's constructor argument is not in cfg)."""
    small = type(model)(cfg).to(next(model.parameters()).dtype)
    have = dict(model.named_modules())
    for name, _ in list(small.named_modules()):
        if not name or name in have or "." in name and name.rsplit(".", 1)[0] not in have:
            continue  # (inside a module already absent, or a layer of the small model's own)
        parent, _, attr = name.rpartition(".")
        if getattr(have[parent], attr, "absent") is None:
            setattr(dict(small.named_modules())[parent], attr, None)
    return small.train(model.training)


def _pairing(large: nn.Module, small: nn.Module, width: int):
    """What both directions need: the large model's roles, each model's parameter -> layer map and layer
    prefixes, and the names of the parameters scaled for a tied decoder (its LayerNorm's)."""
    large_layer, large_prefixes = _layer_of(large)
    small_layer, small_prefixes = _layer_of(small)
    norm = _tied_norm(large, _sizes(large)[0]) if width > 1 else None
    own = {id(p) for p in norm.parameters()} if norm is not None else set()
    scaled = {n for n, p in large.named_parameters() if id(p) in own}
    return roles(large), large_layer, large_prefixes, small_layer, small_prefixes, scaled


@torch.no_grad()
def coalesce(model: nn.Module, width: int = 2, depth: int = 2) -> nn.Module:
    """A new model of the same class, `width` times narrower (hidden size, heads, FFN) and `depth` times
    shallower, whose every parameter is merged from `model`'s.

    >>> from edge.arch import ARCHS
    >>> large, batch = ARCHS.get("vit").tiny("vit")
    >>> small = coalesce(large, 2, 2)
    >>> small.config.hidden_size, small.config.num_hidden_layers
    (16, 1)
    """
    check_factors(model, width, depth)
    small = _build(model, _small_config(model, width, depth))
    large_params = dict(model.named_parameters())
    r, _, large_prefixes, small_layer, small_prefixes, scaled = _pairing(model, small, width)
    for name, p in small.named_parameters():
        if name in small_layer:
            i, rest = small_layer[name], name[len(small_prefixes[small_layer[name]]):]
            sources = [large_prefixes[j] + rest for j in range(i * depth, (i + 1) * depth)]
        else:
            sources = [name]
        missing = [s for s in sources if s not in large_params]
        if missing:
            raise EdgeError(f"cannot coalesce {type(model).__name__}: no parameter {missing[0]} to merge into {name}")
        merged = torch.stack([_width_map(large_params[s], r[s], width, down=True) for s in sources]).mean(0)
        if name in scaled:
            merged = merged * width  # the tied decoder reads w copies summed: see the module's docstring
        if merged.shape != p.shape:
            raise EdgeError(f"cannot coalesce {type(model).__name__}: {name} merges to {tuple(merged.shape)}, "
                            f"the smaller model has {tuple(p.shape)}")
        p.copy_(merged)
    return small


@torch.no_grad()
def decoalesced(small: nn.Module, large: nn.Module, width: int = 2, depth: int = 2) -> dict[str, torch.Tensor]:
    """`large`'s parameters (names as named_parameters gives them) as de-coalesced from `small`: each
    merged unit copied back to the slots it came from (the inverse of coalesce(large, width, depth))."""
    check_factors(large, width, depth)
    expect = _small_config(large, width, depth)
    arch = arch_for(large)
    got = tuple(int(getattr(small.config, f)) for f in arch.size_fields)
    want = tuple(int(getattr(expect, f)) for f in arch.size_fields)
    if type(small) is not type(large) or got != want:
        raise EdgeError(f"the smaller model ({type(small).__name__}, sizes {got}) is not this model coalesced by "
                        f"width {width} and depth {depth} ({type(large).__name__}, sizes {want})")
    small_params = dict(small.named_parameters())
    r, large_layer, large_prefixes, _, small_prefixes, scaled = _pairing(large, small, width)
    out = {}
    for name, p in large.named_parameters():
        source = name
        if name in large_layer:
            j = large_layer[name]
            source = small_prefixes[j // depth] + name[len(large_prefixes[j]):]
        t = _width_map(small_params[source], r[name], width, down=False)
        if name in scaled:
            t = t / width
        out[name] = t.to(p.dtype)
    return out


@torch.no_grad()
def decoalesce(small: nn.Module, large: nn.Module, width: int = 2, depth: int = 2) -> nn.Module:
    """A copy of `large` whose parameters are de-coalesced from `small` (large's own values unused)."""
    out = copy.deepcopy(large)
    interpolate_(out, small, 1.0, width, depth)
    return out


@torch.no_grad()
def interpolate_(large: nn.Module, small: nn.Module, alpha: float, width: int = 2, depth: int = 2) -> nn.Module:
    """In place: large = (1 - alpha) large + alpha de-coalesce(small). alpha 0 leaves large as it is."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise EdgeError(f"alpha must be a number in [0, 1], got {alpha!r}")
    target = decoalesced(small, large, width, depth)
    for name, p in large.named_parameters():
        if alpha == 1:
            p.copy_(target[name])
        elif alpha:
            p.mul_(1 - alpha).add_(target[name], alpha=alpha)
    return large
