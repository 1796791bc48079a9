"""The champion's reasons: per-feature contributions to each score, with the probability from the same pass.

``Explainer`` gives them for the scoring service: XGBoost's approximate (Saabas) path attributions, ~5x
cheaper than exact TreeSHAP and as good for ranking reasons (``FRAUD_EXACT_SHAP=1``: TreeSHAP); for a few
rows, ``PathContributions`` computes the same numbers with numpy from the booster's own tree arrays.

The same numbers as ``booster.predict(DMatrix(x), pred_contribs=True, approx_contribs=True)``, without the
DMatrix: building one costs more than the rest of a one-transaction scoring. Saabas' attribution of a row is
fixed by the leaf it reaches in each tree: along the root-to-leaf path, every split's feature gets the change
of the node's cover-weighted mean value (XGBoost's ``CalculateContributionsApprox``). So ``from_booster``
tabulates, for every node, the contributions accumulated from its tree's root down to it, and a row only
walks to its leaves (every tree at once, one level per step) and adds up their rows of that table. The bias
column holds the base margin plus the roots' means, so a row sums to the margin, and the probability is its
sigmoid.

Only for numeric splits; ``from_booster`` returns None for anything else (categorical splits, vector
leaves), and the caller keeps XGBoost's own path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from ml.champion import Champion

# Up to this many rows, numpy's walk of the trees is faster than building a DMatrix for XGBoost's own call;
# from a few hundred rows on, XGBoost wins (docs/adr/0007).
PATHS_UP_TO = 128


@dataclass(frozen=True)
class Explainer:
    """Probabilities and reasons for rows of the champion's feature matrix (columns in its order)."""

    champion: Champion
    exact: bool = False  # exact TreeSHAP instead of Saabas' path attributions
    logistic: bool = False  # binary:logistic: probability = sigmoid(margin)
    paths: PathContributions | None = None  # the same Saabas contributions without a DMatrix (few rows)

    @classmethod
    def of(cls, champion: Champion, exact: bool = False) -> Explainer:
        booster = champion.booster
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        return cls(champion, exact, objective == "binary:logistic",
                   None if exact else PathContributions.from_booster(booster))

    def predict_explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and per-feature contributions (log-odds, bias dropped), from one pass: building a
        DMatrix costs more than a one-row prediction, so both share it."""
        if self.paths is not None and len(x) <= PATHS_UP_TO:
            return self.paths.predict_explain(x)
        booster = self.champion.booster
        dm = xgb.DMatrix(x, nthread=1)
        contribs = booster.predict(dm, pred_contribs=True, approx_contribs=not self.exact, validate_features=False)
        if self.logistic:  # contributions plus bias add up to the margin: no second pass over the trees
            proba = 1.0 / (1.0 + np.exp(-contribs.sum(axis=1, dtype=np.float64)))
        else:
            proba = np.asarray(booster.predict(dm, validate_features=False), np.float64).reshape(-1)
        return proba, contribs[:, :-1]

    def warm_up(self) -> None:
        """A few predictions before serving: the first ones allocate XGBoost's caches."""
        x = np.zeros((1, len(self.champion.feature_names)))
        for _ in range(3):
            self.champion.predict(x)
            self.predict_explain(x)


