"""Export a network to ONNX, to run it outside vidstyle (onnxruntime, TensorRT, a browser).

Any nn.Module that maps (N, 3, H, W) RGB 0..255 float images to images exports
the same way, with the height and width left free (a style network, an
upscaler): torch.export traces it with symbolic sizes, so a size the example
does not have runs the same graph. A style network is wrapped first so that
the file keeps vidstyle's behaviour at any size: padded to the sizes the
network keeps, cropped back, clamped to 0..255.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vidstyle.errors import VidstyleError
from vidstyle.inference import MIN_SIDE
from vidstyle.model import CompactTransformerNet, TransformerNet, pad_to_multiple
from vidstyle.media import check_output, partial_file

OPSET = 18  # onnxruntime 1.14 (2023) on; the dynamo exporter's own
EXAMPLE_SIDE = 64


class FramesInFramesOut(nn.Module):
    """A style network as `vidstyle submit` runs it: any frame size in, the same size out, 0..255."""

    def __init__(self, net: TransformerNet | CompactTransformerNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return self.net(pad_to_multiple(image, self.net.size_multiple, MIN_SIDE))[..., :height, :width].clamp(0, 255)


def export_onnx(module: nn.Module, example: torch.Tensor, output_path: Path, *, min_side: int = 2,
                force: bool = False) -> Path:
    """Write `module` as ONNX to output_path (atomically): input "image", output "output", both
    float32 (N, 3, H, W) RGB 0..255, N, H and W free (H and W at least min_side). The example's
    batch and sides must not be 1, which torch.export would take for fixed sizes."""
    check_output(output_path, force)
    if not output_path.parent.is_dir() or not os.access(output_path.parent, os.W_OK):
        raise VidstyleError(f"cannot write to output directory {output_path.parent} (missing or not writable)")
    module = module.float().eval().requires_grad_(False)
    height, width = (torch.export.Dim(name, min=min_side) for name in ("height", "width"))
    shapes = ({0: torch.export.Dim("batch", min=1), 2: height, 3: width},)
    with partial_file(output_path) as partial:
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=["image"], output_names=["output"], dynamic_shapes=shapes)
        except Exception as exc:  # the exporter fails in many ways, each with a long report
            raise VidstyleError(f"cannot export to ONNX: {str(exc).strip().splitlines()[0]}") from exc
        program.save(str(partial))
    return output_path


def export_style(net: TransformerNet | CompactTransformerNet, output_path: Path, force: bool = False) -> Path:
    """A style network as ONNX that takes any frame of MIN_SIDE pixels a side or more."""
    example = torch.rand(2, 3, EXAMPLE_SIDE, EXAMPLE_SIDE) * 255
    return export_onnx(FramesInFramesOut(net), example, output_path, min_side=MIN_SIDE, force=force)
