"""P x K identity sampling: each batch holds P identities with K images each (triplet-style losses need it)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ConfigError, DatasetError


class PKSampler(Sampler[int]):
    """Yields flat indices, batch after batch of ``p * k``; use with ``DataLoader(batch_size=p*k, drop_last=True)``.

    An epoch visits each identity about ``ceil(n_images / k)`` times, like torchreid's RandomIdentitySampler.
    Identities with fewer than ``k`` images are drawn with replacement. The order depends only on
    ``(seed, epoch)``, so ``set_epoch`` + ``state_dict`` make a resumed run continue the same sequence.
    For DDP pass ``num_replicas`` and ``rank``: each rank gets every ``num_replicas``-th batch.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if p < 1 or k < 1:
            raise ConfigError(f"sampler: p and k must be >= 1, got p={p}, k={k}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.index_by_pid: dict[int, np.ndarray] = {}
        groups: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(self.labels.tolist()):
            groups[label].append(i)
        self.index_by_pid = {pid: np.asarray(ix) for pid, ix in sorted(groups.items())}
        if len(self.index_by_pid) < p:
            raise DatasetError(
                f"sampler: P={p} identities per batch but the training set has only {len(self.index_by_pid)}"
            )
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._batches_done = 0  # batches already consumed in this epoch (for exact resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches_done = 0

    def _epoch_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        # Chunks of k images per identity: every image used once per epoch (fewer than k: with replacement).
        chunks: dict[int, list[np.ndarray]] = {}
        for pid, ix in self.index_by_pid.items():
            ix = rng.permutation(ix)
            if len(ix) < self.k:
                ix = rng.choice(ix, size=self.k, replace=True)
            n = len(ix) // self.k
            chunks[pid] = [ix[i * self.k : (i + 1) * self.k] for i in range(n)]
        batches = []
        available = [pid for pid in chunks if chunks[pid]]
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            pids = [available[c] for c in chosen]
            batches.append(np.concatenate([chunks[pid].pop() for pid in pids]))
            available = [pid for pid in available if chunks[pid]]
        # every rank must take the same number of steps (DDP all-reduces each one): drop the remainder
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[:usable][self.rank :: self.num_replicas]

    def num_batches(self) -> int:
        return len(self._epoch_batches())

    def __iter__(self) -> Iterator[int]:
        batches = self._epoch_batches()
        start = self._batches_done
        for b in batches[start:]:
            self._batches_done += 1
            yield from b.tolist()
        self._batches_done = 0

    def __len__(self) -> int:
        return self.num_batches() * self.p * self.k

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._batches_done = int(state.get("batches_done", 0))
