"""What the student sees: the training and validation data (loaders: shards or image folders, seeded subsets;
decode: real images as uint8 tensors) and the batch step on the device (batch: augmentation, mixing, normalisation;
augment and rand_augment: DeiT's per-image augmentations, batched)."""
