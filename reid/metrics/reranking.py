"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and query expansion."""

from __future__ import annotations

import numpy as np


def k_reciprocal_rerank(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-rank a query x gallery distance matrix with k-reciprocal encoding.

    Follows the paper: distances are scaled per column by their maximum, the k-reciprocal set of each probe is
    expanded with the (k1/2)-reciprocal sets of its members that overlap it by more than 2/3, Gaussian-kernel
    weights form sparse vectors V, local query expansion averages V over the k2 nearest neighbours, the
    Jaccard distance between V vectors is combined with the original distance:
    ``d* = (1 - lambda) * d_J + lambda * d``.
    """
    q_g, q_q, g_g = (np.asarray(a, dtype=np.float32) for a in (q_g, q_q, g_g))
    num_q, num_g = q_g.shape
    num_all = num_q + num_g
    original = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
    original = np.power(original, 2).astype(np.float32)
    original = (original / np.max(original, axis=0)).T
    V = np.zeros_like(original, dtype=np.float32)
    initial_rank = np.argsort(original, axis=1).astype(np.int32)

    for i in range(num_all):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_recip = forward[np.where(backward == i)[0]]
        expansion = k_recip
        for cand in k_recip:
            c_forward = initial_rank[cand, : int(np.around(k1 / 2)) + 1]
            c_backward = initial_rank[c_forward, : int(np.around(k1 / 2)) + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, k_recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)

    original = original[:num_q]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(num_all):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(num_all)]
    jaccard = np.zeros((num_q, num_all), dtype=np.float32)
    for i in range(num_q):
        temp_min = np.zeros(num_all, dtype=np.float32)
        nonzero = np.where(V[i] != 0)[0]
        for j in nonzero:
            rows = inv_index[j]
            temp_min[rows] += np.minimum(V[i, j], V[rows, j])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, num_q:]


def query_expansion(
    query: np.ndarray, gallery: np.ndarray, top_k: int = 5, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Average query expansion (alpha=0) or alpha-QE (Radenović et al.) with cosine similarity.

    Each query is replaced by the normalised weighted sum of itself and its ``top_k`` nearest gallery features,
    weights ``sim ** alpha`` (alpha=0: plain average). Inputs are L2-normalised first; gallery is unchanged.
    """
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    sims = q @ g.T
    k = min(top_k, g.shape[0])
    top = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
    w = np.take_along_axis(sims, top, axis=1).clip(min=0.0) ** alpha if alpha > 0 else np.ones(top.shape)
    expanded = q + np.einsum("qk,qkd->qd", w, g[top])
    expanded /= np.maximum(np.linalg.norm(expanded, axis=1, keepdims=True), 1e-12)
    return expanded.astype(np.float32), g.astype(np.float32)


def query_gallery_distances(
    qf: np.ndarray, gf: np.ndarray, metric: str = "cosine", rerank: bool = False
) -> np.ndarray:
    """The query x gallery distance matrix an evaluation ranks: plain, or k-reciprocal re-ranked."""
    from reid.metrics.distance import compute_distance_matrix

    dm = compute_distance_matrix(qf, gf, metric)
    if rerank:
        dm = k_reciprocal_rerank(
            dm, compute_distance_matrix(qf, qf, metric), compute_distance_matrix(gf, gf, metric)
        )
    return dm
