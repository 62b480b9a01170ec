"""A reference convolution, built the way the textbook explains it: im2col + one matrix product.

Chellapilla, Puri & Simard 2006, "High Performance Convolutional Neural Networks for Document
Processing" ("unrolling convolution"): copy every receptive field of the input into a column of
a matrix (im2col), lay the kernels out as the rows of a second matrix, and the layer's forward
and back-propagation become matrix-matrix products, which BLAS does fast. Caffe (Jia et al. 2014,
"Caffe: Convolutional Architecture for Fast Feature Embedding") made this the standard
convolution; the cs231n notes ("Convolutional Neural Networks", "Implementation as Matrix
Multiplication") teach it the same way.

With X the input (B, C, H, W), W the kernels (O, C/g, kh, kw), g groups and L = Hout * Wout
output positions, per image and group:

    Xcol = im2col(X)             (C/g * kh * kw, L)    one receptive field per column
    Y    = Wrow @ Xcol + b       (O/g, L)              Wrow = W as (O/g, C/g * kh * kw)

and backward is two more products and the adjoint of im2col (col2im, which sums overlapping
fields back into the image):

    dW   = dY @ Xcol^T           summed over images
    dX   = col2im(Wrow^T @ dY)
    db   = dY summed over images and positions

`torch.nn.functional.unfold` / `fold` are the im2col / col2im primitives; everything else is the
products above, written out in `_Im2colConv2dFunction` (forward and backward). This is a
reference for reading and testing, not a fast path: it materialises Xcol, about kh * kw / stride^2
times the input's size, which PyTorch's own kernels mostly avoid (implicit GEMM, direct, Winograd
or FFT algorithms in cuDNN and oneDNN).
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

Size2 = Union[int, Tuple[int, int]]


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output positions along one axis (the formula F.conv2d uses)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Im2colConv2dFunction(torch.autograd.Function):
    """Y = Wrow @ im2col(X) + b, with the backward written as products and col2im (no autograd
    through unfold). Like Caffe, backward recomputes Xcol from X instead of keeping it, so the
    saved activations are those of an ordinary convolution (X and W), not Xcol. Keeping Xcol
    instead (as the cs231n assignment code does) made benchmarks/im2col.py's LeNet-5 step 10-20%
    faster on a 2-core CPU, at 19 times C1's input in saved memory."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                groups: int) -> torch.Tensor:
        B, C, H, W = x.shape
        O, Cg, kh, kw = weight.shape
        g, K = groups, Cg * kh * kw  # K: rows of Xcol per group, one per kernel weight
        Hout = _out_size(H, kh, stride[0], padding[0], dilation[0])
        Wout = _out_size(W, kw, stride[1], padding[1], dilation[1])
        cols = F.unfold(x, (kh, kw), dilation, padding, stride)  # (B, C * kh * kw, L), c-major
        cols = cols.view(B, g, K, Hout * Wout)  # (B, g, K, L): group i owns channels i*C/g...
        w = weight.reshape(g, O // g, K)  # (g, O/g, K): one kernel per row
        y = torch.matmul(w, cols)  # (B, g, O/g, L): the convolution, one product per image and group
        y = y.view(B, O, Hout, Wout)  # (B, O, Hout, Wout)
        if bias is not None:
            y = y + bias.view(1, O, 1, 1)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, g = ctx.geometry
        B, C, H, W = x.shape
        O, Cg, kh, kw = weight.shape
        K, L = Cg * kh * kw, grad_y.shape[2] * grad_y.shape[3]
        gy = grad_y.reshape(B, g, O // g, L)  # (B, g, O/g, L)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = weight.reshape(g, O // g, K).transpose(1, 2)  # (g, K, O/g)
            grad_cols = torch.matmul(w_t, gy)  # (B, g, K, L): dXcol = Wrow^T @ dY
            # col2im: each column goes back to its receptive field; overlapping fields add up
            grad_x = F.fold(grad_cols.reshape(B, C * kh * kw, L), (H, W), (kh, kw), dilation, padding,
                            stride)  # (B, C, H, W)
        if ctx.needs_input_grad[1]:
            cols = F.unfold(x, (kh, kw), dilation, padding, stride).view(B, g, K, L)  # recomputed
            # dW = sum over images of dY @ Xcol^T: one product per image (the transpose is a view;
            # one product over the whole batch would first need a transposed copy of Xcol)
            grad_w = torch.matmul(gy, cols.transpose(2, 3)).sum(0)  # (g, O/g, K)
            grad_w = grad_w.view(O, Cg, kh, kw)  # (O, C/g, kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))  # (O,)
        return grad_x, grad_w, grad_b, None, None, None, None


def im2col_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride: Size2 = 1, padding: Size2 = 0, dilation: Size2 = 1, groups: int = 1) -> torch.Tensor:
    """`F.conv2d` computed as im2col + matrix product (numeric padding only; zeros padding).

    x: (B, C, H, W) or (C, H, W); weight: (O, C/groups, kh, kw); bias: (O,) or None.
    Under autocast the inputs are cast to the autocast dtype first, as F.conv2d's are, so the
    forward and backward products run in one dtype."""
    if x.dim() == 3:  # an unbatched image, as nn.Conv2d accepts
        return im2col_conv2d(x.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"im2col_conv2d: input of {x.shape[1]} channels, weight {tuple(weight.shape)} "
                         f"and groups={groups} do not fit (need C = weight.shape[1] * groups and "
                         f"groups dividing the {weight.shape[0]} outputs)")
    args = (_pair(stride), _pair(padding), _pair(dilation), groups)
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device_type, enabled=False):
            return _Im2colConv2dFunction.apply(x, weight, bias, *args)
    return _Im2colConv2dFunction.apply(x, weight, bias, *args)


class Im2colConv2d(nn.Conv2d):
    """A drop-in `nn.Conv2d` computed by `im2col_conv2d`: the same constructor, parameters
    (weight (O, C/groups, kh, kw), bias (O,)), initialisation and state-dict keys, so the two
    load each other's weights, and a model built from either with the same seed starts equal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" or padding == "same":
            # reflect / replicate / circular, or 'same' (possibly asymmetric for even kernels):
            # pad explicitly first, as nn.Conv2d does for the non-zero modes
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        elif padding == "valid":
            padding = 0
        return im2col_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                             self.groups)  # (B, O, Hout, Wout)
