"""``analyze``'s streaming chain: from a video file, several files or a live source to per-frame valence and
arousal, in memory and chunk by chunk, with the stages' own parts (docs/analyze.md).

Files:

- :mod:`~pipeline.analysis.frontend`: the face pass and the crop pass over a file (arrays out; worker processes);
- :mod:`~pipeline.analysis.files`: the worker processes and the loop that feeds their chunks to the back end;
- :mod:`~pipeline.analysis.backend`: chunks of crops in, CSV rows out, for several videos at once.

Parts both modes use:

- :mod:`~pipeline.analysis.crops`: crops as ``prepare`` reads them (JPEG round trip, fill);
- :mod:`~pipeline.analysis.audio`: audio tracks read by range (a file's, a live stream's);
- :mod:`~pipeline.analysis.features`: feature rows through the extractor contract;
- :mod:`~pipeline.analysis.predictor`: the fold models: online whole-trial inference, live rolling windows;
- :mod:`~pipeline.analysis.smoother`: ``postprocess`` smoothing of values that arrive in order;
- :mod:`~pipeline.analysis.writer`: the CSV rows and the figure.

Live: :mod:`~pipeline.analysis.feed` (decoding and faces threads), :mod:`~pipeline.analysis.live` (the loop).
"""
