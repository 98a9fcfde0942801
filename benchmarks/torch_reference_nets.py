"""The reference's three networks written out in PyTorch (for benchmarks/torch_reference.py)."""

from __future__ import annotations

# Imported only by the PyTorch side of issue 13's side-by-side benchmark, in a virtualenv that has
# PyTorch; the project never imports it. `preset` is one of benchmarks.torch_reference.PRESETS.

import math

DROP_PATH_RATE = 0.05  # encoder stochastic depth, rising linearly over the blocks (as the package)


def build_networks(preset: dict):
  """The three networks of `preset` (PyTorch modules, float32, random weights)."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
      return super().forward(x.float()).type(x.dtype)

  def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

  def zero(module):
    for p in module.parameters():
      p.detach().zero_()
    return module

  class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, groups, up=False, down=False):
      super().__init__()
      self.in_norm, self.in_conv = GroupNorm32(groups, ch), nn.Conv2d(ch, out_ch, 3, padding=1)
      self.up, self.down = up, down
      self.emb = nn.Linear(emb_ch, 2 * out_ch)
      self.out_norm = GroupNorm32(groups, out_ch)
      self.out_conv = zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
      self.skip = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x):
      if self.up:
        return F.interpolate(x, scale_factor=2, mode="nearest")
      return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x, emb):
      h = self._resample(F.silu(self.in_norm(x)))
      x = self._resample(x)
      h = self.in_conv(h)
      scale, shift = torch.chunk(self.emb(F.silu(emb))[..., None, None], 2, dim=1)
      h = self.out_norm(h) * (1 + scale) + shift
      return self.skip(x) + self.out_conv(F.silu(h))

  class AttentionBlock(nn.Module):
    def __init__(self, ch, head_ch, groups):
      super().__init__()
      self.heads = ch // head_ch
      self.norm = GroupNorm32(groups, ch)
      self.qkv = nn.Conv1d(ch, 3 * ch, 1)
      self.proj_out = zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x, emb=None):
      b, c, *spatial = x.shape
      x = x.reshape(b, c, -1)
      qkv = self.qkv(self.norm(x))
      length, ch = qkv.shape[-1], c // self.heads
      q, k, v = qkv.chunk(3, dim=1)
      scale = 1 / math.sqrt(math.sqrt(ch))
      w = torch.einsum("bct,bcs->bts", (q * scale).view(b * self.heads, ch, length),
                       (k * scale).view(b * self.heads, ch, length))
      w = torch.softmax(w.float(), dim=-1).type(w.dtype)
      a = torch.einsum("bts,bcs->bct", w, v.reshape(b * self.heads, ch, length))
      return (x + self.proj_out(a.reshape(b, -1, length))).reshape(b, c, *spatial)

  class Seq(nn.ModuleList):
    def forward(self, x, emb):
      for layer in self:
        x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
      return x

  class UNet(nn.Module):
    """Diffusion UNet: [B, 1, H, W], t [B], cond [B, cond_dim] -> [B, 1, H, W]."""

    def __init__(self, mc, mults, nres, head_ch, groups, cond_dim):
      super().__init__()
      self.mc, emb = mc, 8 * mc
      self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
      self.label_emb = nn.Sequential(nn.Linear(cond_dim, 4 * mc), nn.SiLU(),
                                     nn.Linear(4 * mc, 4 * mc))
      self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(1, mc, 3, padding=1)])])
      chans, ch = [mc], mc
      for level, mult in enumerate(mults):
        for _ in range(nres):
          self.input_blocks.append(Seq([ResBlock(ch, emb, mult * mc, groups)]))
          ch = mult * mc
          chans.append(ch)
        if level != len(mults) - 1:
          self.input_blocks.append(Seq([ResBlock(ch, emb, ch, groups, down=True)]))
          chans.append(ch)
      self.middle = Seq([ResBlock(ch, emb, ch, groups), AttentionBlock(ch, head_ch, groups),
                         ResBlock(ch, emb, ch, groups)])
      self.output_blocks = nn.ModuleList()
      for level, mult in list(enumerate(mults))[::-1]:
        for i in range(nres + 1):
          layers = [ResBlock(ch + chans.pop(), emb, mult * mc, groups)]
          ch = mult * mc
          if level and i == nres:
            layers.append(ResBlock(ch, emb, ch, groups, up=True))
          self.output_blocks.append(Seq(layers))
      self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(),
                               zero(nn.Conv2d(mc, 1, 3, padding=1)))

    def forward(self, x, t, cond):
      emb = torch.cat([self.time_embed(timestep_embedding(t, self.mc)), self.label_emb(cond)], 1)
      hs, h = [], x
      for block in self.input_blocks:
        h = block(h, emb)
        hs.append(h)
      h = self.middle(h, emb)
      for block in self.output_blocks:
        h = block(torch.cat([h, hs.pop()], dim=1), emb)
      return self.out(h)

  class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, drop):
      super().__init__()
      cout = 4 * width
      self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
      self.drop = drop
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      if self.training and self.drop > 0:  # stochastic depth, per sample
        keep = (torch.rand(y.shape[0], 1, 1, 1) >= self.drop).to(y.dtype) / (1 - self.drop)
        y = y * keep
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Encoder(nn.Module):
    """ResNet (timm layout, 1 input channel) + linear head: [B, 1, H, W] -> [B, cond_dim]."""

    def __init__(self, stage_sizes, width, cond_dim):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(1, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
      blocks, cin, n, i = [], width, sum(stage_sizes), 0
      for s, size in enumerate(stage_sizes):
        for b in range(size):
          rate = DROP_PATH_RATE * i / max(n - 1, 1)
          blocks.append(Bottleneck(cin, width * 2 ** s, 2 if (b == 0 and s > 0) else 1, rate))
          cin, i = 4 * width * 2 ** s, i + 1
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(cin, cond_dim)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      return self.fc(self.blocks(x).mean(dim=(2, 3)))

  def middle_divisor(c):
    divs = sorted({d for i in range(1, int(math.sqrt(c)) + 1) if c % i == 0 for d in (i, c // i)})
    return divs[len(divs) // 2]

  class WSConv2d(nn.Conv2d):
    def forward(self, x):
      w = self.weight
      w = w - w.mean(dim=(1, 2, 3), keepdim=True)
      w = w / (w.view(w.size(0), -1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
      return F.conv2d(x, w, self.bias)

  class Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i):
      ctx.save_for_backward(i)
      return i * torch.sigmoid(i)

    @staticmethod
    def backward(ctx, g):
      (i,) = ctx.saved_tensors
      s = torch.sigmoid(i)
      return g * (s * (1 + i * (1 - s)))

  class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.convs = nn.ModuleList([WSConv2d(cin, cout, 3), WSConv2d(cout, cout, 3)])
      self.norms = nn.ModuleList([nn.GroupNorm(middle_divisor(cout), cout) for _ in range(2)])

    def forward(self, x):
      for conv, norm in zip(self.convs, self.norms):
        x = norm(Swish.apply(conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))))
      return x

  class SegUnet(nn.Module):
    """Siamese DAE UNet: (reconstruction, input) [B, 1, H, W] each -> logits [B, 1, H, W]."""

    def __init__(self, wf, depth=4):
      super().__init__()
      self.down, prev = nn.ModuleList(), 1
      for i in range(depth):
        self.down.append(ConvBlock(prev, 2 ** (wf + i)))
        prev = 2 ** (wf + i)
      self.ups, self.up_convs = nn.ModuleList(), nn.ModuleList()
      for i in reversed(range(depth - 1)):
        self.ups.append(nn.ConvTranspose2d(2 * prev, 2 ** (wf + i) * 2, 2, stride=2))
        self.up_convs.append(ConvBlock(2 * prev, 2 ** (wf + i) * 2))
        prev = 2 ** (wf + i)
      self.last = nn.Conv2d(2 * prev, 1, 1)

    def _down(self, x):
      blocks = []
      for i, block in enumerate(self.down):
        x = block(x)
        blocks.append(x)
        if i != len(self.down) - 1:
          x = F.avg_pool2d(x, 2)
      return x, blocks

    def forward(self, reco, x):
      z1, b1 = self._down(x - reco)
      z2, b2 = self._down(x)
      z, blocks = torch.cat([z1, z2], 1), [torch.cat(p, 1) for p in zip(b1, b2)]
      for i, (up, conv) in enumerate(zip(self.ups, self.up_convs)):
        z = conv(torch.cat([up(z), blocks[-i - 2]], 1))
      return self.last(z)

  stages, width, cond_dim = preset["encoder"]
  mc, mults, nres, head_ch, groups = preset["unet"]
  return (Encoder(stages, width, cond_dim), UNet(mc, mults, nres, head_ch, groups, cond_dim),
          SegUnet(preset["segnet_wf"]))
