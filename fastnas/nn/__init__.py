"""Networks: candidate ops, the fused partial-channel mixed op, search cells and supernets.

Depends on ``fastnas.ops`` and ``fastnas.spaces`` only (never on the search loop or the proxies).
"""
from fastnas.nn.mixed import PartialChannelMixedOp
from fastnas.nn.operations import (OPS, NB201_OPS, DilConv, FactorizedReduce, Identity, ReLUConvBN, ResNetBasicblock,
                                   SepConv, Zero, nb201_op, search_op)
from fastnas.nn.networks import Cell, NB201Network, NetworkCIFAR, drop_path
from fastnas.nn.search_cells import DartsSearchCell, NB201SearchCell
from fastnas.nn.search_network import SearchNetwork, node_softmax
from fastnas.nn.broad import BroadSearchNetwork, bnas_genotype

__all__ = [
    "OPS", "NB201_OPS", "ReLUConvBN", "DilConv", "SepConv", "Identity", "Zero", "FactorizedReduce",
    "ResNetBasicblock", "search_op", "nb201_op", "PartialChannelMixedOp", "DartsSearchCell", "NB201SearchCell",
    "SearchNetwork", "BroadSearchNetwork", "bnas_genotype", "node_softmax", "NetworkCIFAR", "Cell", "NB201Network", "drop_path",
]
