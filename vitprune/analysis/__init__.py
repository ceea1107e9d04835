"""Analyses of finished discover runs: path edits, score comparison, class similarity, class-embedding lens."""
from __future__ import annotations

from .editing import apply_masks, class_mode_paths, edit_masks, edited_logits, manipulate
from .lens import capture_sites, label_units, lens_analysis, lens_statistics, path_unit_labels, resolve_readout
from .scores import compare_scores, method_scores
from .similarity import class_similarity, cosine_matrix, preferred_position, run_similarity, unit_frequency

__all__ = [
    "manipulate", "edited_logits", "edit_masks", "apply_masks", "class_mode_paths",
    "compare_scores", "method_scores",
    "class_similarity", "run_similarity", "unit_frequency", "cosine_matrix", "preferred_position",
    "lens_analysis", "lens_statistics", "label_units", "resolve_readout", "capture_sites", "path_unit_labels",
]
