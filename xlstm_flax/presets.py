"""Named model configurations: "tiny" (a CPU demo with a byte-level vocabulary) and four sizes built
from xLSTM-7B-style blocks (mLSTM layer + gated FFN). "7b" is the published xLSTM-7B architecture.
"<size>-xlstm71" (125m, 350m, 1.3b) are the paper's xLSTM[7:1] mix of the same model: an sLSTM block
(4 heads, causal conv of 4, as in the paper) at one position in eight (3, 11, 19, ...).

Parameter counts (see tests/model/test_presets.py): tiny ~0.9M, 125m ~125M, 350m ~355M,
1.3b ~1.32B, 7b ~6.87B (untied embeddings, as published).
"""

import dataclasses

from .layers.config import mLSTMLayerConfig, sLSTMLayerConfig
from .model_config import xLSTMLMConfig
from .vocab import BYTE_VOCAB_SIZE

GPT2_PADDED_VOCAB_SIZE = 50304
SLSTM_EVERY, SLSTM_FIRST = 8, 3  # xLSTM[7:1]: sLSTM at blocks 3, 11, 19, ...


def _mlstm_ffn_model(embedding_dim: int, num_blocks: int, num_heads: int, *, tie_embeddings: bool) -> xLSTMLMConfig:
    """An xLSTM-7B-style model (mLSTM + gated FFN in every block) with a GPT-2-sized vocabulary."""
    return xLSTMLMConfig(
        vocab_size=GPT2_PADDED_VOCAB_SIZE,
        embedding_dim=embedding_dim,
        num_blocks=num_blocks,
        mlstm=mLSTMLayerConfig(num_heads=num_heads),
        tie_embeddings=tie_embeddings,
    )


def xlstm71(config: xLSTMLMConfig) -> xLSTMLMConfig:
    """``config`` with an sLSTM block (the paper's layer: 4 heads, conv 4) at one position in eight."""
    return dataclasses.replace(
        config,
        slstm_at=tuple(range(SLSTM_FIRST, config.num_blocks, SLSTM_EVERY)),
        slstm=sLSTMLayerConfig(num_heads=4, conv_kernel_size=4),
    )


PRESETS: dict[str, xLSTMLMConfig] = {
    "tiny": xLSTMLMConfig(
        vocab_size=BYTE_VOCAB_SIZE,
        embedding_dim=128,
        num_blocks=4,
        slstm_at=(1,),
        mlstm=mLSTMLayerConfig(num_heads=4),
        slstm=sLSTMLayerConfig(num_heads=4),
        tie_embeddings=True,
    ),
    "125m": _mlstm_ffn_model(768, 12, 4, tie_embeddings=True),
    "350m": _mlstm_ffn_model(1024, 24, 4, tie_embeddings=True),
    "1.3b": _mlstm_ffn_model(2048, 24, 8, tie_embeddings=True),
    "7b": _mlstm_ffn_model(4096, 32, 8, tie_embeddings=False),  # as published: untied
}
PRESETS.update({f"{size}-xlstm71": xlstm71(PRESETS[size]) for size in ("125m", "350m", "1.3b")})


def get_preset(name: str) -> xLSTMLMConfig:
    """The preset config called ``name``; unknown names raise ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available presets: {', '.join(PRESETS)}")
    return PRESETS[name]
