"""The CNN teacher: where it comes from (sources: dfkd files, timm, torchvision), its weights and their downloads,
the dfkd teacher file (checkpoint), the small BN CNNs (small_cnn), and the model wrapper that exposes its
normalisation, classifier and BatchNorm layers (teacher)."""
