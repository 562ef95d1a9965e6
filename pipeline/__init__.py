"""Audio-visual valence-arousal estimation pipeline (Yu et al., ABAW6 / CVPR 2024 workshops)."""

import os

# libgomp's default busy-wait makes every torch op spin on all cores: with one other busy process on a 2-core
# machine a training step measured 7.7 s instead of 0.5 s. Set before torch loads (importing `pipeline` comes first
# in every entry point); a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
