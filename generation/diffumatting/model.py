"""DiffuMatting's own modules (ECCV 2024; docs/design.md, "Generation"): the green-token
cross-attention probe, the Sobel detail loss (Eq. 4–5), and the latent matting head on a VAE-decoder
feature map."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn


class GreenAttentionStore:
    """Collects, per cross-attention layer, the attention paid to the "green" token(s).

    Set ``token_positions`` (one list of token indices per batch row) and ``latent_size`` before a
    UNet forward; afterwards ``maps`` holds one ``B×h×w`` map per cross-attention layer: the
    attention probability of each query pixel on the green tokens, summed over those tokens and
    averaged over heads.
    """

    def __init__(self) -> None:
        self.token_positions: list[list[int]] = []
        self.latent_size: tuple[int, int] = (0, 0)
        self.maps: list[torch.Tensor] = []

    def reset(self, token_positions: list[list[int]], latent_size: tuple[int, int]) -> None:
        self.token_positions = token_positions
        self.latent_size = latent_size
        self.maps = []

    def record(self, probs: torch.Tensor, heads: int) -> None:
        """``probs``: ``(B·heads)×N×L`` softmax over the ``L`` text tokens for ``N`` query pixels."""
        bh, n, length = probs.shape
        b = bh // heads
        select = torch.zeros(b, length, dtype=probs.dtype, device=probs.device)
        for i, pos in enumerate(self.token_positions[:b]):
            select[i, pos] = 1.0
        green = torch.einsum("bhnl,bl->bn", probs.view(b, heads, n, length), select) / heads
        h0, w0 = self.latent_size
        factor = round((h0 * w0 / n) ** 0.5)
        self.maps.append(green.view(b, h0 // factor, w0 // factor))


class GreenAttnProcessor:
    """diffusers' plain attention processor that also hands the cross-attention probabilities to a
    :class:`GreenAttentionStore`. Installed on every cross-attention layer (``attn2``) of the UNet.
    """

    def __init__(self, store: GreenAttentionStore) -> None:
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (
            encoder_hidden_states.shape if is_cross else hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)
        if is_cross:
            self.store.record(probs, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_green_probe(unet: UNet2DConditionModel) -> GreenAttentionStore:
    """Put a :class:`GreenAttnProcessor` on every cross-attention layer; self-attention layers keep
    their processors. Returns the store the processors write to."""
    store = GreenAttentionStore()
    processors = {
        name: GreenAttnProcessor(store) if name.endswith("attn2.processor") else proc
        for name, proc in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
    return store


def green_background_loss(
    maps: Sequence[torch.Tensor], mask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Green-background control loss: mean over layers of mean ``|A_green − (1 − M)|``.

    ``maps``: per-layer ``B×h×w`` green-token attention; ``mask``: object mask ``B×1×H×W`` in
    [0, 1], area-resized to each layer's resolution; ``rows`` (bool ``B``): the rows whose prompt
    holds the green word, all by default. A row trained on the empty prompt (prompt dropout) has
    no green token to steer and does not count; with no such row the loss is 0.
    """
    if not maps:
        raise ValueError("no cross-attention maps were recorded: is the green probe installed?")
    if rows is None:
        rows = torch.ones(len(mask), dtype=torch.bool, device=mask.device)
    if not rows.any():
        return maps[0].sum() * 0.0
    losses = []
    for a in maps:
        background = 1.0 - F.adaptive_avg_pool2d(mask, a.shape[-2:])[:, 0]
        losses.append((a - background).abs()[rows].mean())
    return torch.stack(losses).mean()


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_sum(x: torch.Tensor) -> torch.Tensor:
    """``x ⊗ S_x + x ⊗ S_y`` of Eq. 4, channel by channel: the sum of the horizontal and the
    vertical Sobel responses of ``B×C×H×W`` (replicate padding), same shape."""
    c = x.shape[1]
    kx = _SOBEL_X.to(x)
    weight = (kx + kx.T)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=c)


def high_frequency(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DiffuMatting's Eq. 4, ``H = (I ⊗ S_x + I ⊗ S_y) ⊙ I ⊙ M``: the Sobel responses of ``x``
    (``B×C×h×w``) weighted by ``x`` itself and by the object mask ``mask`` (``B×1×H×W`` in [0, 1],
    area-resized to ``h×w``)."""
    m = F.adaptive_avg_pool2d(mask, x.shape[-2:])
    return sobel_sum(x) * x * m


def detail_loss(z0_pred: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detailed-enhancement loss, DiffuMatting's Eq. 5: ``H(ẑ₀) − H(z₀)`` (:func:`high_frequency`)
    reduced to its mean absolute value over every element of ``B×C×h×w``.

    Eq. 5 writes ``H`` of the latents ẑ₀ and z₀, so it is applied in latent space, channel by
    channel; it gives the difference without a norm, and a loss needs a scalar: the mean
    absolute value is the toolkit's choice (docs/fidelity.md, "Generators").
    """
    return (high_frequency(z0_pred, mask) - high_frequency(z0, mask)).abs().mean()


class MattingHead(nn.Module):
    """Latent matting head: Conv3×3 → SiLU → Conv3×3 on a VAE-decoder feature map.

    Input ``B×C×H×W`` (the decoder's last, group-normalised feature map, image resolution);
    output alpha logits ``B×1×H×W``.
    """

    def __init__(self, in_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(8, in_channels // 2)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.act = nn.SiLU()
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(features)))


def matting_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 + Dice between the head's alpha (sigmoid of ``B×1×H×W`` logits) and the mask."""
    alpha = logits.sigmoid()
    l1 = (alpha - mask).abs().mean()
    inter = (alpha * mask).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (alpha.flatten(1).sum(1) + mask.flatten(1).sum(1) + 1)
    return l1 + dice.mean()


@contextmanager
def decoder_features(vae: AutoencoderKL) -> Iterator[list[torch.Tensor]]:
    """While active, every ``vae.decode`` appends the decoder's last feature map (``B×C×H×W``,
    image resolution) to the yielded list: the output of its final group norm, just before
    ``conv_out``. Normalised, so the matting head's sigmoid does not start saturated whatever the
    scale the decoder's activations grew to in training."""
    captured: list[torch.Tensor] = []
    handle = vae.decoder.conv_norm_out.register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    try:
        yield captured
    finally:
        handle.remove()


def decoder_feature_channels(vae: AutoencoderKL) -> int:
    """Channels of the feature map :func:`decoder_features` captures."""
    return int(vae.config.block_out_channels[0])
