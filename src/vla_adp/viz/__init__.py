"""Pictures of what was pruned: keep-mask overlays, episode videos with captions, and layer-wise
importance analysis. The reports drawn from run logs (gate timelines, trade-off plots, per-task and
inversion tables) are :mod:`vla_adp.report`.

Plotting needs the ``viz`` extra (matplotlib; imageio + imageio-ffmpeg for videos).
"""
