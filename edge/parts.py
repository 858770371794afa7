"""What edge adds to a model, in one typed place: the registered transforms (ACM FFNs, exits, skip
routers, a task head, and the ones to come) and, on a model, the parts they installed.

Each transform is one module that registers itself once (`register`): its name (the key in edge.json
and in the model's parts), its config class, how it installs untrained modules on a model (what
`edge.load` calls before reading the weights back) and which transforms must be installed before it.
`edge.save`/`edge.load` loop over the registry; nothing else names the transforms.

On a model, `parts(model)` is the one accessor: the config of every installed transform and the
modules of those that add modules beside the backbone (exit heads, routers, the head), held in ONE
submodule, `model.edge_parts` (so their weights are in the state dict as `edge_parts.NAME.*`). An ACM
replaces the FFN inside its layer instead, and is found there (edge.acm.acm_of).

    >>> import edge
    >>> from edge.parts import parts
    >>> m, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> _ = edge.install_acms(m, edge.AcmConfig(learners=2))
    >>> parts(m).names(), parts(m).config("acm").learners
    (['acm'], 2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from edge.errors import EdgeError
from edge.registry import Registry

ATTRIBUTE = "edge_parts"  # the model's submodule holding its parts


@dataclass(frozen=True)
class Knob:
    """The run-time knob of a transform whose gates take decisions: one input of the exported program
    (a vector, one value per gate), set by a driver to move the budget and by `export.verify` to
    force every branch. Functions of the model that has the transform installed:
    own(model): its value at the model's own setting; full(model): the value that runs the full
    computation past these gates (an exit never taken, a router always running its layer; an ACM's
    own bias: its learners are the computation); cases(model, full): [(case name, value)] that,
    each with the other knobs at full, take every branch of these gates; plan(model): the plan's
    control_flow entries {"knob", "index", ...} under `plan_key`."""

    name: str
    plan_key: str
    own: Callable[[nn.Module], torch.Tensor]
    full: Callable[[nn.Module], torch.Tensor]
    cases: Callable[[nn.Module, torch.Tensor], list[tuple[str, torch.Tensor]]]
    plan: Callable[[nn.Module], list[dict]]


@dataclass(frozen=True)
class Transform:
    """name: the key in edge.json and in a model's parts; config: its config class (to_dict/from_dict);
    install(model, config): attach the transform's untrained modules in place (its weights are then
    loaded or trained); after: transforms that must be installed first (a classifier's exits need its
    head's number of classes); before: transforms that must be installed after it (pruning gives
    the FFNs an ACM is made from their shape); knob: its run-time knob, if its gates take decisions; export_order:
    where its knob comes among the program's knob inputs (and its forcing cases among the checks);
    final: the model is not trained or changed by another transform after it (quantization);
    plan: the plan's entries it adds (e.g. the precision), a function of the model; tolerance:
    (output tolerance, near-tie epsilon) of the checks against eager when it is installed; export_modes:
    the export modes that lower it (export picks one of them, or refuses the model in one line)."""

    name: str
    config: type
    install: Callable[[nn.Module, object], None]
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    knob: Knob | None = None
    export_order: int = 0
    final: bool = False
    plan: Callable[[nn.Module], dict] | None = None
    tolerance: Callable[[nn.Module], tuple[float, float]] | None = None
    export_modes: tuple[str, ...] = ("graph", "routed")


TRANSFORMS: Registry[Transform] = Registry("transform")


def register(transform: Transform) -> Transform:
    return TRANSFORMS.register(transform.name)(transform)


def install_order(names) -> list[str]:
    """`names` in an order where every transform comes after those it must follow."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"transforms {' -> '.join(path + (name,))} must each be installed before the other")
        firsts = [*TRANSFORMS.get(name).after, *(n for n in names if name in TRANSFORMS.get(n).before)]
        for first in firsts:
            if first in names:
                visit(first, path + (name,))
        done.append(name)

    for name in sorted(names):
        visit(name, ())
    return done


def knobs_of(model: nn.Module) -> list[tuple[Transform, Knob]]:
    """The knobs of the transforms installed on `model`, in export order."""
    got = [(t, t.knob) for _, t in TRANSFORMS.items() if t.knob is not None and parts(model).has(t.name)]
    return sorted(got, key=lambda tk: (tk[0].export_order, tk[0].name))


class Parts(nn.Module):
    """The installed transforms of a model: config per name, and the modules some of them add."""

    def __init__(self):
        super().__init__()
        self.configs: dict[str, object] = {}

    def names(self) -> list[str]:
        return sorted(self.configs)

    def has(self, name: str) -> bool:
        return name in self.configs

    def config(self, name: str):
        """The config the transform `name` was installed with (or last set to), or None."""
        return self.configs.get(name)

    def refuse_final(self, what: str) -> None:
        """One clear line when `what` (a step that trains or changes the model) meets a model that has a
        final transform installed (a quantized one)."""
        for name in self.names():
            if TRANSFORMS.get(name).final:
                raise EdgeError(f"this model has {name} installed, which comes last; {what} takes the model "
                                f"before it: apply {name} after every other step")

    def module(self, name: str) -> nn.Module | None:
        """The module the transform `name` added beside the backbone, or None."""
        return self._modules.get(name)

    def set_config(self, name: str, config) -> None:
        TRANSFORMS.get(name)  # (an unknown name raises and lists the known ones)
        if self is _EMPTY:  # (what parts() returns for a model without parts: never written to)
            raise ValueError("a model's parts are made by edge.parts.attach (an install), not through parts()")
        self.configs[name] = config

    def add(self, name: str, config, module: nn.Module | None = None) -> None:
        self.refuse_final(f"adding {name}")
        self.set_config(name, config)
        if module is not None:
            self.add_module(name, module)


_EMPTY = Parts()


def parts(model: nn.Module) -> Parts:
    """The parts installed on `model` (an empty, detached Parts when there are none)."""
    got = model._modules.get(ATTRIBUTE)
    return got if got is not None else _EMPTY


def attach(model: nn.Module) -> Parts:
    """The model's parts, made (and attached) on first use: what an install calls."""
    got = model._modules.get(ATTRIBUTE)
    if got is None:
        got = Parts()
        model.add_module(ATTRIBUTE, got)
    return got
