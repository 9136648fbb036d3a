"""Vision: image features (segments, superpixels), helpers and plots on the generic core.

Every attribution algorithm of :mod:`llmattr` already works on image tensors ``(N, C, H, W)``;
this package will add image-specific feature masks and visualizations.
"""
