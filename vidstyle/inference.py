"""Running a network on batches of frames, on whatever device there is.

This is vidstyle's one device abstraction: the pipeline hands it uint8 RGB
frames (N, H, W, 3) and gets uint8 RGB frames back, of the same size from a
style network, `factor` times as large from an upscaler (or a style then an
upscaler); how that happens on a CPU or a CUDA GPU (layouts, precision,
compilation, batch size, frames too large to run whole) is decided here.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidstyle.settings import setting
from vidstyle.errors import VidstyleError
from vidstyle.memory import keep_freed_memory
from vidstyle.model import ConvLayer, StyleThenUpscale, TransformerNet, UpscalerNet, pad_to_multiple
from vidstyle.strips import stylize_in_strips
from vidstyle.tiles import upscale_in_tiles

# Frames are padded to the network's size_multiple (TransformerNet's 4: two
# stride-2 convolutions and two x2 upsamplings), then cropped.
# The 9x9 convolutions reflect 4 pixels at each border, which needs more than 4
# rows and columns: smaller frames (down to 1x1) are padded up to this, then cropped.
MIN_SIDE = 8

# Luma weights (Kr, Kg, Kb) of the YCbCr matrices, by FFmpeg's colorspace tag: frames
# come to RGB through the input's own matrix, so its luminance is the one to keep or change.
BT601_LUMA = (0.299, 0.587, 0.114)
LUMA_BY_COLORSPACE = {
    1: (0.2126, 0.7152, 0.0722),  # BT.709
    4: (0.30, 0.59, 0.11),  # FCC
    5: BT601_LUMA, 6: BT601_LUMA,  # BT.470BG, SMPTE 170M
    7: (0.212, 0.701, 0.087),  # SMPTE 240M
    9: (0.2627, 0.6780, 0.0593), 10: (0.2627, 0.6780, 0.0593),  # BT.2020
}


def luma_weights(colorspace: int | None) -> tuple[float, float, float]:
    """The luma weights of an input's colorspace tag; BT.601 (stills, untagged video: FFmpeg's default)."""
    return LUMA_BY_COLORSPACE.get(colorspace, BT601_LUMA)


@dataclass(frozen=True)
class Controls:
    """The artist's controls, applied to the network's output on its device (see apply_controls).

    strength: how much of the style, 0 (the input) .. 1 (the network's output);
    preserve_colors: the output's luminance with the input's chroma (Gatys et al.
    2016, luminance-only transfer), in YCbCr with the matrix of `luma`."""

    strength: float = 1.0
    preserve_colors: bool = False
    luma: tuple[float, float, float] = BT601_LUMA

    def __post_init__(self) -> None:
        if not 0 <= self.strength <= 1:
            raise VidstyleError(f"strength must be within 0..1, not {self.strength:g}")

    @property
    def plain(self) -> bool:
        return self.strength == 1 and not self.preserve_colors


def apply_controls(content: torch.Tensor, stylized: torch.Tensor, controls: Controls) -> torch.Tensor:
    """content and its stylization, (N, 3, H, W) float 0..255: the input plus `strength` of the
    change the style makes; with preserve_colors only the change's luminance, added to all
    three channels alike, which leaves Cb and Cr (B - Y, R - Y, scaled) as the input's.
    Unclamped: where the sum leaves the RGB cube, clamping to it is what changes the chroma."""
    if controls.plain:
        return stylized
    change = stylized - content
    if controls.preserve_colors:
        weights = torch.tensor(controls.luma, dtype=change.dtype, device=change.device).view(1, 3, 1, 1)
        change = (change * weights).sum(1, keepdim=True).expand_as(change)
    return content + controls.strength * change


def apply_controls_to_pixels(content: np.ndarray, stylized: np.ndarray, controls: Controls) -> np.ndarray:
    """apply_controls on (H, W, 3) uint8 RGB images (a still, a frame stylized already), on the CPU."""
    content_t, stylized_t = (torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() for a in (content, stylized))
    out = apply_controls(content_t, stylized_t, controls)[0].permute(1, 2, 0)
    return out.clamp(0, 255).round().to(torch.uint8).numpy()


def resolve_device(name: str | None = None) -> torch.device:
    """`name` as given ("cpu", "cuda", "cuda:1"), else CUDA when present, else the CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise VidstyleError(f"unknown device '{name}' (use cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VidstyleError(f"device '{name}' requested but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise VidstyleError(f"unsupported device '{name}' (use cpu, cuda or cuda:N)")
    return device


class SpaceToDepthConv(nn.Module):
    """The same convolution as a reflection-padded `ConvLayer` with few output
    channels (the final 9x9 conv to RGB), computed on a space-to-depth view.

    oneDNN runs a convolution with 3 output channels at a fraction of its speed
    with 32 or more; regrouping each block x block patch of pixels into channels
    turns the 9x9 conv into a 3x3 one with block^2 times the channels, which it
    runs several times faster. The result is identical up to float rounding.
    """

    def __init__(self, layer: ConvLayer, block: int = 4):
        super().__init__()
        conv = layer.conv
        out_ch, in_ch, k, _ = conv.weight.shape
        self.pad, self.k, self.block = layer.pad, k, block
        self.taps = -(-(k + block - 1) // block)
        weight = conv.weight.new_zeros(out_ch, block, block, in_ch, block, block, self.taps, self.taps)
        for ry in range(block):
            for rx in range(block):
                for ky in range(k):
                    for kx in range(k):
                        ay, ax = ry + ky, rx + kx
                        weight[:, ry, rx, :, ay % block, ax % block, ay // block, ax // block] = conv.weight[:, :, ky, kx]
        self.register_buffer("weight", weight.reshape(out_ch * block * block, in_ch * block * block, self.taps, self.taps))
        self.register_buffer("bias", conv.bias.repeat_interleave(block * block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        height, width = x.shape[-2] - self.k + 1, x.shape[-1] - self.k + 1
        rows = (-(-height // self.block) + self.taps - 1) * self.block
        cols = (-(-width // self.block) + self.taps - 1) * self.block
        x = F.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2]))
        y = F.conv2d(F.pixel_unshuffle(x, self.block), self.weight, self.bias)
        return F.pixel_shuffle(y, self.block)[..., :height, :width]


class SubpixelUpsampleConv(nn.Module):
    """Nearest x2 upsampling then a reflection-padded 3x3 conv, computed at the
    low resolution: each of the four output pixels of a 2x2 block sees only a
    2x2 window of source pixels, so four 2x2 convs replace the 3x3 one on four
    times the pixels, with 4/9 of the arithmetic. Identical up to rounding
    (reflecting the upsampled image by one pixel repeats its edge source pixel)."""

    def __init__(self, layer: ConvLayer):
        super().__init__()
        weight, bias = layer.conv.weight, layer.conv.bias

        def fold(w: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
            first, middle, last = w.unbind(dim)
            return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim)

        phases = [fold(fold(weight, 2, py), 3, px) for py in (0, 1) for px in (0, 1)]
        self.register_buffer("weight", torch.cat(phases))
        self.register_buffer("bias", bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight, self.bias)
        y = y.unflatten(1, (2, 2, -1))  # (n, row phase, column phase, channels, h + 1, w + 1)
        rows = [torch.stack([y[:, py, px, :, py:py + h, px:px + w] for px in (0, 1)], -1) for py in (0, 1)]
        return torch.stack(rows, 3).reshape(n, -1, 2 * h, 2 * w)


def prepare_network(net: nn.Module, device: torch.device) -> nn.Module:
    """The network (TransformerNet, UpscalerNet or both chained) in inference form
    for `device`: channels_last (the layout oneDNN and cuDNN run fastest) and, on
    the CPU, the exact rewrites above of the layers oneDNN runs slowly in a style
    network. Not in an upscaler: its 64-channel layers at the output's size ran
    twice as slow rewritten (both rewrites, bfloat16, 1 thread, at 1280x720)."""
    net = net.eval()
    if device.type == "cpu":
        for style_net in [module for module in net.modules() if isinstance(module, TransformerNet)]:
            for block in style_net.decoder[:2]:  # Upsample, then ConvNormReLU(ConvLayer, norm, relu)
                block[1][0] = SubpixelUpsampleConv(block[1][0])
                block[0] = nn.Identity()
            style_net.decoder[-1] = SpaceToDepthConv(style_net.decoder[-1])
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device=device, memory_format=torch.channels_last)


def compile_setting() -> bool | None:
    """VIDSTYLE_COMPILE: "1" forces torch.compile, "0" forces eager, unset or
    "auto" lets `should_compile` decide per run."""
    value = (setting("VIDSTYLE_COMPILE") or "auto").strip().lower()
    if value not in ("0", "1", "auto"):
        raise VidstyleError(f"VIDSTYLE_COMPILE must be 0, 1 or auto, not {value!r}")
    return None if value == "auto" else value == "1"


# The cost model of compiling, per device type. CPU: a 2-core AMD EPYC with
# AVX512-BF16, bfloat16, udnie's TransformerNet in batches of 4 at 640x360, the
# machine idle: eager 314 ms a frame, compiled 245 (a scratch run of two Stylizers,
# best of 3; before instance norms ran as group norms, eager was twice as slow
# as compiled), so each frame saves 69 ms, 0.30 s per megapixel; compiling a new
# frame size takes about 42 s with an empty cache (38 s more than eager's first
# batch in benchmarks/startup.py, loaded), and about 3 s more than an eager first
# batch when Inductor's on-disk caches hold the graph (the weights are not frozen
# into it, so its FX graph and AOTAutograd entries load whole;
# benchmarks/compile_modes.py, one thread, loaded: 4.1 s more, frozen weights
# 22.5 s). Both scale alike with load, so the break-even counts hold: about 600
# frames at 640x360 cold, 45 cached.
# CUDA: estimates, no GPU was at hand. Triton compiles for longer (about a
# minute cold), and a frame takes milliseconds either way (about 5 ms saved per
# 1080p frame): in absolute time a GPU frame saves far less than a CPU frame, so
# on CUDA compiling pays only after thousands of frames (about 1,900 at 1080p
# cached, 14,000 cold), not fewer frames than on the CPU.
COMPILE_SECONDS = {"cpu": 42.0, "cuda": 60.0}
CACHED_COMPILE_SECONDS = {"cpu": 3.0, "cuda": 8.0}
GAIN_SECONDS_PER_MEGAPIXEL = {"cpu": 0.30, "cuda": 0.002}
# Networks that run no faster compiled on a device, so never compiled there unless forced: the
# compact network on a CPU ran 18.8 ms a frame eager and 21.8 compiled (same run as above).
EAGER_NETWORKS = {"cpu": {"CompactTransformerNet"}}
# The graphs compiled in this process (Stylizer._compiled_key): running one again costs
# nothing, whichever network of its kind it is for.
COMPILED_IN_PROCESS: set[str] = set()
COMPILED_SIZES_PER_PROCESS = 64  # torch's limit of graphs per function (default 8); past it, new sizes run eager


def should_compile(frames: int, height: int, width: int, device: torch.device,
                   forced: bool | None = None, cached: bool = False, network: str = "TransformerNet") -> bool:
    """Whether compiling the network (its class's name) pays for `frames` frames of height x width:
    when the frames' expected saving exceeds the expected compile cost (smaller
    when `cached`). `forced` (--compile/--no-compile, VIDSTYLE_COMPILE) wins;
    a still (one frame), an unknown count (0) and one of EAGER_NETWORKS run eager."""
    if forced is not None:
        return forced
    if frames <= 1 or network in EAGER_NETWORKS.get(device.type, ()):
        return False
    cost = (CACHED_COMPILE_SECONDS if cached else COMPILE_SECONDS)[device.type]
    return frames * GAIN_SECONDS_PER_MEGAPIXEL[device.type] * height * width / 1e6 > cost


def cache_dir() -> Path:
    """Where compiled networks persist between runs: VIDSTYLE_CACHE_DIR, else
    $XDG_CACHE_HOME/vidstyle (~/.cache/vidstyle)."""
    configured = setting("VIDSTYLE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidstyle"


def compiled_marker(key: str) -> Path:
    """A file that says the on-disk cache holds the compiled graph `key` (Stylizer._compiled_key):
    torch keys that cache by graph hashes that cannot be asked cheaply beforehand."""
    return cache_dir() / "compiled" / key


def use_cache_dir() -> Path:
    """Point torch's on-disk compile caches (Inductor's FX graph cache, AOTAutograd's)
    at cache_dir(): they key compiled code by graph, shapes, torch version and
    CPU, so a size compiled once is loaded in seconds by every later process."""
    folder = cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    return folder


def has_native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 convolutions in hardware (CPUs with
    AVX512-BF16 or AMX, CUDA GPUs from Ampere on), where they are faster than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(device: torch.device, precision: str | None = None) -> torch.dtype | None:
    """The reduced precision the network runs in, None for float32.

    precision "fp32" forces float32; None or "auto" (VIDSTYLE_PRECISION's
    default) picks float16 on CUDA (tensor cores) and bfloat16 on CPUs that
    have it natively: 1.6x faster here, 53 dB PSNR from float32's output.
    """
    precision = precision or setting("VIDSTYLE_PRECISION")
    if precision not in ("auto", "fp32"):
        raise VidstyleError(f"precision must be auto or fp32, not {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if has_native_bf16(device) else None


class Stylizer:
    """Applies one network (a style's TransformerNet, an UpscalerNet, or StyleThenUpscale)
    to batches of uint8 RGB frames, eager or compiled; its output is `factor` times
    the input's size.

    `compile` True or False forces either (--compile/--no-compile, VIDSTYLE_COMPILE);
    None leaves it to `expect`, which the pipeline calls before a video's first
    batch; without that call (a still) the network runs eager."""

    def __init__(self, net: nn.Module, device: torch.device, compile: bool | None = None,
                 precision: str | None = None, whole_frame_pixels: int | None = None):
        keep_freed_memory()  # every frame's large buffers reused, not mapped afresh (vidstyle.memory)
        self.device = device
        self.factor, self.size_multiple = net.factor, net.size_multiple
        # The plain layers, before prepare_network rewrites them, for frames too large to run whole.
        self.plain_net = copy.deepcopy(net).eval().requires_grad_(False).to(device)
        self.whole_frame_pixels = whole_frame_pixels
        self.eager_net = prepare_network(net, device)
        self.compiled_net: nn.Module | None = None  # made on the first compiled batch
        # A network runs in two halves (encode, render), so that the temporal stage
        # can blend the features between them (vidstyle.temporal.TemporalBlend).
        self.has_features = hasattr(net, "encode")
        self.feature_stride: int = getattr(net, "feature_stride", 1)  # for vidstyle.temporal
        self.forced_compile = compile if compile is not None else compile_setting()
        # (batch size, height, width) of the run `expect` chose to compile: its short last batch
        # is padded to the batch size, so that one graph serves the whole run.
        self.compiled_run: tuple[int, int, int] | None = None
        self.autocast_dtype = autocast_dtype(device, precision)
        # What a compiled graph depends on besides the input's shape: the network's architecture
        # (its layers as printed: an upscaler's depth and upsampling vary), not its weights.
        self.network = type(net).__name__
        self.kind = f"{self.network}{net.factor}-{hashlib.sha256(repr(net).encode()).hexdigest()[:12]}"

    def expect(self, frames: int, height: int, width: int, batch_size: int) -> bool:
        """Decide whether the coming `frames` frames (0: unknown) of height x width,
        in batches of `batch_size`, run compiled (see should_compile); returns the choice."""
        batch_size = max(1, min(batch_size, frames or batch_size))
        key = self._compiled_key(self._network_shape(batch_size, height, width))
        if key in COMPILED_IN_PROCESS and self.forced_compile is not False:
            compiling = True  # compiled in this process already, for this network or another of its kind: free
        else:
            cached = compiled_marker(key).exists()
            # By the output's size: an upscaler's work, and what compiling saves, grows with it
            # (x4 from 320x180: 2.7x faster compiled, 1.5 s a frame; docs/super-resolution.md).
            compiling = should_compile(frames, height * self.factor, width * self.factor, self.device,
                                       self.forced_compile, cached, self.network)
        self.compiled_run = (batch_size, height, width) if compiling else None
        return compiling

    def compiles(self, height: int, width: int) -> bool:
        """Whether frames of this size run compiled: forced, or the size of the run `expect` chose to
        compile (any other, a still say, runs eager)."""
        return self.forced_compile is True or self.compiled_run is not None and self.compiled_run[1:] == (height, width)

    def _network_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, *(max(MIN_SIDE, side + -side % self.size_multiple) for side in (height, width)))

    def _compiled_key(self, shape: tuple[int, ...]) -> str:
        """Names a compiled graph: in COMPILED_IN_PROCESS, and by its compiled_marker."""
        dtype = str(self.autocast_dtype or torch.float32).removeprefix("torch.")
        return f"torch-{torch.__version__}-{self.device.type}-{dtype}-{self.kind}-" + "x".join(map(str, shape))

    def _compiled(self) -> nn.Module | tuple[Callable, Callable]:
        """The compiled network: for a style network, its two halves (encode, render)."""
        if self.compiled_net is None:
            use_cache_dir()
            # The weights stay graph inputs (Inductor's default; its `freezing` would fold them in
            # as constants): so one compiled graph serves every network of its kind, and the on-disk
            # FX graph cache can hold it. Measured (docs/performance.md): a second style in the same
            # process runs compiled at once, a new process loads a cached size in a third of a
            # frozen graph's time, and frames run about as fast.
            # A long-lived worker meets many frame sizes, each a graph of its own.
            torch._dynamo.config.recompile_limit = COMPILED_SIZES_PER_PROCESS
            # Inductor looks for a CUDA toolkit even on CPU-only hosts and warns on every run when
            # it finds one without a GPU: noise for the user, not a problem.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            if self.has_features:
                self.compiled_net = tuple(torch.compile(half, dynamic=False)
                                          for half in (self.eager_net.encode, self.eager_net.render))
            else:
                self.compiled_net = torch.compile(self.eager_net, dynamic=False)
        return self.compiled_net

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, controls: Controls = Controls(),
                 between: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB in, (N, factor x H, factor x W, 3) uint8 RGB out, with the artist's `controls`.
        `between` takes a style network's encoder features of the batch and returns them changed
        (the temporal stage's blend); a network without features ignores it."""
        count, height, width = frames.shape[:3]
        compiled = self.compiles(height, width)
        if compiled and self.compiled_run and count < self.compiled_run[0]:
            # A short last batch would compile a graph of its own: repeat its last frame instead.
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.compiled_run[0] - count, axis=0)])
        batch = torch.from_numpy(frames)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        # NHWC uint8 -> NCHW float viewed in channels_last: no copy of the layout.
        x = pad_to_multiple(batch.permute(0, 3, 1, 2).float(), self.size_multiple, MIN_SIDE)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            limit = self.whole_frame_pixels
            # (The limit counts output pixels: an upscaler's memory grows with them.)
            if x[0, 0].numel() * len(x) * self.factor ** 2 > (limit if limit is not None else whole_frame_pixel_limit(self.device)):
                y = torch.cat([run_in_parts(self.plain_net, frame[None].contiguous(), between) for frame in x])
            else:
                net = self._compiled() if compiled else self.eager_net
                y = self._run(net, x, between)
                if compiled:
                    self._remember_compiled(tuple(x.shape[:1]) + tuple(x.shape[2:]))
        y = y[:count, :, :height * self.factor, :width * self.factor].float()
        if not controls.plain:
            content = x[:count, :, :height, :width]
            if self.factor > 1:  # styled then upscaled: the input at the output's size
                content = F.interpolate(content, scale_factor=self.factor, mode="bicubic")
            y = apply_controls(content, y, controls)
        return y.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def _run(self, net: nn.Module | tuple[Callable, Callable], x: torch.Tensor,
             between: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        if not self.has_features:
            return net(x)
        encode, render = net if isinstance(net, tuple) else (net.encode, net.render)
        features = encode(x)
        if between is not None:
            features = between(features)
        if isinstance(self.eager_net, (StyleThenUpscale, UpscalerNet)):  # an upscale's base is the input's
            return render(features, x)
        return render(features)

    def _remember_compiled(self, shape: tuple[int, ...]) -> None:
        key = self._compiled_key(shape)
        if key not in COMPILED_IN_PROCESS:
            COMPILED_IN_PROCESS.add(key)
            marker = compiled_marker(key)
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError:  # a read-only cache only costs the next run a guess
                pass


def run_in_parts(net: nn.Module, x: torch.Tensor,
                 between: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """net(x) for a frame too large to run whole: a style network in strips (exact, its
    instance norms see the whole frame), an upscaler in tiles (exact, it is local), both chained;
    `between` as in Stylizer."""
    if isinstance(net, UpscalerNet):
        return upscale_in_tiles(net, x, between=between)
    if isinstance(net, StyleThenUpscale):
        styled = stylize_in_strips(net.style, pad_to_multiple(x, net.style.size_multiple), between=between)
        return upscale_in_tiles(net.upscaler, net.stylized(styled, *x.shape[-2:]))
    return stylize_in_strips(net, x, between=between)


# Rough peak working memory of the network per output pixel: a few live
# activations at full resolution (TransformerNet's 32 channels; UpscalerNet's
# 64 at the output's size, measured at about 700 bytes in bfloat16 by
# benchmarks/upscale.py), in bytes (fp32).
BYTES_PER_PIXEL = 1024
CPU_BATCH_PIXELS = 4 * 640 * 360  # batches beyond this do not run faster on a CPU


def whole_frame_pixel_limit(device: torch.device) -> int:
    """The most output pixels a batch may have to run through the network whole:
    half the free memory of the device. Larger frames run in strips or tiles
    (run_in_parts), which is exact but slower, rather than run out of memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5 // (BYTES_PER_PIXEL // 2))  # float16
    return int(available_memory() * 0.5 // BYTES_PER_PIXEL)


def available_memory() -> int:
    """Bytes the system can give without swapping (Linux's MemAvailable; else half the RAM)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def default_batch_size(device: torch.device, height: int, width: int) -> int:
    """Frames per batch for output frames of height x width: on a GPU what fits in half
    its free memory (fp16 halves the need), on the CPU a few small frames or one large one."""
    pixels = height * width
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(1, min(64, int(free * 0.5 // (pixels * BYTES_PER_PIXEL // 2))))
    return max(1, min(8, CPU_BATCH_PIXELS // pixels))


def warm_sizes() -> list[tuple[int, int]]:
    """VIDSTYLE_WARM_SIZES: frame sizes (WIDTHxHEIGHT, comma-separated) a worker compiles at start-up."""
    text = setting("VIDSTYLE_WARM_SIZES") or ""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            width, height = (int(side) for side in item.lower().split("x"))
        except ValueError:
            raise VidstyleError(f"VIDSTYLE_WARM_SIZES: {item!r} is not WIDTHxHEIGHT (e.g. 1920x1080)") from None
        sizes.append((width, height))
    return sizes


def compile_warm_sizes(sizes: list[tuple[int, int]], device_name: str | None = None,
                       only_uncached: bool = False, precision: str | None = None) -> None:
    """Compile the style network for each (width, height), at the batch size a job of that size
    runs in, into this process and the on-disk cache (loading it from there when it holds it), so
    that a job of one of these sizes finds it compiled. The compiled graph does not depend on the
    weights: random ones stand in for every style's. `only_uncached` skips the sizes the on-disk
    cache holds already (a process that only fills the cache for others). `precision` as Stylizer's."""
    if not sizes or compile_setting() is False:
        return
    device = resolve_device(device_name)
    stylizer = Stylizer(TransformerNet(), device, compile=True, precision=precision)
    for width, height in sizes:
        batch_size = default_batch_size(device, height, width)
        key = stylizer._compiled_key(stylizer._network_shape(batch_size, height, width))
        cached = compiled_marker(key).exists()
        if key in COMPILED_IN_PROCESS or only_uncached and cached:
            continue
        doing = "loading the compiled network" if cached else "compiling the network"
        logging.getLogger(__name__).warning(f"{doing} for {width}x{height} frames (VIDSTYLE_WARM_SIZES)")
        stylizer.expect(batch_size, height, width, batch_size)
        stylizer(np.zeros((batch_size, height, width, 3), np.uint8))
