"""Throughput of the public TensorFlow implementation's network, for comparison.

Rebuilds the transform network of lengstrom/fast-style-transfer (src/transform.py:
9x9/32, 3x3/64 s2, 3x3/128 s2, five residual blocks, two stride-2 transposed
convs, 9x9/3, instance norm, tanh output) in TensorFlow 2 with random weights,
and prints its frames/s on in-memory 640x360 frames at batch 4, the setting its
transform_video uses. Needs TensorFlow, which vidstyle does not depend on: run
it with a Python that has it (benchmarks/pipeline.py --tf-python PATH does).

    python benchmarks/tf_reference.py --frames 8 --width 640 --height 360
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf


def instance_norm(x: tf.Tensor, channels: int) -> tf.Tensor:
    mean, var = tf.nn.moments(x, [1, 2], keepdims=True)
    shift, scale = tf.zeros([channels]), tf.ones([channels])
    return scale * (x - mean) / (var + 1e-3) ** 0.5 + shift


class TransformNet(tf.Module):
    def __init__(self) -> None:
        rng = tf.random.Generator.from_seed(0)
        self.kernels = {}
        shapes = {"c1": (9, 9, 3, 32), "c2": (3, 3, 32, 64), "c3": (3, 3, 64, 128), "t1": (3, 3, 64, 128),
                  "t2": (3, 3, 32, 64), "c4": (9, 9, 32, 3)}
        shapes |= {f"r{i}{j}": (3, 3, 128, 128) for i in range(5) for j in "ab"}
        for name, shape in shapes.items():
            self.kernels[name] = tf.Variable(rng.normal(shape, stddev=0.1))

    def conv(self, x, name, stride, relu=True):
        x = tf.nn.conv2d(x, self.kernels[name], [1, stride, stride, 1], padding="SAME")
        x = instance_norm(x, x.shape[-1])
        return tf.nn.relu(x) if relu else x

    def transpose(self, x, name):
        kernel = self.kernels[name]
        n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        x = tf.nn.conv2d_transpose(x, kernel, [n, h * 2, w * 2, kernel.shape[2]], [1, 2, 2, 1], padding="SAME")
        return tf.nn.relu(instance_norm(x, kernel.shape[2]))

    @tf.function
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = self.conv(self.conv(self.conv(x, "c1", 1), "c2", 2), "c3", 2)
        for i in range(5):
            x = x + self.conv(self.conv(x, f"r{i}a", 1), f"r{i}b", 1, relu=False)
        x = self.transpose(self.transpose(x, "t1"), "t2")
        x = tf.nn.conv2d(x, self.kernels["c4"], [1, 1, 1, 1], padding="SAME")
        return tf.nn.tanh(x) * 150 + 255.0 / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    net = TransformNet()
    frames = np.random.default_rng(0).uniform(0, 255, (args.frames, args.height, args.width, 3)).astype(np.float32)
    batches = [tf.constant(frames[i:i + args.batch_size]) for i in range(0, args.frames, args.batch_size)]
    net(batches[0]).numpy()  # trace and warm up
    start = time.perf_counter()
    for batch in batches:
        net(batch).numpy()
    seconds = time.perf_counter() - start
    print(json.dumps({"tf_version": tf.__version__, "frames_per_s": args.frames / seconds}))


if __name__ == "__main__":
    main()
