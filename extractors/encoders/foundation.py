"""Pathology foundation encoders, each built locally from the recipe of its own model card.

``build`` never reads a hub config or downloads anything: it constructs the architecture with
random weights so that the published checkpoint (gated or licensed, never bundled) loads
strictly through :mod:`extractors.encoders.weights`. The ``notes`` of every entry say where its
recipe comes from.

Axes: ``b`` images, ``n`` tokens, ``d`` features, ``gh``/``gw`` rows/columns of a feature map.
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from extractors.encoders.conch import ConchV15Vision
from extractors.encoders.registry import EncoderSpec, register_encoder

#: Normalisation of H-optimus-0 and H-optimus-1 (bioptimus model cards).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

_MAHMOOD_LICENSE = "CC-BY-NC-ND-4.0 (non-commercial academic research, attribution)"

# timm arguments as published by each model's card or official loader (num_classes=0 is added
# by _timm_model). dynamic_img_size is kept as published; at the native size it changes nothing.
UNI_V1_KWARGS = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
UNI_V2_KWARGS = {
    "img_size": 224,
    "patch_size": 14,
    "depth": 24,
    "num_heads": 24,
    "init_values": 1e-5,
    "embed_dim": 1536,
    "mlp_ratio": 2.66667 * 2,
    "no_embed_class": True,
    "mlp_layer": SwiGLUPacked,
    "act_layer": nn.SiLU,
    "reg_tokens": 8,
    "dynamic_img_size": True,
}
VIRCHOW2_KWARGS = {
    "img_size": 224,
    "init_values": 1e-5,
    "mlp_ratio": 5.3375,
    "reg_tokens": 4,
    "global_pool": "",
    "dynamic_img_size": True,
    "mlp_layer": SwiGLUPacked,
    "act_layer": nn.SiLU,
}
HOPTIMUS_KWARGS = {
    "img_size": 224,
    "init_values": 1e-5,
    "global_pool": "token",
    "dynamic_img_size": False,
}
GIGAPATH_KWARGS = {
    "img_size": 224,
    "in_chans": 3,
    "patch_size": 16,
    "embed_dim": 1536,
    "depth": 40,
    "num_heads": 24,
    "init_values": 1e-5,
    "mlp_ratio": 5.33334,
}
#: transformers ``Dinov2Config`` of owkin/phikon-v2 (ViT-L/16, DINOv2, no registers, no SwiGLU).
PHIKON_V2_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 16,
    "image_size": 224,
    "layerscale_value": 1e-5,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}


def _timm_model(arch: str, **kwargs) -> nn.Module:
    """A timm architecture with random weights and no classifier head."""
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


# --- Virchow2 ---------------------------------------------------------------------------------


def class_and_mean_patch_token(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Virchow's embedding: the class token concatenated with the mean of the patch tokens.

    The model keeps every token (``global_pool=""``): class token, register tokens, patches.
    The register tokens are left out of the mean.
    """
    tokens = model(images)  # (b, n, d)
    patches = tokens[:, model.num_prefix_tokens :]
    return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)  # (b, 2d)


# --- ResNet-50 truncated after layer3 (CLAM) ---------------------------------------------------


def _resnet50_to_layer3() -> nn.Module:
    return timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(3,))


