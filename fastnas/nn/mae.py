"""Masked-image reconstruction as the search objective: MAE-based unsupervised architecture search.

MAE-NAS (Hu, Chu, Zhang: "Masked Autoencoders Are Robust Neural Architecture Search Learners") replaces
the labelled cross-entropy of a DARTS / PC-DARTS search with masked image reconstruction: random patches
of the image are hidden, the supernet encodes what is left, and a light decoder fed by several stages of
the supernet (its hierarchical / multi-scale decoder, which the paper credits with avoiding DARTS's
collapse in the unsupervised setting) predicts the pixels; the loss is the mean squared error over the
hidden pixels. Both the weight step and the architecture step minimise that loss. No label is read.

Pieces:

- :func:`random_patch_mask`: MAE's per-image random patch masking (argsort of uniform noise), as a pixel
  mask (B, 1, H, W), True = hidden.
- :class:`MultiScaleDecoder`: stage features (finest first) -> 1x1 conv-BN-ReLU each -> bilinear upsample
  to the finest stage -> sum -> upsample to the image -> 3x3 conv-BN-ReLU -> 1x1 conv -> pixels.
- :class:`MAESearchModel`: the supernet (submodule ``encoder``) plus the decoder (``decoder``), with the
  supernet's search interface (``arch_parameters``, ``weight_parameters``, ``genotype``, ...) so that
  :class:`fastnas.search.step.SearchStep` and the engine drive it like a :class:`SearchNetwork`.
- :func:`mae_loss`: the ``loss_fn`` for ``SearchStep``; ignores ``y`` (works with ``y=None``).

Masking by zero-filling: a convnet has no token dropping, so hidden pixels are set to 0 before the stem
(the data is normalised per channel, so 0 is the dataset mean: the hidden region carries no
information about the image). A patch hidden in the input is hidden from the whole encoder.

Defaults, and why:

- ``patch_size=4`` on 32x32 images: 8x8 = 64 patches, the granularity of a 4x4 ViT on CIFAR and of the
  DARTS supernet's 8x8 last stage (one patch = one cell of the coarsest feature map).
- ``mask_ratio=0.5`` (32 of 64 patches hidden). MAE's 0.75 was chosen for ViTs on 224x224 images,
  where neighbouring patches are highly redundant and the encoder only sees the visible tokens. Here the
  encoder is a small convnet on 32x32 images with zero-filled holes, and at 0.75 most early receptive
  fields would lie mostly inside holes, which pushes the reconstruction towards a blurry local mean and
  weakens the signal that ranks the candidate operations (a reasoned choice, not one tuned here: no
  search was run to compare ratios). The convolutional masked-image line uses lower ratios than 0.75
  (SparK and ConvNeXt-V2's FCMAE about 0.6; MAE-NAS reports its search to be robust to the ratio and
  the patch size); 0.5 leaves as many patches visible as hidden. It is a constructor argument.
- ``decoder_channels=64``: the decoder stays small next to the supernet (it is thrown away after the
  search; only the genotype is kept).

Cost, measured (CPU, ``OMP_NUM_THREADS=1``, float32, torch 2.13 CPU build, on the shared 2-core
development machine (load ~2, so about +-5 % noise), ``SearchNetwork("darts", C=16, layers=8,
partial_channels=4)``, B=32, 32x32 images, median of 5 interleaved runs after a warm-up):

=====================================================  ==============  =================
                                                       classification  MAE (this module)
=====================================================  ==============  =================
forward + backward of every parameter                  1.97 s          2.10 s (+7 %)
one first-order ``SearchStep`` (arch step + weight)    3.36 s          3.43 s (+2 %)
=====================================================  ==============  =================

The decoder has 0.066 M parameters against the supernet's 0.30 M; it runs 64 channels at the finest
stage's resolution (32x32) and is the whole difference. The command is in ``tests/test_mae.py``'s
docstring.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["random_patch_mask", "MultiScaleDecoder", "MAESearchModel", "mae_loss", "masked_mse"]

Size = Union[int, Sequence[int]]


def _pair(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def random_patch_mask(batch: int, image_size: Size, patch_size: int, mask_ratio: float,
                      generator: Optional[torch.Generator] = None,
                      device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """MAE's random patch masking as a pixel mask.

    The image (H, W) (``image_size``: an int for square images or (H, W)) is cut into
    (H / p) x (W / p) patches of ``patch_size`` p; in every image independently exactly
    ``round(mask_ratio * n_patches)`` patches (Python's ``round``) are hidden, chosen uniformly at random:
    the first ones of the argsort of uniform noise, as MAE's ``random_masking``.

    The noise is drawn with ``generator`` if given, else from the global torch RNG of ``device`` (the
    default CPU generator, or the current CUDA device's), so a seeded run draws the same masks.

    Returns: bool (B, 1, H, W), True = hidden pixel; constant within each patch.

    Raises ValueError when H or W is not a multiple of p, when ``mask_ratio`` is not in (0, 1), or when
    the ratio rounds to no patch or to every patch (nothing to reconstruct, or nothing to see).
    """
    H, W = _pair(image_size)
    if patch_size <= 0 or H % patch_size or W % patch_size:
        raise ValueError(f"image size {(H, W)} must be a multiple of patch_size {patch_size}")
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    hp, wp = H // patch_size, W // patch_size
    n_patches = hp * wp
    n_masked = int(round(float(mask_ratio) * n_patches))
    if not 0 < n_masked < n_patches:
        raise ValueError(f"mask_ratio {mask_ratio} hides {n_masked} of {n_patches} patches; it must hide at "
                         "least one and leave at least one visible")
    if device is None and generator is not None:
        device = generator.device
    noise = torch.rand(batch, n_patches, generator=generator, device=device)
    order = noise.argsort(dim=1)
    patch_mask = torch.zeros(batch, n_patches, dtype=torch.bool, device=noise.device)
    patch_mask.scatter_(1, order[:, :n_masked], True)
    patch_mask = patch_mask.view(batch, 1, hp, wp)
    return patch_mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def masked_mse(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels only, all channels: for reconstruction and target
    (B, C, H, W) and mask (B, 1, H, W) (True = hidden), ``sum((r - t)^2 * mask) / (sum(mask) * C)``.
    Computed in float32 at least (half-precision reconstructions under autocast are upcast)."""
    r = reconstruction if reconstruction.dtype in (torch.float32, torch.float64) else reconstruction.float()
    t = target.to(r.dtype)
    m = mask.to(r.dtype).expand(r.shape[0], 1, *r.shape[2:])
    return ((r - t).pow(2) * m).sum() / (m.sum() * r.shape[1])


class MultiScaleDecoder(nn.Module):
    """MAE-NAS's hierarchical decoder: pixels from several stages of the encoder.

    Args:
        in_channels: the channel count of every input stage, finest first (e.g. (64, 128, 256) for the
            DARTS supernet with C=16).
        decoder_channels: the width of the decoder (default 64).
        out_channels: predicted image channels (3).

    Input: a list of feature maps, finest first, ``[(B, in_channels[0], h0, w0), (B, in_channels[1], h1,
    w1), ...]`` (coarser ones may have any smaller size), and ``image_size`` (H, W) (default: the finest
    map's size). Each map goes through 1x1 conv (no bias) + BN + ReLU to (B, decoder_channels, h_i, w_i),
    is upsampled (bilinear, ``align_corners=False``) to (h0, w0), and the maps are summed; the sum is
    upsampled to (H, W) (skipped when equal) and a head 3x3 conv-BN-ReLU then 1x1 conv (with bias) gives
    (B, out_channels, H, W).
    """

    def __init__(self, in_channels: Sequence[int], decoder_channels: int = 64, out_channels: int = 3):
        super().__init__()
        if not in_channels:
            raise ValueError("the decoder needs at least one input stage")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.decoder_channels, self.out_channels = decoder_channels, out_channels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, decoder_channels, 1, bias=False), nn.BatchNorm2d(decoder_channels),
                          nn.ReLU(inplace=True))
            for c in self.in_channels)
        self.head = nn.Sequential(
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, out_channels, 1))

    def forward(self, features: Sequence[torch.Tensor], image_size: Optional[Size] = None) -> torch.Tensor:
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        size = tuple(features[0].shape[-2:])
        out = None
        for f, lateral in zip(features, self.lateral):
            h = lateral(f)
            if tuple(h.shape[-2:]) != size:
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            out = h if out is None else out + h
        if image_size is not None and _pair(image_size) != size:
            out = F.interpolate(out, size=_pair(image_size), mode="bilinear", align_corners=False)
        return self.head(out)


