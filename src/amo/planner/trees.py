"""The planner's trees as plain JSON-ready arrays: grown with scikit-learn, walked directly (a leaf
per row, the tests along the way as rules), checked when loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TREE_KEYS = ("left", "right", "feature", "threshold", "value")


class PlannerFormatError(ValueError):
    """A planner file that is not a whole, consistent planner."""


def grow(x: np.ndarray, y: np.ndarray, max_depth: int, min_samples_leaf: int, seed: int) -> dict[str, list]:
    """A fitted binary tree as plain arrays; `value` is the share of positive rows in a node."""
    from sklearn.tree import DecisionTreeClassifier

    if len(x) == 0 or len(set(y.tolist())) < 2:
        return {"left": [-1], "right": [-1], "feature": [0], "threshold": [0.0],
                "value": [float(y.mean()) if len(y) else 0.0]}
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                  random_state=seed).fit(x, y.astype(int)).tree_
    value = tree.value[:, 0, :]
    return {"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
            "feature": [max(int(f), 0) for f in tree.feature], "threshold": tree.threshold.tolist(),
            "value": (value[:, 1] / value.sum(axis=1)).tolist()}


def leaf(tree: Mapping[str, list], x: Sequence[float]) -> int:
    """The leaf that row x falls into (plain lists: faster than numpy for a dozen rows)."""
    left, right, feature, threshold = tree["left"], tree["right"], tree["feature"], tree["threshold"]
    node = 0
    while left[node] != -1:
        node = left[node] if x[feature[node]] <= threshold[node] else right[node]
    return node


def rules(tree: Mapping[str, list], names: Sequence[str], x: Sequence[float]) -> list[str]:
    """The tests row x passes on its way to its leaf, as `name = value <= threshold` lines."""
    node, found = 0, []
    while tree["left"][node] != -1:
        feature, threshold = tree["feature"][node], tree["threshold"][node]
        if x[feature] <= threshold:
            found.append(f"{names[feature]} = {x[feature]:.4g} <= {threshold:.4g}")
            node = tree["left"][node]
        else:
            found.append(f"{names[feature]} = {x[feature]:.4g} > {threshold:.4g}")
            node = tree["right"][node]
    return found


def tree_from_dict(data: Mapping[str, Any]) -> dict[str, list[Any]]:
    """A tree's arrays from its JSON object (which also holds its `features`)."""
    return {k: list(data[k]) for k in TREE_KEYS}


def tree_to_dict(tree: Mapping[str, list[Any]], features: Sequence[str]) -> dict[str, list[Any]]:
    """A tree's JSON object: its features, then its arrays."""
    return {"features": list(features), **{k: list(v) for k, v in tree.items()}}


def check_tree(name: str, tree: Mapping[str, list], n_features: int) -> None:
    """Raise PlannerFormatError unless `tree`'s arrays make one tree over `n_features` features
    whose values are probabilities."""
    nodes = len(tree["left"])
    if not nodes or any(len(tree[k]) != nodes for k in TREE_KEYS):
        raise PlannerFormatError(f"{name}: arrays differ in length")
    for node in range(nodes):
        left, right = tree["left"][node], tree["right"][node]
        if not 0.0 <= float(tree["value"][node]) <= 1.0:
            raise PlannerFormatError(f"{name} node {node}: value is not a probability")
        if left == -1 and right == -1:
            continue
        if not (node < left < nodes and node < right < nodes
                and 0 <= tree["feature"][node] < n_features
                and np.isfinite(float(tree["threshold"][node]))):
            raise PlannerFormatError(f"{name} node {node}: child, feature or threshold out of range")
