"""Class-conditional diffusion models (diffusers `UNet2DModel` + DDPM/DDIM schedulers): building,
the noise-prediction objective, guided sampling and training."""
from surgery._lazy import lazy

__getattr__, __dir__ = lazy(
    __name__,
    model="build_unet is_diffusion load_diffusion null_class num_classes scheduler",
    process="diffusion_loss noised_batch sample to_model_space to_pixels",
    train="train_ddpm",
)
__all__ = __dir__()
