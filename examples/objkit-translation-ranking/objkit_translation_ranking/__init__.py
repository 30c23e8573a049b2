"""objkit-translation-ranking: LaBSE's translation ranking loss as an objkit objective plugin, and
bitext mining F1 (BUCC protocol) as an evaluator plugin, and a Moses/OPUS corpus reader as a
source plugin (``type = "moses"``, module ``objkit_translation_ranking.moses``: not imported here,
so that the objective loads on an objkit without source plugins)."""

from objkit_translation_ranking.mining import BitextMining, BitextMiningConfig
from objkit_translation_ranking.objective import (
    TranslationRanking,
    TranslationRankingConfig,
    ranking_loss,
)

__version__ = "0.1.0"

__all__ = ["BitextMining", "BitextMiningConfig", "TranslationRanking", "TranslationRankingConfig", "ranking_loss", "__version__"]
