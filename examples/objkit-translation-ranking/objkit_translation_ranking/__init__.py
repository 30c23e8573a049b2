"""objkit-translation-ranking: LaBSE's translation ranking loss as an objkit objective plugin, and
a Moses/OPUS corpus reader as a source plugin (``type = "moses"``)."""

from objkit_translation_ranking.moses import MosesConfig, MosesCorpus
from objkit_translation_ranking.objective import (
    TranslationRanking,
    TranslationRankingConfig,
    ranking_loss,
)

__version__ = "0.1.0"

__all__ = ["MosesConfig", "MosesCorpus", "TranslationRanking", "TranslationRankingConfig", "ranking_loss", "__version__"]
