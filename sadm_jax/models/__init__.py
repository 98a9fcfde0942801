"""Pure functional Flax models: diffusion UNet, ResNet-50 conditioning encoder, SparK, SegUnet."""
