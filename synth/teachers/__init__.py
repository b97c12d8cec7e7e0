"""The CNN teacher: where it comes from (sources: timm, torchvision, the user's own code through user_code, dfkd
teacher files), the preprocessing the user states (preprocessing), one-channel networks (channels), its weights and
their downloads, the dfkd teacher file (checkpoint) and its packing (packing: `dfkd import-teacher`), the input sizes it
takes (input_size), the small BN CNNs (small_cnn), and the model wrapper that exposes its normalisation, classifier and
BatchNorm layers (teacher)."""
