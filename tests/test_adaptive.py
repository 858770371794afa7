"""What every adaptive FFN kind (edge.adaptive: ACM, sigma-MoE in both modes) must do, on tiny random
models of every registered architecture."""
from dataclasses import replace

import pytest
import torch

from edge.moe import MoeConfig
from tests.conftest import CASES
from tests.test_acm import SMALL, tiny_acm_model
from tests.test_moe import tiny_moe_model


def _acm(exact_top):
    return lambda name, mt: tiny_acm_model(name, mt, replace(SMALL, learners=4, exact_top=exact_top))


def _moe(mode):
    def make(name, mt):
        arch, model, _, batch, moes = tiny_moe_model(
            name, mt, MoeConfig(experts=4, router_hidden=8, mode=mode, expert_dropout=0.3))
        return arch, model, batch, moes
    return make


# kind: (a tiny model with 4 units per FFN, knob values from none to all, how many of 1..3 must occur)
KINDS = {
    "acm": (_acm(False), (-1e4, -0.5, 0.0, 0.5, 1e4), 2),
    "acm-exact-top": (_acm(True), (-1e4, -0.5, 0.0, 0.5, 1e4), 2),
    "moe-adaptive": (_moe("adaptive"), (-1e4, -1.0, 0.0, 1.0, 1e4), 2),
    "moe-topk": (_moe("topk"), range(5), 3),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,mt", CASES)
def test_skipping_equals_dense_masked(name, mt, kind):
    make, knobs, middle = KINDS[kind]
    arch, model, batch, modules = make(name, mt)
    seen = set()
    for value in knobs:
        for m in modules:
            m.set_knob_(value)
            m.dense = False
        with torch.no_grad():  # (no expert dropout outside training)
            skipping = arch.output(model, batch)
            k_skip = [m.last_k.clone() for m in modules]
            for m in modules:
                m.dense = True
            dense = arch.output(model, batch)
        assert all(torch.equal(m.last_k, k) for m, k in zip(modules, k_skip))
        torch.testing.assert_close(skipping, dense, atol=1e-5, rtol=1e-5)
        seen |= set(torch.cat([k.flatten() for k in k_skip]).tolist())
    assert {0, 4} <= seen and len(seen & {1, 2, 3}) >= middle, f"unit counts {seen}"
