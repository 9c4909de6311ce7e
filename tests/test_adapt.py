"""Adapting to the machine found: bf16 only where it is native, and a demo sized to keep its time."""
from types import SimpleNamespace

import pytest

from effscale import EffscaleError, Family
from effscale.families import register
from effscale.search import sizing
from effscale.search.proxy import BUDGETS, get_budget


def test_a_budget_with_steps_keeps_everything_else():
    sized = get_budget("quick@40")
    assert sized.steps == 40 and sized.name == "quick@40" and sized.batch_size == BUDGETS["quick"].batch_size
    assert get_budget("quick") is BUDGETS["quick"]
    for bad, message in (("quick@", None), ("quick@x", "whole number"), ("quick@0", "whole number"),
                         ("quik@40", "did you mean quick")):
        if message is None:
            assert get_budget(bad) is BUDGETS["quick"]  # 'quick@' names the plain budget
            continue
        with pytest.raises(EffscaleError, match=message):
            get_budget(bad)


class _Cost:
    def __init__(self, macs):
        self.macs = macs


class _Spec:
    """A base whose MACs scale by d * w^2 * r^2, as a real MBConv network's do (up to rounding)."""

    kind = "toy-macs"

    def __init__(self, macs=1e6):
        self.macs = macs

    def scaled(self, coefficients):
        return _Spec(self.macs * coefficients.flops_factor)

    def analytic_cost(self, **kwargs):
        return _Cost(self.macs)


# A family for the toy spec: sizing scales and counts through the spec's family, as for real ones.
register(Family(kind=_Spec.kind, spec_type=_Spec, scale=lambda spec, coefficients, **_: spec.scaled(coefficients),
                build=None, cost=lambda spec, **options: spec.analytic_cost(**options), from_text=None,
                text_tag="toy-macs", names=list, get=None, default_num_classes=10, default_in_chans=1))

TASK = SimpleNamespace(num_classes=10, in_chans=1, test=([0] * 2000, None), minival=([0] * 2000, None))


@pytest.fixture
def step_time(monkeypatch):
    """A machine where a training step takes `base` s for the base and 4x that for 4x the MACs."""
    machine = SimpleNamespace(base=0.01)
    monkeypatch.setattr(sizing, "_step_seconds", lambda spec, task, budget: machine.base * spec.macs / 1e6)
    return machine


def test_a_fast_machine_keeps_the_defaults(step_time):
    result = sizing.size_demo(_Spec(), TASK, budget_name="quick", targets=(2, 4, 8), seeds=1, search_points=6,
                              time_budget_s=600)
    assert result.budget == "quick" and result.targets == (2, 4, 8) and result.notes == ()
    assert result.estimated_s < 600


def test_a_slow_machine_scales_steps_then_targets_down_and_says_so(step_time):
    step_time.base = 0.15  # a few times slower: fewer steps suffice
    fewer = sizing.size_demo(_Spec(), TASK, budget_name="quick", targets=(2, 4, 8), seeds=1, search_points=6,
                             time_budget_s=600)
    steps = get_budget(fewer.budget).steps
    assert sizing.MIN_STEPS <= steps < 100 and fewer.targets == (2, 4, 8) and fewer.estimated_s <= 600
    assert fewer.notes == (f"proxy steps 100 -> {steps}",)
    step_time.base = 0.6  # far slower: the 8x target goes too
    smaller = sizing.size_demo(_Spec(), TASK, budget_name="quick", targets=(2, 4, 8), seeds=1, search_points=6,
                               time_budget_s=600)
    assert smaller.targets in ((2,), (2, 4)) and smaller.notes[0].startswith("targets 2,4,8 -> ")
    assert smaller.estimated_s <= 600


def test_each_dimension_is_timed_on_its_own(monkeypatch):
    # Depth-scaled models cost more per MAC (more, smaller layers): the estimate must see it.
    def step_seconds(spec, task, budget):
        return 0.01 * spec.macs / 1e6 * (2.0 if spec.deep else 1.0)

    class Deep(_Spec):
        deep = False

        def scaled(self, coefficients):
            child = Deep(self.macs * coefficients.flops_factor)
            child.deep = coefficients.depth > 1
            return child

    monkeypatch.setattr(sizing, "_step_seconds", step_seconds)
    result = sizing.size_demo(Deep(), TASK, budget_name="quick", targets=(2,), seeds=1, search_points=0,
                              time_budget_s=1e6)
    assert result.step_s["depth"] == pytest.approx(2 * result.step_s["width"])
    uniform = sizing.estimate_seconds(100, [("width", 2.0)], lambda s, r: 0.01 * r, get_budget("quick"), 2000)
    deep = sizing.estimate_seconds(100, [("depth", 2.0)], lambda s, r: 0.01 * r * (2 if s == "depth" else 1),
                                   get_budget("quick"), 2000)
    assert deep == pytest.approx(2 * uniform)


def test_a_hopeless_budget_says_it_is_over(step_time):
    step_time.base = 10.0
    result = sizing.size_demo(_Spec(), TASK, budget_name="short", targets=(2, 4), seeds=1, search_points=4,
                              time_budget_s=60)
    assert result.targets == (2,) and get_budget(result.budget).steps == sizing.MIN_STEPS
    assert "over the 60 s budget" in result.notes[-1]
    with pytest.raises(EffscaleError, match="time budget 0 s must be > 0"):
        sizing.size_demo(_Spec(), TASK, budget_name="short", targets=(2,), seeds=1, search_points=4, time_budget_s=0)


# -- precision -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it(monkeypatch, native):
    import torch

    from effscale.nn import inference
    from effscale.nn.inference import prepare_for_inference
    from effscale.train.recipe import paper_recipe, resolve_precision
    from effscale import create_model, get_spec

    monkeypatch.setattr(inference, "native_bf16", lambda: native)
    assert paper_recipe(get_spec("efficientnet_b0")).precision == "auto"
    chosen, why = resolve_precision("auto", "cpu")
    assert chosen == ("bf16" if native else "fp32") and why.startswith("auto: this CPU")
    assert ("has no native bf16" in why) is not native
    assert resolve_precision("bf16", "cpu") == ("bf16", "as requested")
    model = prepare_for_inference(create_model("efficientnet_lite0", num_classes=3), bf16="auto")
    assert next(model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
