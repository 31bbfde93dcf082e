"""Detail branch: image features at the input resolution for the mask decoder (our addition).

Not in the paper. SAM's mask decoder draws every mask from the image embedding (64 x 64 for
LiteMedSAM) upsampled 4x by two transposed convolutions: nothing at the input resolution
reaches it, so 1-3 px retinal vessels come out broken and blotchy (DRIVE Dice 45 with the
PPG alone). As HQ-SAM adds early, high-resolution features to the decoder's mask features, this
branch reads the model input itself (1 x 3 x S x S, the image encoder's input):

  stem   3x3 conv at S x S                        (fine edges)
  down   3x3 conv, stride 2, then two residual 3x3 convs at S/2, dilation 2 and 4 (context
         of ~35 px: a vessel against its background)
  fuse   S/2 upsampled, concatenated with the stem, 3x3 conv -> `dim` channels at S x S

and adds, per object, `gate(mask_token) . features` to the decoder's mask logits: the gate is a
linear map of the decoder's mask token (the same token SAM's hypernetwork reads), so each object
decides how much fine detail it takes. The gate starts at zero, so a fresh branch leaves the
decoder's output exactly as it was; it is trained with the PPG and LoRA frozen (train_lite.py
--detail).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DetailBranch(nn.Module):
    def __init__(self, token_dim: int = 256, dim: int = 32, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid1 = nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2)
        self.mid2 = nn.Conv2d(2 * width, 2 * width, 3, padding=4, dilation=4)
        self.fuse = nn.Conv2d(3 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, dim, 1)
        self.gate = nn.Linear(token_dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          image (torch.Tensor): 1 x 3 x S x S, the model input (preprocess.prepare_image).
        Returns:
          (torch.Tensor): 1 x dim x S x S.
        """
        a = F.gelu(self.stem(image))
        b = F.gelu(self.down(a))
        b = F.gelu(self.mid1(b)) + b
        b = F.gelu(self.mid2(b)) + b
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(F.gelu(self.fuse(torch.cat([a, b], 1))))

    def forward(self, image: torch.Tensor, mask_tokens: torch.Tensor, size=None) -> torch.Tensor:
        """
        Arguments:
          image (torch.Tensor): 1 x 3 x S x S.
          mask_tokens (torch.Tensor): K x token_dim, the decoder's mask token per object.
          size: the decoder's logit grid (4h, 4w) when it is not S x S (the features are then
            resampled to it; LiteMedSAM's is S x S).
        Returns:
          (torch.Tensor): K x 1 x 4h x 4w, added to the decoder's mask logits.
        """
        f = self.features(image)
        if size is not None and tuple(size) != tuple(f.shape[-2:]):
            f = F.interpolate(f, size=tuple(size), mode="bilinear", align_corners=False)
        _, c, h, w = f.shape
        g = self.gate(mask_tokens)  # K x dim
        return (g @ f.reshape(c, h * w)).reshape(-1, 1, h, w)
