"""Real data: labelled image folders (image_folder), and the real datasets by `--dataset` name (real: the registry;
digits and fashion_mnist with its IDX reader idx: the loaders; split: what a loader returns)."""
