"""The decoder's gradient as a graph: (latent, target image) -> (decoded image, d MSE / d latent).

The runtime's encoder effort searches for the latent that decodes closest to the original; that needs
the gradient of the distortion with respect to the latent, computed by onnxruntime without torch.
torch's ONNX exporter cannot translate autograd's backward operators (`aten.convolution_backward` has no
ONNX translation, and `torch.func.grad` does not survive `torch.export`), so the backward pass is first
traced with make_fx into forward-style operators: the input gradient of a convolution is itself a
(transposed) convolution, a nearest upsampling's is a sum over blocks, and torch's own decompositions
cover the rest (GroupNorm, SiLU, tanh, ReLU, softmax). Attention is traced through its math form, whose
backward is plain matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._decomp import get_decompositions
from torch.fx.experimental import _config as fx_config
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .graphs import export_graph

VJP_INPUTS = ("latent", "target")
VJP_OUTPUTS = ("image", "latent_gradient")

aten = torch.ops.aten

BACKWARD_DECOMPOSITIONS = get_decompositions([
    aten.native_group_norm_backward,
    aten.threshold_backward,
    aten.tanh_backward,
    aten.silu_backward,
    aten.sigmoid_backward,
    aten._softmax_backward_data,
])


def convolution_input_gradient(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask):
    """convolution_backward for the input only (the weights are constants here).

    The input gradient of a stride-1 convolution is the convolution of the output gradient with the
    kernel flipped and its channel axes swapped (a transposed convolution written as a plain one:
    onnxruntime runs Conv about twice as fast as ConvTranspose on the CPU).
    """
    if transposed or any(s != 1 for s in stride):
        # A strided convolution's output padding depends on the input's parity: no decoder needs it.
        raise NotImplementedError("the decoder gradient graph supports stride-1, non-transposed convolutions only")
    if not output_mask[0]:
        return None, None, None
    out_channels, in_per_group, *kernel = weight.shape
    swapped = (weight.reshape(groups, out_channels // groups, in_per_group, *kernel).transpose(1, 2)
               .reshape(groups * in_per_group, out_channels // groups, *kernel).flip(list(range(2, weight.dim()))))
    reach = [d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding)]
    grad_input = aten.convolution(grad_output, swapped, None, stride, reach, dilation, False,
                                  [0] * len(stride), groups)
    return grad_input, None, None


class BlockUpsampling(TorchFunctionMode):
    """Nearest upsampling by a whole factor written as a broadcast, whose gradient is a sum over each block.

    torch lowers it to an index gather above autograd, so its gradient becomes a scatter with
    accumulation (ONNX ScatterND, reduction add), and onnxruntime's CPU kernel adds on several
    threads without atomics: on a many-core machine additions are lost and the gradient is off by percents.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate:
            blocks = as_broadcast(*args, **kwargs)
            if blocks is not None:
                return blocks
        return func(*args, **kwargs)


def as_broadcast(input, size=None, scale_factor=None, mode="nearest", *rest, **options):
    """F.interpolate's arguments: a 2-D nearest upsampling by whole factors as a broadcast, else None."""
    if mode != "nearest" or input.dim() != 4 or size is not None or scale_factor is None:
        return None
    factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
    if not all(float(factor).is_integer() and factor >= 1 for factor in factors):
        return None
    (vertical, horizontal), (batch, channels, height, width) = map(int, factors), input.shape
    blocks = input.unsqueeze(3).unsqueeze(5).expand(batch, channels, height, vertical, width, horizontal)
    return blocks.reshape(batch, channels, height * vertical, width * horizontal)


class DistortionGradient(torch.nn.Module):
    """The decoded image and the gradient of its mean squared error to `target` with respect to the latent."""

    def __init__(self, decoder_graph: torch.nn.Module):
        super().__init__()
        self.decoder_graph = decoder_graph

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            latent = latent.detach().requires_grad_()
            image = self.decoder_graph(latent)
            distortion = ((image - target) ** 2).mean()
            (gradient,) = torch.autograd.grad(distortion, latent)
        return image.detach(), gradient


def traced(decoder_graph: torch.nn.Module, latent: torch.Tensor, target: torch.Tensor) -> torch.fx.GraphModule:
    """The forward and backward pass as one graph of exportable operators, with symbolic sides."""
    decoder_graph.requires_grad_(False)  # the weights are constants: only the latent's gradient is wanted
    table = {**BACKWARD_DECOMPOSITIONS, aten.convolution_backward.default: convolution_input_gradient}
    # Without duck shapes, a side that happens to equal the channel count is not frozen along with it.
    with sdpa_kernel(SDPBackend.MATH), fx_config.patch(use_duck_shape=False), BlockUpsampling():
        return make_fx(DistortionGradient(decoder_graph), decomposition_table=table, tracing_mode="symbolic",
                       _allow_non_fake_inputs=True)(latent, target)


def export_vjp_graph(decoder_graph: torch.nn.Module, latent: torch.Tensor, target: torch.Tensor, path) -> None:
    export_graph(traced(decoder_graph, latent, target), (latent, target), path, (VJP_INPUTS, VJP_OUTPUTS))
