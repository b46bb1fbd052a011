"""The side-by-side evaluation rules the router benchmarks share: one margin rule for every
system, tuned on val, and the test-set ceilings that say whether any threshold could reach a
target."""

import numpy as np
import pytest

from amo.benchmarking import ceilings, routing_metrics, tune_margin
from amo.data import Agent, RoutingExample

AGENTS = [Agent("balance", "check an account balance", "banking"),
          Agent("weather", "the weather forecast", "travel")]
# Columns: balance, weather, separator. Leads over the separator: 2.0, 1.0, 0.3, 0.2, 1.5.
SCORES = np.array([[2.0, 0.0, 0.0],    # balance, right
                   [0.5, 1.0, 0.0],    # balance, routed to weather: wrong
                   [0.0, 0.3, 0.0],    # weather, right
                   [0.2, 0.0, 0.0],    # out of scope, weak lead
                   [1.5, 0.0, 0.0]],   # out of scope, strong lead
                  dtype=np.float32)
EXAMPLES = [RoutingExample("what is my balance", {"balance": 1}),
            RoutingExample("how much money do i have", {"balance": 1}),
            RoutingExample("will it rain", {"weather": 1}),
            RoutingExample("tell me a joke", {}),
            RoutingExample("balance my diet", {})]


def test_margin_abstains_on_leads_at_or_below_it():
    metrics = routing_metrics(SCORES, EXAMPLES, AGENTS, margin=0.2)
    assert metrics["oos_recall"] == 0.5  # "tell me a joke" abstains, "balance my diet" does not
    assert metrics["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert metrics["oos_precision"] == 1.0


def test_tuned_margin_meets_the_recall_floor_at_the_least_accuracy_cost():
    margin = tune_margin(SCORES, EXAMPLES, AGENTS)  # floor 0.70: both OOS prompts must abstain
    metrics = routing_metrics(SCORES, EXAMPLES, AGENTS, margin)
    assert metrics["oos_recall"] == 1.0
    assert metrics["in_scope_accuracy"] == pytest.approx(1 / 3)
    assert 1.5 <= margin < 2.0  # between the strong OOS lead and the best in-scope lead


def test_ceilings_bound_every_threshold_rule():
    loose = ceilings(SCORES, EXAMPLES, AGENTS, min_oos_recall=0.5)
    assert loose["top1_accuracy"] == pytest.approx(2 / 3)  # never abstaining
    assert loose["oracle_in_scope_accuracy"] == pytest.approx(2 / 3)
    assert loose["oracle_oos_recall"] == 0.5
    strict = ceilings(SCORES, EXAMPLES, AGENTS, min_oos_recall=1.0)
    assert strict["oracle_in_scope_accuracy"] == pytest.approx(1 / 3)
    assert strict["oracle_oos_recall"] == 1.0


def test_ceilings_refuse_data_without_out_of_scope_prompts():
    with pytest.raises(ValueError, match="out-of-scope"):
        ceilings(SCORES[:3], EXAMPLES[:3], AGENTS)


def test_benchmark_and_pipeline_count_a_multi_label_hit_alike():
    """One definition (amo.metrics): any agent of the prompt's top grade is a hit, not only the
    first label; the benchmarks once counted the first label only and under-counted multi-label
    data sets."""
    from amo.metrics import router_metrics
    from amo.routing import select

    both = [RoutingExample("balance and forecast", {"balance": 1, "weather": 1})]
    scores = np.array([[0.5, 1.0, 0.0]], dtype=np.float32)  # weather first: a top-graded agent
    metrics = routing_metrics(scores, both, AGENTS, margin=0.0)
    assert metrics["in_scope_accuracy"] == 1.0
    pipeline = router_metrics([select(scores[0], ["balance", "weather"], min_k=0, max_k=1, margin=0.0)], both,
                              [["weather", "balance"]])
    assert {k: metrics[k] for k in pipeline} == pipeline
