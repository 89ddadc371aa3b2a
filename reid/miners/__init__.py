"""Miners: choose informative pairs or triplets in a batch; their index tuples feed any loss."""

from reid.miners.base import BaseMiner
from reid.miners.miners import (
    MINERS,
    AllTripletsMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    PairMarginMiner,
    SemiHardMiner,
    TripletMarginMiner,
    build_miner,
)
from reid.miners.tuples import all_pairs, all_triplets, as_pairs, as_triplets

__all__ = [
    "MINERS",
    "AllTripletsMiner",
    "BaseMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "PairMarginMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
    "all_pairs",
    "all_triplets",
    "as_pairs",
    "as_triplets",
    "build_miner",
]
