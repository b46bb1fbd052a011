"""The planner: decision trees, fitted on end-to-end traces, that pick the ordered agent path.

A path is first decoded step by step. At each step the *stop tree* decides whether the path ends here,
from prompt-level features (a PCA reduction of the prompt embedding, text cues, the router's
separator and how many agents are above it and not yet run, what ran so far). If it goes on, the
*next tree* scores each candidate agent on agent-agnostic features: the candidate's router score,
rank and gap to the separator, whether and how often it already ran, how often it followed the
previous agent (and the last two) in the training traces, where the prompt mentions its name,
and, with `neighbours > 0`, how the paths of the most similar training prompts vote for it. The
best-scoring candidate runs next. No feature is tied to a fixed agent list, so an agent that no
training trace contains is planned through its router score, and any ordered path can be
composed, seen or not.

With `rerank_neighbours > 0` the decoded path is one candidate among the whole paths of the most
similar training prompts, and a third tree, the *rerank tree*, picks the plan among them from
path-level, agent-agnostic features: whether the decoder produced it, how many neighbours share
it and how similar the first of them is, the router margins of its agents, the decoder's own
probabilities along it (the stop and next trees scoring each step), transition counts along it,
how often the path occurs in training and whether the prompt names its agents in that order.
Decoding keeps unseen paths reachable; the neighbours' paths recover whole paths that step-by-step
decoding loses.

Transition counts and neighbour votes used as features for the training rows are cross-fitted
(taken from the other folds), so the trees do not learn to trust statistics that include the
row's own trace; the rerank tree's training rows come from stop and next trees fitted without
the row's fold.

All trees are saved as plain JSON (thresholds, features, leaves), never pickle; prediction walks
the arrays directly, so a plan costs well under a millisecond and every decision prints as rules.

The parts: `amo.planner.features` (a prompt's inputs and the trees' feature rows, each built by
feature name), `amo.planner.trees` (growing, walking and checking the JSON trees) and
`amo.planner.estimator` (`TreePlanner`: fit, decode, rerank, plan, explain, JSON I/O).
"""

from amo.planner.estimator import FORMAT_VERSION, KIND, LOG_FLOOR, PLANNER_FILE, Plan, TreePlanner
from amo.planner.features import (
    MISSING_SCORE,
    NEXT_FEATURES,
    NO_MENTION,
    RERANK_FEATURES,
    START,
    STOP,
    STOP_FEATURES,
    TEXT_FEATURE_NAMES,
    name_tokens,
    text_features,
)
from amo.planner.trees import PlannerFormatError

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "LOG_FLOOR",
    "MISSING_SCORE",
    "NEXT_FEATURES",
    "NO_MENTION",
    "PLANNER_FILE",
    "RERANK_FEATURES",
    "START",
    "STOP",
    "STOP_FEATURES",
    "TEXT_FEATURE_NAMES",
    "Plan",
    "PlannerFormatError",
    "TreePlanner",
    "name_tokens",
    "text_features",
]
