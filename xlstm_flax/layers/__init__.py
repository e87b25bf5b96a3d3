"""Layers of the xLSTM model: mLSTM (xLSTM-7B and paper variants), sLSTM, gated FFN, norms, conv."""

from .config import FFNConfig, mLSTMLayerConfig, sLSTMLayerConfig
from .conv import CausalConv1d
from .ffn import GatedFFN
from .headwise import HeadwiseLinear
from .mlstm import mLSTMLayer
from .mlstm_cell import mLSTMState
from .mlstm_paper import mLSTMPaperLayer, mLSTMPaperState
from .norms import MultiHeadNorm, Norm, make_norm
from .slstm import sLSTMLayer, sLSTMState

__all__ = [
    "CausalConv1d",
    "FFNConfig",
    "GatedFFN",
    "HeadwiseLinear",
    "MultiHeadNorm",
    "Norm",
    "make_norm",
    "mLSTMLayer",
    "mLSTMLayerConfig",
    "mLSTMPaperLayer",
    "mLSTMPaperState",
    "mLSTMState",
    "sLSTMLayer",
    "sLSTMLayerConfig",
    "sLSTMState",
]
