"""DearKD student: a distilled DeiT whose first blocks use MHCA, registered with timm."""

from typing import Optional, Set, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled

from .mhca import MHCAttention, attention_distance, attention_probs

__all__ = ["DearKD", "build_dearkd"]


class DearKD(VisionTransformerDistilled):
    """DeiT-style ViT with class + distillation tokens; blocks [0, num_mhca) use MHCA, the rest plain MHSA."""

    def __init__(self, *args, num_mhca: int = 0, locality_strength: float = 1.0, **kwargs) -> None:
        weight_init = kwargs.pop("weight_init", "")
        super().__init__(*args, weight_init="skip", **kwargs)
        assert 0 <= num_mhca <= len(self.blocks), f"num_mhca must be in [0, {len(self.blocks)}]"
        assert not (num_mhca and self.dynamic_img_size), "MHCA needs a fixed patch grid (dynamic_img_size=False)"
        self.num_mhca = num_mhca
        dd = get_device_dtype(self)
        for blk in self.blocks[:num_mhca]:
            old = blk.attn
            blk.attn = MHCAttention(
                self.embed_dim,
                num_heads=old.num_heads,
                qkv_bias=old.qkv.bias is not None,
                attn_drop=old.attn_drop.p,
                proj_drop=old.proj_drop.p,
                grid_size=self.grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
                locality_strength=locality_strength,
                **dd,
            )
        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """DeiT's exclusions plus MHCA's position vectors `v` (3 numbers per head): they set each head's locality
        like a positional embedding does (DeiT does not decay `pos_embed`), and decaying them would pull every
        head steadily back toward plain, position-blind attention. (ConViT decays its positional projection, a
        full linear layer; `v` is too small to need a regulariser.)"""
        return set(super().no_weight_decay()) | {f"blocks.{i}.attn.v" for i in range(self.num_mhca)}

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid (h, w)."""
        return tuple(self.patch_embed.grid_size)

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return self.patch_embed.patch_size[0]

    def set_input_size(
        self, img_size: Optional[Tuple[int, int]] = None, patch_size: Optional[Tuple[int, int]] = None
    ) -> None:
        """Change the input resolution; MHCA blocks follow the new patch grid."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        for blk in self.blocks[: self.num_mhca]:
            blk.attn.set_grid_size(self.grid_size)

    @torch.no_grad()
    def attention_distances(self, x: torch.Tensor) -> torch.Tensor:
        """(depth, num_heads) mean attention distance, in patches, of every block on images x."""
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        out = []
        for blk in self.blocks:
            probs = attention_probs(blk.attn, blk.norm1(x))
            out.append(attention_distance(probs, self.grid_size, self.num_prefix_tokens))
            x = blk(x)
        return torch.stack(out)


def build_dearkd(variant: str, pretrained: bool = False, **kwargs) -> DearKD:
    """Build a registered DearKD variant through timm's builder (pretrained cfg, features_only, ...)."""
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        DearKD, variant, pretrained, feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": ("head", "head_dist"),
        **kwargs,
    }


def _cfg32(**kwargs) -> dict:
    return _cfg(
        num_classes=10,
        input_size=(3, 32, 32),
        crop_pct=1.0,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        "dearkd_tiny_patch16_224": _cfg(),
        "dearkd_small_patch16_224": _cfg(),
        "dearkd_base_patch16_224": _cfg(),
        "dearkd_nano_patch4_32": _cfg32(),
        "dearkd_pico_patch4_32": _cfg32(),
        "deit_nano_patch4_32": _cfg32(),
    }
)


@register_model
def dearkd_tiny_patch16_224(pretrained: bool = False, **kwargs) -> DearKD:
    """DearKD-Ti: dim 192, 12 heads, 8 MHCA + 4 MHSA blocks."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=12, num_mhca=8)
    return build_dearkd("dearkd_tiny_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_small_patch16_224(pretrained: bool = False, **kwargs) -> DearKD:
    """DearKD-S: dim 384, 12 heads, 8 MHCA + 4 MHSA blocks."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=12, num_mhca=8)
    return build_dearkd("dearkd_small_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_base_patch16_224(pretrained: bool = False, **kwargs) -> DearKD:
    """DearKD-B: dim 768, 16 heads, 8 MHCA + 4 MHSA blocks."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=16, num_mhca=8)
    return build_dearkd("dearkd_base_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_nano_patch4_32(pretrained: bool = False, **kwargs) -> DearKD:
    """32-px DearKD for the demo: dim 96, 4 heads, 4 MHCA + 2 MHSA blocks."""
    args = dict(patch_size=4, embed_dim=96, depth=6, num_heads=4, num_mhca=4)
    return build_dearkd("dearkd_nano_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def dearkd_pico_patch4_32(pretrained: bool = False, **kwargs) -> DearKD:
    """32-px DearKD for tests: dim 32, 2 heads, 1 MHCA + 1 MHSA block."""
    args = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, num_mhca=1)
    return build_dearkd("dearkd_pico_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def deit_nano_patch4_32(pretrained: bool = False, **kwargs) -> DearKD:
    """Plain distilled DeiT baseline of nano's size (no MHCA), for ablations."""
    args = dict(patch_size=4, embed_dim=96, depth=6, num_heads=4, num_mhca=0)
    return build_dearkd("deit_nano_patch4_32", pretrained, **dict(args, **kwargs))
