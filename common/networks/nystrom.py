"""Nystrom attention (GiMP paper Eq. 1-2, after Nystromformer) and the two-layer WSI patch aggregator.

Our own implementation, written because the PyPI ``nystrom-attention`` package (the one TransMIL imports) has
three properties a patch aggregator must not have:

* its Moore-Penrose iteration starts from ``A^T / (max row sum * max column sum)`` with the maxima taken over the
  *whole batch*, so a bag's output depends on the other bags in its batch; here every bag's start is computed
  from its own matrices (over its heads, exactly what the package does for a batch of one bag, which is how
  TransMIL trains), so a bag gives the same output alone or in any batch;
* it pads a bag at the *front* with zero tokens up to a multiple of the number of landmarks and lets those zeros
  take part as keys and in the landmark means (and TransMIL pins release 0.0.9, which then keeps the *first* ``n``
  outputs, i.e. drops the outputs of the last tokens); here no phantom token exists: a bag's landmarks are the
  means of ``min(m, n)`` contiguous, near-equal segments of its own tokens;
* it takes a key mask but a fully padded landmark still receives uniform weights; here padded tokens and empty
  landmarks are excluded exactly, so variable-length bags can share a batch (right padding + ``mask``).

Where ``n`` is a multiple of ``num_landmarks`` (and for one bag) the two implementations compute the same
function with the same weights; they differ only in the padding cases above. Parameter names are the package's
(``to_qkv``, ``to_out.0``, ``res_conv``) and the aggregator's are TransMIL's (``_fc1``, ``cls_token``, ``layer1``,
``layer2``, ``norm``), so TransMIL / SurvPath aggregator checkpoints load with ``strict=False`` (their PPEG
``pos_layer.*`` and classifier ``_fc2.*`` keys are left over).

Memory and time are linear in the bag length ``n``: the two ``n x m`` products of Eq. 2 run through PyTorch's
fused ``scaled_dot_product_attention`` (whose CPU and CUDA kernels tile them, so not even the ``n x m`` softmax is
held in memory), and no ``n x n`` matrix is ever formed (a test records every tensor of a forward and backward).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["moore_penrose_pinv", "segment_landmarks", "NystromAttention", "TransLayer", "NystromAggregator"]


def moore_penrose_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of Nystromformer (its Eq. 16), started per bag.

    ``Z_0 = X^T / (max_i sum_j |X_ij| * max_j sum_i |X_ij|)`` with both maxima taken over one bag's matrices
    (all its heads), then ``Z <- 1/4 Z (13 I - X Z (15 I - X Z (7 I - X Z)))``. The package takes the maxima over
    the whole batch instead; for a single bag the two are identical.

    Args:
        x: ``[B, H, m, m]`` (one bag per leading index; any number of middle dims is allowed).
        iters: number of iterations (Nystromformer and TransMIL use 6).

    Returns:
        ``[B, H, m, m]`` approximate pseudo-inverse.

    Example::

        >>> a = torch.tensor([[[[2.0, 0.0], [0.0, 4.0]]]])
        >>> moore_penrose_pinv(a, iters=20)
        tensor([[[[0.5000, 0.0000],
                  [0.0000, 0.2500]]]])
    """
    abs_x = x.abs()
    row_sums = abs_x.sum(-1).flatten(1).amax(1)  # [B]
    col_sums = abs_x.sum(-2).flatten(1).amax(1)  # [B]
    scale = (row_sums * col_sums).reshape(-1, *([1] * (x.ndim - 1)))
    z = x.transpose(-1, -2) / scale
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_landmarks(x: torch.Tensor, lengths: torch.Tensor, num_landmarks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment-means landmarks of each bag: ``Q~``, ``K~`` of Eq. 2.

    Bag ``b`` with ``n_b`` valid tokens (a prefix of the sequence) gets ``m_b = min(num_landmarks, n_b)`` landmarks;
    token ``j < n_b`` belongs to segment ``floor(j * m_b / n_b)``, so the segments are contiguous and their sizes
    differ by at most one (``n_b / m`` each when ``m`` divides ``n_b``, the package's segments). Landmarks
    ``m_b..m-1`` are empty (zero) and flagged ``False``.

    Args:
        x: ``[B, H, N, d]`` queries or keys, padded tokens anywhere after each bag's ``n_b``.
        lengths: ``[B]`` valid tokens per bag, each in ``1..N``.
        num_landmarks: ``m``.

    Returns:
        landmarks ``[B, H, m, d]`` and their validity ``[B, m]`` (bool).

    Example::

        >>> x = torch.arange(6.0).reshape(1, 1, 6, 1)
        >>> lm, valid = segment_landmarks(x, torch.tensor([6]), 3)
        >>> lm.flatten().tolist(), valid.tolist()
        ([0.5, 2.5, 4.5], [[True, True, True]])
    """
    b, h, n, d = x.shape
    m = num_landmarks
    pos = torch.arange(n, device=x.device)
    lengths = lengths.to(x.device).long()
    m_b = lengths.clamp(max=m)  # [B]
    seg = torch.div(pos[None, :] * m_b[:, None], lengths[:, None], rounding_mode="floor")  # [B, N]
    seg = torch.where(pos[None, :] < lengths[:, None], seg, torch.full_like(seg, m))  # padding -> bucket m
    sums = x.new_zeros(b, h, m + 1, d).scatter_add_(2, seg[:, None, :, None].expand(b, h, n, d), x)
    counts = x.new_zeros(b, m + 1).scatter_add_(1, seg, x.new_ones(b, n))[:, :m]  # [B, m]
    valid = torch.arange(m, device=x.device)[None, :] < m_b[:, None]  # [B, m]
    return sums[:, :, :m] / counts.clamp_min(1.0)[:, None, :, None], valid


class NystromAttention(nn.Module):
    """Multi-head Nystrom attention, paper Eq. 1-2, one bag at a time inside a batch.

    ``out = softmax(Q K~^T / sqrt(d)) pinv(softmax(Q~ K~^T / sqrt(d))) softmax(Q~ K^T / sqrt(d)) V`` with segment-
    means landmarks ``Q~, K~`` (:func:`segment_landmarks`), the iterative pseudo-inverse
    (:func:`moore_penrose_pinv`), optionally plus the package's depth-wise convolution of ``V`` along the sequence
    (``residual``). The paper writes the clustering of tokens into ``m`` landmarks without saying how; segment
    means are Nystromformer's choice and the package's. Constructor arguments and parameter names are the
    package's, so its weights load with ``load_state_dict`` (its ``eps`` is not needed here: an empty segment is
    excluded rather than divided by ``eps``).

    Args:
        dim: token width.
        dim_head: width per head ``d`` of Eq. 2.
        heads: number of heads.
        num_landmarks: ``m``, the number of landmarks (a bag shorter than ``m`` uses every token as a landmark,
            which makes Eq. 2 exact attention).
        pinv_iterations: iterations of the pseudo-inverse (6 as Nystromformer / TransMIL).
        residual: add the depth-wise convolution of ``V`` along the sequence (package default, TransMIL: on).
        residual_conv_kernel: its kernel length (package: 33).
        dropout: dropout after the output projection.

    Example::

        >>> attn = NystromAttention(dim=32, dim_head=8, heads=4, num_landmarks=16)
        >>> x = torch.randn(2, 100, 32)
        >>> mask = torch.arange(100)[None] < torch.tensor([[100], [60]])
        >>> attn(x, mask).shape
        torch.Size([2, 100, 32])
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_landmarks < 1 or pinv_iterations < 0:
            raise ValueError(
                f"need num_landmarks >= 1 and pinv_iterations >= 0, got {num_landmarks}, {pinv_iterations}"
            )
        inner = heads * dim_head
        self.heads = heads
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def landmark_kernel_pinv(self, q_l: torch.Tensor, k_l: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``pinv(softmax(Q~ K~^T / sqrt(d)))`` in at least float32 (also under autocast: the iteration is unstable
        in half precision), with each bag's empty landmarks as an identity block so they drop out of the product."""
        with torch.autocast(device_type=q_l.device.type, enabled=False):
            dtype = torch.promote_types(q_l.dtype, torch.float32)  # half -> float32, float64 stays
            q_l, k_l = q_l.to(dtype), k_l.to(dtype)
            pair = valid[:, None, :, None] & valid[:, None, None, :]  # [B, 1, m, m]
            kernel = (q_l @ k_l.transpose(-1, -2)).masked_fill(~pair, torch.finfo(q_l.dtype).min).softmax(-1)
            eye = torch.eye(q_l.shape[2], device=q_l.device, dtype=q_l.dtype)
            kernel = torch.where(valid[:, None, :, None], kernel, eye)
            return moore_penrose_pinv(kernel, self.pinv_iterations)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attn_matrices: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Attend within each bag.

        Args:
            x: ``[B, N, dim]`` tokens, each bag right-padded to ``N``.
            mask: ``[B, N]`` bool, ``True`` for real tokens; they must form a prefix of each row (``None``: all real).
            return_attn_matrices: also return ``(softmax(Q K~^T), pinv, softmax(Q~ K^T))``, each ``O(N m)``.

        Returns:
            ``[B, N, dim]``, zero at padded positions (with the three matrices when asked).
        """
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        lengths = _prefix_lengths(mask, b, n, x.device)  # [B]
        valid = torch.arange(n, device=x.device)[None, :] < lengths[:, None]  # [B, N]
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # Eq. 1: Q = H W_Q, K = H W_K, V = H W_V
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        keep = valid[:, None, :, None].to(q.dtype)
        q, k, v = q * (keep * self.scale), k * keep, v * keep  # padded tokens: zero q, k, v
        q_l, landmark_valid = segment_landmarks(q, lengths, m)  # Q~: [B, H, m, d]
        k_l, _ = segment_landmarks(k, lengths, m)  # K~: [B, H, m, d]
        kernel_inv = self.landmark_kernel_pinv(q_l, k_l, landmark_valid).to(q.dtype)  # [B, H, m, m]
        key_mask, landmark_mask = valid[:, None, None, :], landmark_valid[:, None, None, :]
        # Eq. 2, right to left: softmax(Q~ K^T / sqrt(d)) V, then pinv(.) times it, then softmax(Q K~^T / sqrt(d)) (.)
        context = F.scaled_dot_product_attention(q_l, k, v, attn_mask=key_mask, scale=1.0)  # [B, H, m, d]
        out = F.scaled_dot_product_attention(q, k_l, kernel_inv @ context, attn_mask=landmark_mask, scale=1.0)
        if self.residual:
            out = out + self.res_conv(v)  # [B, H, N, d]
        out = self.to_out(out.transpose(1, 2).flatten(2)) * valid[..., None].to(q.dtype)  # [B, N, dim]
        if not return_attn_matrices:
            return out
        attn1 = (q @ k_l.transpose(-1, -2)).masked_fill(~landmark_mask, torch.finfo(q.dtype).min).softmax(-1)
        attn3 = (q_l @ k.transpose(-1, -2)).masked_fill(~key_mask, torch.finfo(q.dtype).min).softmax(-1)
        return out, (attn1, kernel_inv, attn3)


def _prefix_lengths(mask: torch.Tensor | None, b: int, n: int, device: torch.device) -> torch.Tensor:
    """Valid tokens per bag from a prefix mask ``[B, N]`` (a clear error when it is not a prefix or is empty)."""
    if mask is None:
        return torch.full((b,), n, dtype=torch.long, device=device)
    if mask.shape != (b, n):
        raise ValueError(f"mask must be [B, N] = [{b}, {n}], got {list(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"empty bag(s) at batch index {torch.nonzero(lengths == 0).flatten().tolist()}")
    if not bool((mask == (torch.arange(n, device=mask.device)[None, :] < lengths[:, None])).all()):
        raise ValueError("mask must mark each bag's tokens as a prefix (right padding); found a gap")
    return lengths.to(device)


class TransLayer(nn.Module):
    """Pre-norm Nystrom attention with a residual, TransMIL's layer (no feed-forward block).

    Args:
        dim: token width.
        kwargs: :class:`NystromAttention` arguments.

    Example::

        >>> TransLayer(32, dim_head=8, heads=4, num_landmarks=8)(torch.randn(1, 20, 32)).shape
        torch.Size([1, 20, 32])
    """

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, **kwargs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.attn(self.norm(x), mask)


class NystromAggregator(nn.Module):
    """The GiMP patch aggregator (section 2.2): input projection, ``CLS_img``, Nystrom layers, final norm.

    ``H_p [B, N, 1024] -> Linear + ReLU -> [CLS_img; H] -> layer1 -> layer2 -> LayerNorm`` returning every token,
    so ``out[:, 0]`` is ``CLS_img`` and ``out[:, 1:]`` feed the reconstruction decoder. Attribute names are
    TransMIL's so its checkpoints load (``strict=False``).

    TransMIL's PPEG (depth-wise 3/5/7 convolutions after folding the sequence into a square) is left out: the paper
    describes the aggregator as projection + ``CLS_img`` + two Nystrom layers (Eq. 1-2) and reports it beating
    TransMIL, so it is not TransMIL; the square fold needs each bag duplicated to a square length, which breaks
    the exactness of right-padded variable-length batches; and the package's residual convolution along the
    sequence (``residual=True``) already mixes neighbouring patches. Its default widths are TransMIL's (512, 8
    heads of 64, 256 landmarks, dropout 0.1), the paper gives none.

    Args:
        in_features: patch feature width (CLAM's truncated ResNet-50: 1024).
        dim: token width ``d`` (``CLS_pat`` is ``2d`` with a GroupMSA of the same width).
        num_layers: Nystrom layers (paper: 2), named ``layer1``, ``layer2``, ... as in TransMIL.
        heads: attention heads.
        dim_head: width per head (default ``dim // heads``).
        num_landmarks: landmarks ``m`` (default ``dim // 2`` as TransMIL).
        pinv_iterations, residual, residual_conv_kernel, dropout: see :class:`NystromAttention`.

    Example::

        >>> agg = NystromAggregator(in_features=16, dim=32, heads=4, num_landmarks=8)
        >>> agg(torch.randn(2, 50, 16)).shape  # CLS_img + 50 tokens
        torch.Size([2, 51, 32])
    """

    def __init__(
        self,
        in_features: int = 1024,
        dim: int = 512,
        num_layers: int = 2,
        heads: int = 8,
        dim_head: int | None = None,
        num_landmarks: int | None = None,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_conv_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.dim = dim
        self.num_layers = num_layers
        self._fc1 = nn.Sequential(nn.Linear(in_features, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        attn = dict(
            dim_head=dim_head or dim // heads, heads=heads, num_landmarks=num_landmarks or dim // 2,
            pinv_iterations=pinv_iterations, residual=residual, residual_conv_kernel=residual_conv_kernel,
            dropout=dropout,
        )  # fmt: skip
        for i in range(num_layers):
            self.add_module(f"layer{i + 1}", TransLayer(dim, **attn))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregate bags.

        Args:
            x: ``[B, N, in_features]`` patch features, right-padded.
            mask: ``[B, N]`` bool prefix mask of real patches (``None``: all real).

        Returns:
            ``[B, 1 + N, dim]`` normalised tokens, ``CLS_img`` first (padded positions are not meaningful).
        """
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"expected patch features [B, N, {self.in_features}], got {list(x.shape)}")
        h = self._fc1(x)  # [B, N, dim]
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)  # H_p^0: [B, 1 + N, dim]
        if mask is not None:
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask.bool()], dim=1)  # CLS_img is always real
        for i in range(self.num_layers):
            h = getattr(self, f"layer{i + 1}")(h, mask)  # H_p^{l+1}, Eq. 2
        return self.norm(h)