class MAESearchModel(nn.Module):
    """A search supernet trained by masked image reconstruction (MAE-NAS).

    Args:
        supernet: a :class:`fastnas.nn.SearchNetwork` (anything with ``stage_outputs(x)`` and the search
            interface); becomes the submodule ``encoder``. Its classifier is kept (it stays in the state
            dict and in :meth:`weight_parameters`) but gets no gradient.
        image_size: H = W (int) or (H, W) of the search images (32 for CIFAR).
        patch_size, mask_ratio: the masking (see :func:`random_patch_mask`; defaults 4 and 0.5, the
            choice is explained in the module docstring).
        decoder_channels: width of the :class:`MultiScaleDecoder` (64).
        in_channels: image channels (3); the reconstruction has as many.

    At construction one dummy forward (batch 1, eval mode, no grad, on the supernet's device and dtype)
    through ``supernet.stage_outputs`` reads the stage channel counts; the supernet's mode and its
    buffers (BatchNorm running statistics) are restored afterwards.

    ``forward(x, mask=None)``: x (B, in_channels, H, W) -> reconstruction (B, in_channels, H, W). With a
    mask ((B, 1, H, W) or broadcastable, True = hidden) the hidden pixels of x are set to 0 before the
    encoder; with ``mask=None`` x is encoded unmasked (plain auto-encoding).

    ``reconstruction_loss(x, generator=None) -> (loss, None)`` draws a fresh mask per image (from
    ``generator``, else the global torch RNG of x's device: seeded runs are reproducible and a checkpoint
    of the global RNG state resumes the mask sequence) and returns the MSE over the hidden pixels.

    The search interface is the supernet's: ``arch_parameters``, ``named_arch_parameters``,
    ``genotype``, ``arch_weights``, ``arch_regularizer``, ``masked_alphas``, ``cell_kinds``,
    ``op_masks``, ``set_op_mask``, ``space``, ``primitives``, ``aux_skip``, ``aux_skip_weight`` (settable,
    forwarded to the supernet); :meth:`weight_parameters` is the supernet's weights plus the decoder's.
    """

    def __init__(self, supernet: nn.Module, image_size: Size = 32, patch_size: int = 4, mask_ratio: float = 0.5,
                 decoder_channels: int = 64, in_channels: int = 3):
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size, self.mask_ratio, self.in_channels = patch_size, float(mask_ratio), in_channels
        # validates the masking settings now rather than at the first step
        random_patch_mask(1, self.image_size, patch_size, mask_ratio)
        self.encoder = supernet
        self._recent_masks: List[Tuple[torch.Tensor, int, torch.Tensor]] = []
        self.stage_channels = self._probe_stage_channels(supernet, in_channels, self.image_size)
        self.decoder = MultiScaleDecoder(self.stage_channels, decoder_channels, in_channels)
        try:
            p = next(supernet.parameters())
            self.decoder.to(device=p.device, dtype=p.dtype)
        except StopIteration:
            pass

    @staticmethod
    def _probe_stage_channels(supernet: nn.Module, in_channels: int, image_size: Tuple[int, int]) -> Tuple[int, ...]:
        try:
            p = next(supernet.parameters())
            device, dtype = p.device, p.dtype
        except StopIteration:
            device, dtype = torch.device("cpu"), torch.get_default_dtype()
        was_training = supernet.training
        saved = [b.detach().clone() for b in supernet.buffers()]
        try:
            supernet.eval()
            with torch.no_grad():
                stages = supernet.stage_outputs(torch.zeros(1, in_channels, *image_size, device=device, dtype=dtype))
        finally:
            supernet.train(was_training)
            with torch.no_grad():
                for b, s in zip(supernet.buffers(), saved):
                    b.copy_(s)
        return tuple(int(s.shape[1]) for s in stages)

    # -- the objective ------------------------------------------------------------------------------
    def draw_mask(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A fresh random patch mask (B, 1, H, W) for the batch x, on x's device."""
        mask = random_patch_mask(x.shape[0], tuple(x.shape[-2:]), self.patch_size, self.mask_ratio,
                                 generator=generator, device=None if generator is not None else x.device)
        return mask.to(x.device)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) [+ mask (B, 1, H, W), True = hidden] -> reconstruction (B, C, H, W)."""
        if mask is not None:
            x = x.masked_fill(mask.to(device=x.device, dtype=torch.bool), 0.0)
        return self.decoder(self.encoder.stage_outputs(x), tuple(x.shape[-2:]))

    def reconstruction_loss(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Draws a mask, reconstructs; returns (MSE over the hidden pixels, all channels (0-d), None).

        Without a generator, a batch seen again (the same tensor object, unmodified) gets the mask it
        got last time: the unrolled step evaluates the training loss at w, w + R v and w - R v, and its
        finite difference is only meaningful on one mask (with a fresh mask per pass it measured mask
        noise / R: the arch-gradient norm grew 100x per 100x smaller R). The last two batches are
        remembered (the weight and the architecture batch of a step); a new batch draws a new mask.
        """
        if generator is not None:
            mask = self.draw_mask(x, generator)
        else:
            mask = next((m for t, v, m in self._recent_masks if t is x and v == x._version), None)
            if mask is None:
                mask = self.draw_mask(x)
                self._recent_masks = (self._recent_masks + [(x, x._version, mask)])[-2:]
        return masked_mse(self(x, mask), x, mask), None

    # -- the supernet's search interface ------------------------------------------------------------
    def named_arch_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return list(self.encoder.named_arch_parameters())

    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.encoder.arch_parameters())

    def named_weight_parameters(self):
        """The supernet's weights (names prefixed ``encoder.``) then the decoder's (``decoder.``)."""
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def weight_parameters(self) -> List[nn.Parameter]:
        """The supernet's weight parameters followed by the decoder's (never an architecture one)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.encoder.weight_parameters() if id(p) not in arch] + list(self.decoder.parameters())

    def genotype(self):
        return self.encoder.genotype()

    def arch_weights(self) -> Dict[str, torch.Tensor]:
        return self.encoder.arch_weights()

    def arch_regularizer(self) -> Optional[torch.Tensor]:
        regularizer = getattr(self.encoder, "arch_regularizer", None)
        return regularizer() if regularizer is not None else None

    def masked_alphas(self) -> Dict[str, torch.Tensor]:
        return self.encoder.masked_alphas()

    def cell_kinds(self) -> Tuple[str, ...]:
        return self.encoder.cell_kinds()

    def op_masks(self):
        return self.encoder.op_masks()

    def set_op_mask(self, op_mask) -> None:
        self.encoder.set_op_mask(op_mask)

    @property
    def space(self) -> str:
        return self.encoder.space

    @property
    def primitives(self):
        return self.encoder.primitives

    @property
    def aux_skip(self) -> bool:
        return self.encoder.aux_skip

    @property
    def aux_skip_weight(self) -> float:
        return self.encoder.aux_skip_weight

    @aux_skip_weight.setter
    def aux_skip_weight(self, value: float) -> None:
        self.encoder.aux_skip_weight = value


def mae_loss(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None):
    """``loss_fn`` for :class:`fastnas.search.step.SearchStep`: ``model.reconstruction_loss(x)``, i.e.
    (masked reconstruction MSE, None). ``y`` is never read (it may be None): the search is unsupervised."""
    del y
    return model.reconstruction_loss(x)
