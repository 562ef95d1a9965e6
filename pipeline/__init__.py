"""Audio-visual valence-arousal estimation pipeline (Yu et al., ABAW6 / CVPR 2024 workshops)."""

__version__ = "0.1.0"
