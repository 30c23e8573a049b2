"""objkit-translation-ranking: LaBSE's translation ranking loss as an objkit objective plugin."""

from objkit_translation_ranking.objective import (
    TranslationRanking,
    TranslationRankingConfig,
    ranking_loss,
)

__version__ = "0.1.0"

__all__ = ["TranslationRanking", "TranslationRankingConfig", "ranking_loss", "__version__"]
