"""objkit's conformance kit, run on this plugin as installed (through its entry point)."""

from __future__ import annotations

from objkit.testing import Case, ObjectiveConformance


class TestTranslationRankingConformance(ObjectiveConformance):
    plugin = "translation_ranking"
    distribution = "objkit-translation-ranking"
    configs = [
        {},
        {"layer": 3, "pooling": "mean", "scale": 10.0, "margin": 0.0},
        # negatives from this rank's batch only: the loss depends on the number of ranks by design
        Case({"bidirectional": False, "gather": False}, rank_invariant=False),
    ]
    bad_configs = [
        {"margin": -0.1},
        {"scale": 0.0},
        {"layer": 0},
        {"pooling": "max"},
        {"temperature": 0.05},  # not a key of this plugin
    ]
