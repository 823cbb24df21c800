"""Exposure matching: a video's dim frames are stylized as if exposed normally,
and the stylized frame is brought back to the frame's own exposure.

A style network was trained on well-exposed photos. On a dim frame (a fade
from black, an underexposed shot) it sees little but quantisation and noise
and paints a different bright picture every frame: a fade comes out as a
flickering painting that is bright from the first frame. Lifting each dim
frame by one gain, so its brightest parts sit where a photo's do, gives the
network the same picture all through a fade; dividing its output by the same
gain makes the stylized video fade as the input does. Frames whose highlights
already reach a photo's (nearly all) are left exactly as they are.
"""
from __future__ import annotations

import numpy as np

from vidstyle.inference import BT601_LUMA as BT601_LUMA_WEIGHTS

# Highlights (the 99th percentile of luma) of 88% of the training photos reach this level (median 243):
# a frame below it is dimmer than nearly every photo the network learnt from.
HIGHLIGHT_LEVEL = 200.0
HIGHLIGHT_PERCENTILE = 99
# Beyond this the lifted frame is mostly quantisation steps (highlights below 13 of 255);
# what the network makes of such a frame shows at a sixteenth of its brightness or less.
MAX_GAIN = 16.0
BT601_LUMA = np.array(BT601_LUMA_WEIGHTS, dtype=np.float32)


def exposure_gains(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames: each one's gain (1 for a well-exposed frame, up to MAX_GAIN)."""
    # Every 4th pixel each way estimates the percentile as well and costs 1/16.
    luma = frames[:, ::4, ::4].astype(np.float32) @ BT601_LUMA
    highlights = np.percentile(luma.reshape(len(frames), -1), HIGHLIGHT_PERCENTILE, axis=1)
    return np.clip(HIGHLIGHT_LEVEL / np.maximum(highlights, 1e-3), 1.0, MAX_GAIN).astype(np.float32)


def lift(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frames with their exposure lifted for the network, and each one's gain."""
    gains = exposure_gains(frames)
    if np.all(gains == 1.0):
        return frames, gains
    return _scaled(frames, gains), gains


def restore(frames: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Stylized frames brought back to the exposure their inputs had (inverse of lift's gains)."""
    if np.all(gains == 1.0):
        return frames
    return _scaled(frames, 1.0 / gains)


def _scaled(frames: np.ndarray, gains: np.ndarray) -> np.ndarray:
    scaled = frames.astype(np.float32) * gains[:, None, None, None]
    return np.clip(scaled, 0, 255, out=scaled).round().astype(np.uint8)