class PathContributions:
    def __init__(self, feature: np.ndarray, threshold: np.ndarray, children: np.ndarray,
                 missing: np.ndarray, path_contrib: np.ndarray, roots: np.ndarray, bias: float, depth: int):
        # feature: split feature per node, n_features (the padding column of the walk) at a leaf;
        # children: (nodes, 2) left and right child ids, a leaf pointing at itself, so extra steps keep it.
        self.feature, self.threshold, self.missing = feature, threshold, missing
        self.children_flat = children.ravel()  # left of node i at 2i, right at 2i + 1
        # (nodes, features + 1) floats: the demo champion (86 trees) takes 1.4 MB.
        self.path_contrib, self.roots, self.bias, self.depth = path_contrib, roots, bias, depth
        self.n_features = path_contrib.shape[1] - 1

    @classmethod
    def from_booster(cls, booster: xgb.Booster) -> PathContributions | None:
        model = json.loads(booster.save_raw("json"))["learner"]
        params = model["learner_model_param"]
        if model["objective"]["name"] != "binary:logistic" or int(params.get("num_target", "1")) != 1:
            return None
        base_score = float(str(params["base_score"]).strip("[]"))
        nf = int(params["num_feature"])
        cols: dict[str, list] = {k: [] for k in ("feature", "threshold", "children", "missing", "contrib")}
        roots, depth, offset, root_means = [], 0, 0, 0.0
        for tree in model["gradient_booster"]["model"]["trees"]:
            categorical = any(int(t) != 0 for t in tree.get("split_type", []))
            if categorical or int(tree["tree_param"]["size_leaf_vector"]) > 1:
                return None
            left, right = np.array(tree["left_children"]), np.array(tree["right_children"])
            cond = np.array(tree["split_conditions"], np.float32)
            leaf = left == -1
            feature = np.where(leaf, nf, np.array(tree["split_indices"]))
            mean = _node_means(left, right, cond, np.array(tree["sum_hessian"], np.float64))
            own = np.arange(len(left))
            lc, rc = np.where(leaf, own, left), np.where(leaf, own, right)
            default_left = np.array(tree["default_left"], bool)
            cols["feature"].append(feature)
            cols["threshold"].append(cond)
            cols["children"].append(np.stack([lc, rc], axis=1) + offset)
            cols["missing"].append(np.where(default_left, lc, rc) + offset)
            cols["contrib"].append(_path_contributions(lc, rc, feature, mean, nf))
            roots.append(offset)
            root_means += float(mean[0])
            depth = max(depth, _depth(left, right))
            offset += len(left)
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        bias = math.log(base_score / (1 - base_score)) + root_means
        return cls(cat["feature"], cat["threshold"], cat["children"], cat["missing"], cat["contrib"],
                   np.array(roots), bias, depth)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """(rows, trees): the leaf each row reaches in each tree (global node ids)."""
        n = len(x)
        # float32: XGBoost compares float32 values with float32 thresholds. One padding column, read at
        # leaves (feature == n_features), so that every step is the same few array operations.
        xf = np.zeros((n, self.n_features + 1), np.float32)
        xf[:, :-1] = x
        flat = xf.ravel()
        feature, threshold, children = self.feature, self.threshold, self.children_flat
        node = np.empty((n, len(self.roots)), np.int64)
        node[:] = self.roots
        start = (np.arange(n) * (self.n_features + 1))[:, None]
        nan = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            v = flat[feature[node] + start]
            nxt = children[(node << 1) + (v >= threshold[node])]
            node = np.where(np.isnan(v), self.missing[node], nxt) if nan else nxt
        return node

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(rows, features + 1): per-feature contributions to the log-odds, then the bias column."""
        leaves = self.leaves(x)
        out = self.path_contrib.take(leaves.ravel(), axis=0).reshape(*leaves.shape, -1).sum(axis=1)
        out[:, -1] += self.bias
        return out

    def predict_explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and the per-feature contributions (bias dropped)."""
        contribs = self.contributions(x)
        return 1.0 / (1.0 + np.exp(-contribs.sum(axis=1))), contribs[:, :-1]


def _path_contributions(left: np.ndarray, right: np.ndarray, feature: np.ndarray, mean: np.ndarray,
                        nf: int) -> np.ndarray:
    """(nodes, nf + 1): per node, what the splits from the root down to it attribute to each feature."""
    out = np.zeros((len(left), nf + 1))
    stack = [0]
    while stack:  # parents before children
        nid = stack.pop()
        if feature[nid] == nf:
            continue
        for child in (int(left[nid]), int(right[nid])):
            out[child] = out[nid]
            out[child, feature[nid]] += mean[child] - mean[nid]
            stack.append(child)
    return out
def _node_means(left: np.ndarray, right: np.ndarray, cond: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Each node's cover-weighted mean leaf value (a leaf: its value), children before parents."""
    mean = np.where(left == -1, cond.astype(np.float64), 0.0)
    for nid in _post_order(left, right):
        if left[nid] != -1:
            mean[nid] = (mean[left[nid]] * hess[left[nid]] + mean[right[nid]] * hess[right[nid]]) / hess[nid]
    return mean


def _post_order(left: np.ndarray, right: np.ndarray) -> list[int]:
    order, stack = [], [(0, False)]
    while stack:
        nid, done = stack.pop()
        if done or left[nid] == -1:
            order.append(nid)
            continue
        stack += [(nid, True), (int(right[nid]), False), (int(left[nid]), False)]
    return order


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, stack = 0, [(0, 0)]
    while stack:
        nid, d = stack.pop()
        if left[nid] == -1:
            depth = max(depth, d)
        else:
            stack += [(int(left[nid]), d + 1), (int(right[nid]), d + 1)]
    return depth