def mean_of_feature_map(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Global average of the single feature map a ``features_only`` model returns."""
    (feature_map,) = model(images)  # (b, d, gh, gw)
    return feature_map.mean(dim=(2, 3))


def drop_resnet_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``layer4`` and the classifier ``fc`` of a full ResNet-50 checkpoint."""
    return {key: value for key, value in state.items() if not key.startswith(("layer4.", "fc."))}


# --- Phikon-v2 (transformers) ------------------------------------------------------------------


def _phikon_v2() -> nn.Module:
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError as err:
        raise ImportError(
            "encoder phikon_v2 is a transformers model: pip install 'transformers>=5'"
        ) from err
    return Dinov2Model(Dinov2Config(**PHIKON_V2_CONFIG))


def dinov2_class_token(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The class token of a transformers DINOv2 model's last hidden state."""
    return model(pixel_values=images).last_hidden_state[:, 0]


# --- Registry entries --------------------------------------------------------------------------

register_encoder(
    EncoderSpec(
        name="uni_v1",
        stamp_name="uni",
        build=partial(_timm_model, "vit_large_patch16_224", **UNI_V1_KWARGS),
        embed_dim=1024,
        hf_repo="MahmoodLab/UNI",
        hf_filename="pytorch_model.bin",
        license=_MAHMOOD_LICENSE,
        gated=True,
        notes=(
            "UNI (ViT-L/16, DINOv2 on Mass-100K). timm vit_large_patch16_224 with img_size=224, "
            "patch_size=16, init_values=1e-5, dynamic_img_size=True; resize 224 + centre crop "
            "224, ImageNet mean/std; embedding = class token. Source: mahmoodlab/UNI "
            "uni/get_encoder/get_encoder.py, MahmoodLab/UNI model card, TRIDENT "
            "UNIInferenceEncoder."
        ),
    )
)

register_encoder(
    EncoderSpec(
        name="uni_v2",
        stamp_name="uni2",
        build=partial(_timm_model, "vit_giant_patch14_224", **UNI_V2_KWARGS),
        embed_dim=1536,
        hf_repo="MahmoodLab/UNI2-h",
        hf_filename="pytorch_model.bin",
        license=_MAHMOOD_LICENSE,
        gated=True,
        notes=(
            "UNI2-h (ViT-H/14, 8 register tokens, SwiGLU, 681M parameters). timm "
            "vit_giant_patch14_224 with depth=24, num_heads=24, embed_dim=1536, "
            "mlp_ratio=2.66667*2, SwiGLUPacked + SiLU, reg_tokens=8, no_embed_class=True, "
            "init_values=1e-5; resize 224 + centre crop 224, ImageNet mean/std; embedding = "
            "class token. Source: mahmoodlab/UNI get_encoder.py and README, MahmoodLab/UNI2-h "
            "model card, TRIDENT UNIv2InferenceEncoder."
        ),
    )
)

register_encoder(
    EncoderSpec(
        name="virchow2",
        stamp_name="virchow2",
        build=partial(_timm_model, "vit_huge_patch14_224", **VIRCHOW2_KWARGS),
        embed_dim=2560,
        embed=class_and_mean_patch_token,
        hf_repo="paige-ai/Virchow2",
        hf_filename="pytorch_model.bin",
        license="CC-BY-NC-ND-4.0 (non-commercial)",
        gated=True,
        notes=(
            "Virchow2 (ViT-H/14, 4 register tokens, SwiGLU, 632M parameters). timm "
            "vit_huge_patch14_224 with mlp_ratio=5.3375, reg_tokens=4, global_pool='', "
            "init_values=1e-5, SwiGLUPacked + SiLU; input 224 (crop_pct 1.0, bicubic), ImageNet "
            "mean/std. Embedding = class token (1280) concatenated with the mean of the 256 "
            "patch tokens after the 4 registers (1280) = 2560. Source: paige-ai/Virchow2 model "
            "card and config.json, TRIDENT Virchow2InferenceEncoder."
        ),
    )
)


def _register_h_optimus(name: str, repo: str, filename: str, weights_license: str) -> None:
    register_encoder(
        EncoderSpec(
            name=name,
            stamp_name=name.replace("_", "-"),
            build=partial(_timm_model, "vit_giant_patch14_reg4_dinov2", **HOPTIMUS_KWARGS),
            embed_dim=1536,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            hf_repo=repo,
            hf_filename=filename,
            license=weights_license,
            gated=True,
            notes=(
                f"{repo} (ViT-g/14, 4 register tokens, 1.1B parameters). timm "
                "vit_giant_patch14_reg4_dinov2 with img_size=224, init_values=1e-5, "
                "global_pool='token', dynamic_img_size=False; 224 x 224 tiles at 0.5 um/px, "
                f"mean {HOPTIMUS_MEAN}, std {HOPTIMUS_STD}; embedding = class token. Source: "
                f"{repo} model card, TRIDENT HOptimus0/1InferenceEncoder."
            ),
        )
    )


_register_h_optimus("h_optimus_0", "bioptimus/H-optimus-0", "pytorch_model.bin", "Apache-2.0")
_register_h_optimus(
    "h_optimus_1",
    "bioptimus/H-optimus-1",
    "model.safetensors",
    "CC-BY-NC-ND-4.0 (non-commercial; commercial licence from Bioptimus)",
)

register_encoder(
    EncoderSpec(
        name="gigapath",
        stamp_name="gigapath",
        build=partial(_timm_model, "vit_giant_patch14_dinov2", **GIGAPATH_KWARGS),
        embed_dim=1536,
        resize_size=256,
        hf_repo="prov-gigapath/prov-gigapath",
        hf_filename="pytorch_model.bin",
        license="Apache-2.0 (research use only, not for clinical use)",
        gated=True,
        notes=(
            "Prov-GigaPath tile encoder (ViT-g with 16 px patches, SwiGLU, 1.1B parameters). "
            "timm vit_giant_patch14_dinov2 with img_size=224, patch_size=16, embed_dim=1536, "
            "depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334; resize 256 (bicubic) "
            "then centre crop 224, ImageNet mean/std; embedding = class token. Source: "
            "prov-gigapath/prov-gigapath README and HF config.json, TRIDENT "
            "GigaPathInferenceEncoder."
        ),
    )
)

register_encoder(
    EncoderSpec(
        name="conch_v15",
        stamp_name="conch1_5",
        build=ConchV15Vision,
        embed_dim=768,
        input_size=448,
        # Trained on 512 px tiles at 20x (0.5 µm/px) resized to 448: 0.571 µm/px per input pixel.
        native_mpp=0.5 * 512 / 448,
        hf_repo="MahmoodLab/conchv1_5",
        hf_filename="pytorch_model_vision.bin",
        license=_MAHMOOD_LICENSE,
        gated=True,
        notes=(
            "CONCH v1.5 vision encoder (TITAN's patch encoder). ViT-L/16 trunk (timm "
            "vit_large_patch16_224, 224 px positional table, init_values=1.0) whose table is "
            "interpolated to 448 px the iBOT way, then an attentional pooler (1 query, 8 heads, "
            "768-d) and LayerNorm; no contrastive projection. 512 px tiles at 20x resized to "
            "448 (bilinear), ImageNet mean/std. Source: TRIDENT model_zoo/conchv1_5/"
            "conchv1_5.py and Conchv15InferenceEncoder, MahmoodLab/TITAN conch_v1_5.py and "
            "configuration_titan.py (ConchConfig). Same weights: conch_v1_5_pytorch_model.bin "
            "in MahmoodLab/TITAN."
        ),
    )
)

register_encoder(
    EncoderSpec(
        name="phikon_v2",
        build=_phikon_v2,
        embed_dim=1024,
        embed=dinov2_class_token,
        hf_repo="owkin/phikon-v2",
        hf_filename="model.safetensors",
        license="Owkin non-commercial licence (LICENSE.pdf in owkin/phikon-v2)",
        gated=False,
        notes=(
            "Phikon-v2 (ViT-L/16, DINOv2 on PANCAN-XL). transformers Dinov2Model built from a "
            "Dinov2Config (hidden 1024, 24 layers, 16 heads, patch 16, image 224); embedding = "
            "class token of last_hidden_state. Resize 224 + centre crop 224, ImageNet mean/std. "
            "Source: owkin/phikon-v2 model card, TRIDENT Phikonv2InferenceEncoder. Needs the "
            "optional dependency transformers."
        ),
    )
)

register_encoder(
    EncoderSpec(
        name="resnet50_trunc",
        build=_resnet50_to_layer3,
        embed_dim=1024,
        embed=mean_of_feature_map,
        hf_repo="timm/resnet50.tv_in1k",
        hf_filename="model.safetensors",
        remap_state_dict=drop_resnet_head,
        license="BSD-3-Clause (torchvision ImageNet weights)",
        gated=False,
        notes=(
            "CLAM's baseline: ImageNet ResNet-50 (torchvision weights) cut after layer3, global "
            "average pool -> 1024-d. timm resnet50 with features_only=True, out_indices=(3,); "
            "layer4 and fc of the published checkpoint are dropped. Input 224, ImageNet "
            "mean/std; not a pathology model (native_mpp 0.5 follows CLAM's 20x tiles). "
            "Source: mahmoodlab/CLAM models/resnet_custom.py, mahmoodlab/UNI "
            "models/resnet50_trunc.py, TRIDENT ResNet50InferenceEncoder."
        ),
    )
)
