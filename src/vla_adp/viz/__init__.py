"""Pictures of what was pruned and when: overlays, episode videos, gate timelines, trade-off plots,
per-task and inversion tables (from logs only), and layer-wise importance analysis.

Plotting needs the ``viz`` extra (matplotlib; imageio + imageio-ffmpeg for videos).
"""
