"""Write a difflab U-Net run as a diffusers pipeline folder (``UNet2DModel`` + ``DDPMScheduler``).

difflab's :class:`~difflab.nets.unet.UNet` is the DDPM / improved-DDPM U-Net, which diffusers'
``UNet2DModel`` implements block for block:

===========================================  =====================================================
difflab                                      UNet2DModel (config key)
===========================================  =====================================================
sinusoid ``[cos, sin]``, ``w_k = 1e4^-k/h``  ``Timesteps``: ``flip_sin_to_cos=True``, ``freq_shift=0``
time MLP ``channels -> 4 ch -> 4 ch``        ``TimestepEmbedding`` (``linear_1``, ``linear_2``)
class table, ``num_classes + 1`` rows        ``num_class_embeds = num_classes + 1``
input conv 3x3                               ``conv_in`` (``block_out_channels[0]`` = ``channels``)
ResBlock, FiLM ``N2(h)(1+s)+b`` / ``N2(h+e)``  ``ResnetBlock2D``, ``resnet_time_scale_shift`` =
                                             ``"scale_shift"`` / ``"default"``; 1x1 ``conv_shortcut``
Attention (GroupNorm, fused qkv, proj)       ``Attention``: ``group_norm``, ``to_q/k/v``, ``to_out.0``
Downsample conv 3x3 stride 2                 ``Downsample2D`` (``downsample_type="conv"``, padding 1)
Upsample nearest x2 + conv 3x3               ``Upsample2D`` (``upsample_type="conv"``)
``num_res_blocks`` down, ``+ 1`` up          ``layers_per_block``; skips concatenated ``[h, skip]``
attention at a level's resolution            ``AttnDownBlock2D`` / ``AttnUpBlock2D`` there
middle ResBlock, Attention, ResBlock         ``UNetMidBlock2D`` (``attn_norm_num_groups`` set)
GroupNorm(32), eps 1e-5                      ``norm_num_groups``, ``norm_eps``
output GroupNorm, SiLU, conv                 ``conv_norm_out``, ``conv_act``, ``conv_out``
===========================================  =====================================================

What does not map is refused in one line naming it: difflab's U-Net feeds the network ``t * 1000 / T``
where ``UNet2DModel`` embeds the raw index (so only ``T = 1000`` maps), VDM's Fourier-feature inputs,
``channel_mult[0] != 1`` (``conv_in`` would be narrower than the first level), GroupNorms that difflab
shrank to fewer groups (a width not divisible by 32), attention whose head width differs between
levels, and processes other than the DDPM chain (VDM, VE, EDM).

The folder written: ``OUT/model_index.json`` (``DDPMPipeline``), ``OUT/unet/config.json`` +
``diffusion_pytorch_model.safetensors`` and ``OUT/scheduler/scheduler_config.json`` -- plain JSON and
safetensors, so export does not need diffusers installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nets.unet import Attention, Downsample, ResBlock, UNet, Upsample
from .schedule_map import scheduler_config_for

DIFFUSERS_VERSION = "0.30.0"  # the config format written (UNet2DModel's keys have been stable since)


def _refuse(what: str) -> None:
    raise ValueError(f"this run does not map onto diffusers' UNet2DModel: {what}")


def _head_dim(model: UNet) -> int | None:
    """``attention_head_dim``: ``None`` (one head everywhere, diffusers' own fallback) or the common
    head width; refused when heads differ in width across levels."""
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    if all(a.heads == 1 for a in attns):
        return None
    widths = {a.qkv.in_features // a.heads for a in attns}
    if len(widths) != 1:
        _refuse(
            f"attention head widths {sorted(widths)} differ between levels "
            "(UNet2DModel has one attention_head_dim)"
        )
    return widths.pop()


def _check_norms(model: UNet, groups: int) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm) and m.num_groups != groups:
            _refuse(
                f"GroupNorm {name} has {m.num_groups} groups for {m.num_channels} channels (UNet2DModel uses "
                f"norm_num_groups={groups} everywhere; widths must be divisible by it)"
            )


def unet_config(model: UNet, model_cfg, dropout: float | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a difflab U-Net built from ``model_cfg`` (a
    :class:`~difflab.config.ModelConfig`), or a ``ValueError`` naming what does not map."""
    if model.timesteps != 1000:
        _refuse(
            f"difflab's U-Net embeds t * 1000 / T and UNet2DModel the raw index: only T = 1000 maps, "
            f"this run has T = {model.timesteps}"
        )
    if model.fourier_features:
        _refuse(
            f"Fourier-feature inputs {list(model.fourier_features)} (VDM) have no UNet2DModel counterpart"
        )
    mult = list(model_cfg.channel_mult)
    if mult[0] != 1:
        _refuse(
            f"channel_mult[0] = {mult[0]}: UNet2DModel's conv_in has the first level's width, "
            "difflab's has channels"
        )
    groups = model.out_norm.num_groups
    _check_norms(model, groups)
    levels = [model.image_size[0] // 2**i for i in range(len(mult))]
    attn = [lv in model_cfg.attention_resolutions for lv in levels]
    res0 = next(m for m in model.modules() if isinstance(m, ResBlock))
    h, w = model.image_size
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": h if h == w else [h, w],
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [model_cfg.channels * m for m in mult],
        "layers_per_block": model_cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": model_cfg.dropout if dropout is None else dropout,
        "act_fn": "silu",
        "attention_head_dim": _head_dim(model),
        "norm_num_groups": groups,
        "attn_norm_num_groups": groups,
        "norm_eps": model.out_norm.eps,
        "resnet_time_scale_shift": "scale_shift" if res0.scale_shift else "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": model.num_classes + 1 if model.num_classes else None,
    }


def _resblock(p: str, m: ResBlock) -> dict[str, nn.Module]:
    out = {
        f"{p}.norm1": m.norm1,
        f"{p}.conv1": m.conv1,
        f"{p}.time_emb_proj": m.emb_proj,
        f"{p}.norm2": m.norm2,
        f"{p}.conv2": m.conv2,
    }
    if isinstance(m.skip, nn.Conv2d):
        out[f"{p}.conv_shortcut"] = m.skip
    return out


def _tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _attention(p: str, m: Attention) -> dict[str, torch.Tensor]:
    c = m.qkv.in_features
    out = _tensors(f"{p}.group_norm", m.norm) | _tensors(f"{p}.to_out.0", m.proj)
    for i, name in enumerate(("to_q", "to_k", "to_v")):  # qkv rows: [q; k; v], heads contiguous in each
        out[f"{p}.{name}.weight"] = m.qkv.weight[i * c : (i + 1) * c]
        out[f"{p}.{name}.bias"] = m.qkv.bias[i * c : (i + 1) * c]
    return out


def _stage(p: str, layers: nn.ModuleList, index: int) -> dict[str, torch.Tensor]:
    """Tensors of one difflab stage (ResBlock [+ Attention] [+ Up/Downsample]) under block ``p``."""
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        if isinstance(layer, ResBlock):
            for k, mod in _resblock(f"{p}.resnets.{index}", layer).items():
                out |= _tensors(k, mod)
        elif isinstance(layer, Attention):
            out |= _attention(f"{p}.attentions.{index}", layer)
        elif isinstance(layer, Downsample):
            out |= _tensors(f"{p}.downsamplers.0.conv", layer.conv)
        elif isinstance(layer, Upsample):
            out |= _tensors(f"{p}.upsamplers.0.conv", layer.conv)
    return out


def unet_state_dict(model: UNet, num_levels: int, num_res_blocks: int) -> dict[str, torch.Tensor]:
    """difflab U-Net weights under ``UNet2DModel``'s parameter names (every tensor mapped once)."""
    sd = _tensors("time_embedding.linear_1", model.time_embed.net[0])
    sd |= _tensors("time_embedding.linear_2", model.time_embed.net[2])
    if model.class_embed is not None:
        sd |= _tensors("class_embedding", model.class_embed)
    sd |= _tensors("conv_in", model.input)
    stages = iter(model.down)
    for level in range(num_levels):
        for i in range(num_res_blocks):
            sd |= _stage(f"down_blocks.{level}", next(stages), i)
        if level < num_levels - 1:
            sd |= _stage(f"down_blocks.{level}", next(stages), 0)
    res = [m for m in model.middle if isinstance(m, ResBlock)]
    for i, r in enumerate(res):
        for k, mod in _resblock(f"mid_block.resnets.{i}", r).items():
            sd |= _tensors(k, mod)
    sd |= _attention("mid_block.attentions.0", model.middle[1])
    stages = iter(model.up)
    for block in range(num_levels):
        for i in range(num_res_blocks + 1):
            sd |= _stage(f"up_blocks.{block}", next(stages), i)
    sd |= _tensors("conv_norm_out", model.out_norm) | _tensors("conv_out", model.out)
    have, want = sum(v.numel() for v in sd.values()), sum(v.numel() for v in model.state_dict().values())
    if have != want:  # the qkv split makes more tensors, never more numbers
        raise RuntimeError(f"mapped {have} of the U-Net's {want} numbers; the export is incomplete")
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """``difflab export --run RUN --diffusers OUT``: write RUN's EMA U-Net and its process as a
    ``DDPMPipeline`` folder that ``diffusers``' ``from_pretrained`` loads (see the module docstring)."""
    from safetensors.torch import save_file

    from ..runs import load_run

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--diffusers {out} exists and is not empty; name a new folder")
    cfg, diffusion, model, _ = load_run(run_dir)
    if cfg.diffusion.process != "vp":
        _refuse(
            f"diffusion.process={cfg.diffusion.process!r}: only the DDPM chain ('vp') has a "
            "diffusers scheduler"
        )
    if not isinstance(model, UNet):
        _refuse(f"the model is a {type(model).__name__} ({cfg.model.kind!r}); only difflab's U-Net maps")
    config = unet_config(model, cfg.model)
    weights = unet_state_dict(model, len(cfg.model.channel_mult), cfg.model.num_res_blocks)
    scheduler = scheduler_config_for(diffusion)
    scheduler["_diffusers_version"] = DIFFUSERS_VERSION
    (out / "unet").mkdir(parents=True, exist_ok=True)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "unet" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return {
        "diffusers": str(out),
        "parameters": sum(v.numel() for v in weights.values()),
        "scheduler": {k: v for k, v in scheduler.items() if k != "trained_betas"},
    }


__all__ = ["export_run", "unet_config", "unet_state_dict"]
