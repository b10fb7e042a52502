"""Peak memory of one decoder run, per pixel: what the default --max-pixels is weighed against.

    python -m bench.memory MODEL_FOLDER [--side 256]

Run one size per process: the peak resident size only ever grows.
"""

from __future__ import annotations

import argparse
import resource

import numpy as np

import sdlite


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--side", type=int, default=256, help="picture side in pixels")
    args = parser.parse_args()
    codec = sdlite.Codec.load(args.model, max_pixels=args.side**2)
    factor, channels = codec.manifest.downsampling_factor, codec.manifest.latent_channels
    codec.networks.decoder  # the graph's own memory is not the picture's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    codec.networks.decoder(np.zeros((1, channels, args.side // factor, args.side // factor), np.float32))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"{codec.manifest.name}: decoding {args.side}x{args.side} raised the peak resident memory by "
          f"{grown / 2**20:.0f} MB, {grown / args.side**2:.0f} bytes per pixel")


if __name__ == "__main__":
    main()
