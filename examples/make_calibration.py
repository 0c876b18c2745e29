"""Makes examples/calibration/tiny-unet-ddpm.parquet: activations recorded from the bundled
UNet (examples/models/tiny-unet) while it runs a full DDPM sampling schedule.

The forward pass is a faithful numpy port of diffusers' `UNet2DModel` for the bundled
configuration (sinusoidal timestep embedding with flip_sin_to_cos, ResnetBlock2D with
GroupNorm/SiLU and the time projection added after conv1, `Attention` blocks as built for
UNet2DModel — group norm, one linear each for q/k/v, softmax over keys, output projection,
residual — strided-conv downsamplers, nearest-neighbour ×2 upsamplers followed by a conv, skip
connections concatenated in the up path). The sampler is diffusers' `DDPMScheduler` with its
defaults: 1000 training timesteps, linear betas 1e-4…0.02, epsilon prediction, predicted x0
clipped to [-1, 1], the "fixed_small" posterior variance.

Every conv and linear layer's *input* is recorded (what a forward pre-hook sees). The whole
chain t = 999 … 0 is run; every tenth timestep (t = 990, 980, …, 0) is kept, one record per
(layer, timestep):
  - `values`: 64 order statistics of the input at evenly spaced probabilities 0 … 1, so the
    record keeps the exact minimum and maximum and the shape of the distribution;
  - `channel_absmax`: max |x| per input channel (SmoothQuant's activation statistic);
  - `elements`: how many values the input had (batch × channels × positions).

Seeded: the same file on every run. Run from the repository root:

    .venv/bin/python examples/make_calibration.py
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent
MODEL = ROOT / "models" / "tiny-unet"
OUT = ROOT / "calibration" / "tiny-unet-ddpm.parquet"

NUM_TRAIN_TIMESTEPS = 1000
RECORD_EVERY = 10
QUANTILES = 64
BATCH = 2
SEED = 20261127


class Recorder:
    """Collects the statistics of each layer input at the recorded timesteps."""

    def __init__(self):
        self.timestep = None
        self.rows = []

    def record(self, layer: str, x: np.ndarray, channel_axis: int):
        if self.timestep is None:
            return
        flat = x.reshape(-1).astype(np.float64)
        probabilities = np.linspace(0.0, 1.0, QUANTILES)
        values = np.quantile(flat, probabilities, method="inverted_cdf").astype(np.float32)
        axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
        channel_absmax = np.abs(x).max(axis=axes).astype(np.float32)
        self.rows.append((layer, self.timestep, values, channel_absmax, flat.size))


class UNet:
    def __init__(self, weights: dict[str, np.ndarray], config: dict, recorder: Recorder):
        self.w = weights
        self.config = config
        self.rec = recorder
        self.groups = config["norm_num_groups"]
        self.eps = config["norm_eps"]
        self.head_dim = config["attention_head_dim"]

    # layers -------------------------------------------------------------------------------
    def conv(self, name, x, stride=1):
        self.rec.record(name, x, channel_axis=1)
        weight, bias = self.w[f"{name}.weight"], self.w[f"{name}.bias"]
        k = weight.shape[-1]
        pad = k // 2
        if pad:
            x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
        windows = windows[:, :, ::stride, ::stride]
        out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))
        return (out + bias).transpose(0, 3, 1, 2).astype(np.float32)

    def linear(self, name, x):
        self.rec.record(name, x, channel_axis=-1)
        return (x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]).astype(np.float32)

    def group_norm(self, name, x):
        b, c = x.shape[:2]
        grouped = x.reshape(b, self.groups, -1).astype(np.float64)
        mean = grouped.mean(axis=2, keepdims=True)
        var = grouped.var(axis=2, keepdims=True)
        normed = ((grouped - mean) / np.sqrt(var + self.eps)).reshape(x.shape)
        shape = (1, c) + (1,) * (x.ndim - 2)
        weight = self.w[f"{name}.weight"].reshape(shape)
        bias = self.w[f"{name}.bias"].reshape(shape)
        return (normed * weight + bias).astype(np.float32)

    @staticmethod
    def silu(x):
        return (x / (1.0 + np.exp(-x))).astype(np.float32)

    # blocks -------------------------------------------------------------------------------
    def resnet(self, name, x, temb):
        h = self.conv(f"{name}.conv1", self.silu(self.group_norm(f"{name}.norm1", x)))
        h = h + self.linear(f"{name}.time_emb_proj", self.silu(temb))[:, :, None, None]
        h = self.conv(f"{name}.conv2", self.silu(self.group_norm(f"{name}.norm2", h)))
        if f"{name}.conv_shortcut.weight" in self.w:
            x = self.conv(f"{name}.conv_shortcut", x)
        return x + h

    def attention(self, name, x):
        b, c, height, width = x.shape
        heads = c // self.head_dim
        h = self.group_norm(f"{name}.group_norm", x).reshape(b, c, -1).transpose(0, 2, 1)
        q, k, v = (self.linear(f"{name}.{p}", h) for p in ("to_q", "to_k", "to_v"))

        def split(t):
            return t.reshape(b, -1, heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = split(q), split(k), split(v)
        scores = (q @ k.transpose(0, 1, 3, 2)).astype(np.float64) / np.sqrt(self.head_dim)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = (probs.astype(np.float32) @ v).transpose(0, 2, 1, 3).reshape(b, -1, c)
        out = self.linear(f"{name}.to_out.0", out)
        return out.transpose(0, 2, 1).reshape(b, c, height, width) + x

    def time_embedding(self, timesteps):
        dim = self.config["block_out_channels"][0]
        half = dim // 2
        exponent = -np.log(10000.0) * np.arange(half, dtype=np.float32) / half
        angles = timesteps[:, None].astype(np.float32) * np.exp(exponent)[None, :]
        emb = np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)  # flip_sin_to_cos
        emb = self.linear("time_embedding.linear_1", emb.astype(np.float32))
        return self.linear("time_embedding.linear_2", self.silu(emb))

    def __call__(self, sample, timestep):
        config = self.config
        temb = self.time_embedding(np.full(sample.shape[0], timestep))
        h = self.conv("conv_in", sample)
        skips = [h]
        blocks = len(config["block_out_channels"])
        for i, kind in enumerate(config["down_block_types"]):
            for j in range(config["layers_per_block"]):
                h = self.resnet(f"down_blocks.{i}.resnets.{j}", h, temb)
                if kind.startswith("Attn"):
                    h = self.attention(f"down_blocks.{i}.attentions.{j}", h)
                skips.append(h)
            if i < blocks - 1:
                h = self.conv(f"down_blocks.{i}.downsamplers.0.conv", h, stride=2)
                skips.append(h)
        h = self.resnet("mid_block.resnets.0", h, temb)
        h = self.attention("mid_block.attentions.0", h)
        h = self.resnet("mid_block.resnets.1", h, temb)
        for i, kind in enumerate(config["up_block_types"]):
            for j in range(config["layers_per_block"] + 1):
                h = np.concatenate([h, skips.pop()], axis=1)
                h = self.resnet(f"up_blocks.{i}.resnets.{j}", h, temb)
                if kind.startswith("Attn"):
                    h = self.attention(f"up_blocks.{i}.attentions.{j}", h)
            if i < blocks - 1:
                h = h.repeat(2, axis=2).repeat(2, axis=3)
                h = self.conv(f"up_blocks.{i}.upsamplers.0.conv", h)
        h = self.silu(self.group_norm("conv_norm_out", h))
        return self.conv("conv_out", h)


def ddpm_sample(unet: UNet, recorder: Recorder, rng: np.random.Generator):
    betas = np.linspace(1e-4, 0.02, NUM_TRAIN_TIMESTEPS, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    size = unet.config["sample_size"]
    x = rng.standard_normal((BATCH, unet.config["in_channels"], size, size)).astype(np.float32)
    for t in range(NUM_TRAIN_TIMESTEPS - 1, -1, -1):
        recorder.timestep = t if t % RECORD_EVERY == 0 else None
        eps = unet(x, t).astype(np.float64)
        alpha_prod = alphas_cumprod[t]
        alpha_prod_prev = alphas_cumprod[t - 1] if t > 0 else 1.0
        beta_prod, beta_prod_prev = 1.0 - alpha_prod, 1.0 - alpha_prod_prev
        x0 = np.clip((x - np.sqrt(beta_prod) * eps) / np.sqrt(alpha_prod), -1.0, 1.0)
        x0_coeff = np.sqrt(alpha_prod_prev) * betas[t] / beta_prod
        xt_coeff = np.sqrt(alphas[t]) * beta_prod_prev / beta_prod
        mean = x0_coeff * x0 + xt_coeff * x
        if t > 0:
            variance = max(beta_prod_prev / beta_prod * betas[t], 1e-20)
            mean = mean + np.sqrt(variance) * rng.standard_normal(x.shape)
        x = mean.astype(np.float32)
        if t % 100 == 0:
            print(f"t={t:4d}  |x| max {np.abs(x).max():.3f}  |eps| max {np.abs(eps).max():.3f}")


def main():
    config = json.loads((MODEL / "config.json").read_text())
    weights = load_file(str(MODEL / "diffusion_pytorch_model.safetensors"))
    recorder = Recorder()
    ddpm_sample(UNet(weights, config, recorder), recorder, np.random.default_rng(SEED))

    layers, timesteps, values, channels, elements = zip(*recorder.rows)
    table = pa.table(
        {
            "layer": pa.array(layers, pa.string()),
            "timestep": pa.array(timesteps, pa.int32()),
            "values": pa.array(values, pa.list_(pa.float32())),
            "channel_absmax": pa.array(channels, pa.list_(pa.float32())),
            "elements": pa.array(elements, pa.int64()),
        }
    )
    table = table.sort_by([("layer", "ascending"), ("timestep", "ascending")])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, OUT, compression="zstd", row_group_size=8192)
    print(
        f"{OUT}: {table.num_rows} records, {len(set(layers))} layers, "
        f"{len(set(timesteps))} timesteps, {OUT.stat().st_size / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
