"""Whole-slide use of AMLPF checkpoints: WSInfer/QuPath export (`wsinfer_export`) and slide heatmaps (`heatmap`)."""
