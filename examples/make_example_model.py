"""Makes examples/models/tiny-unet: the small diffusers-style UNet2DModel that
`arrowquant quantize` quantizes when given no model.

The tensor names and shapes are those diffusers' `UNet2DModel` gives the configuration in
CONFIG (three down blocks, the last two with attention, a mid block, three up blocks). The
weights are initialised as PyTorch initialises a fresh module: conv and linear weights
Kaiming-uniform with a = sqrt(5), i.e. uniform(±1/sqrt(fan_in)), biases uniform(±1/sqrt(fan_in)),
GroupNorm weights one and biases zero. Seeded, so the file is the same on every run. Run from
the repository root:

    .venv/bin/python examples/make_example_model.py
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent / "models" / "tiny-unet"

CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.31.0",
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "norm_eps": 1e-05,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
}


class Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}

    def _uniform(self, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return self.rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def conv(self, name, c_in, c_out, k):
        fan_in = c_in * k * k
        self.tensors[f"{name}.weight"] = self._uniform((c_out, c_in, k, k), fan_in)
        self.tensors[f"{name}.bias"] = self._uniform((c_out,), fan_in)

    def linear(self, name, d_in, d_out):
        self.tensors[f"{name}.weight"] = self._uniform((d_out, d_in), d_in)
        self.tensors[f"{name}.bias"] = self._uniform((d_out,), d_in)

    def group_norm(self, name, channels):
        self.tensors[f"{name}.weight"] = np.ones(channels, dtype=np.float32)
        self.tensors[f"{name}.bias"] = np.zeros(channels, dtype=np.float32)

    def resnet(self, name, c_in, c_out, temb):
        self.group_norm(f"{name}.norm1", c_in)
        self.conv(f"{name}.conv1", c_in, c_out, 3)
        self.linear(f"{name}.time_emb_proj", temb, c_out)
        self.group_norm(f"{name}.norm2", c_out)
        self.conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            self.conv(f"{name}.conv_shortcut", c_in, c_out, 1)

    def attention(self, name, channels):
        self.group_norm(f"{name}.group_norm", channels)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            self.linear(f"{name}.{proj}", channels, channels)


def build(config) -> dict[str, np.ndarray]:
    b = Builder(seed=20261126)
    channels = config["block_out_channels"]
    temb = channels[0] * 4
    layers = config["layers_per_block"]
    b.conv("conv_in", config["in_channels"], channels[0], 3)
    b.linear("time_embedding.linear_1", channels[0], temb)
    b.linear("time_embedding.linear_2", temb, temb)

    out_c = channels[0]
    for i, kind in enumerate(config["down_block_types"]):
        in_c, out_c = out_c, channels[i]
        for j in range(layers):
            b.resnet(f"down_blocks.{i}.resnets.{j}", in_c if j == 0 else out_c, out_c, temb)
            if kind.startswith("Attn"):
                b.attention(f"down_blocks.{i}.attentions.{j}", out_c)
        if i < len(channels) - 1:
            b.conv(f"down_blocks.{i}.downsamplers.0.conv", out_c, out_c, 3)

    mid = channels[-1]
    b.resnet("mid_block.resnets.0", mid, mid, temb)
    b.attention("mid_block.attentions.0", mid)
    b.resnet("mid_block.resnets.1", mid, mid, temb)

    reversed_channels = list(reversed(channels))
    out_c = reversed_channels[0]
    for i, kind in enumerate(config["up_block_types"]):
        prev_c, out_c = out_c, reversed_channels[i]
        in_c = reversed_channels[min(i + 1, len(channels) - 1)]
        for j in range(layers + 1):
            skip = in_c if j == layers else out_c
            res_in = prev_c if j == 0 else out_c
            b.resnet(f"up_blocks.{i}.resnets.{j}", res_in + skip, out_c, temb)
            if kind.startswith("Attn"):
                b.attention(f"up_blocks.{i}.attentions.{j}", out_c)
        if i < len(channels) - 1:
            b.conv(f"up_blocks.{i}.upsamplers.0.conv", out_c, out_c, 3)

    b.group_norm("conv_norm_out", channels[0])
    b.conv("conv_out", channels[0], config["out_channels"], 3)
    return b.tensors


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = build(CONFIG)
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    save_file(tensors, str(OUT / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    params = sum(t.size for t in tensors.values())
    print(f"{OUT}: {len(tensors)} tensors, {params} parameters, {params * 4 / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
