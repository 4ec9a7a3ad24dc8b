"""`selfsup embed`: features of a folder of new images from a pretrained encoder. (Not
named cli.py: Kedro loads that module as the project's own `kedro` commands.)

The other `selfsup` commands run the Kedro project (`selfsup.__main__`)."""

from __future__ import annotations

import argparse
import sys

from selfsup.data.decode import RESIZE_MODES
from selfsup.embed import EmbedInputError, embed_folder


def embed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup embed",
        description=(
            "Embed every image under a folder with a pretrained encoder. Writes OUT (.npy, "
            "float32, one row per image), OUT's .csv (each row's image path) and "
            ".rejected.csv (unusable files and why)."
        ),
    )
    parser.add_argument(
        "--encoder",
        required=True,
        help="a method's model folder (data/06_models/ijepa) or its encoder.pt",
    )
    parser.add_argument("--images", required=True, help="folder of images (sub-folders too)")
    parser.add_argument("--out", required=True, help="features file to write, e.g. features.npy")
    parser.add_argument(
        "--pooling",
        choices=("last", "last4", "grid"),
        default="last",
        help="how tokens become one vector (conf/base/parameters.yml, features.pooling)",
    )
    parser.add_argument("--grid-cells", type=int, default=4, help="cells per side for grid")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="shorter_side_crop",
        help="how images reach the encoder's size (as the image_folder source's option)",
    )
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    return parser


def embed_command(argv: list[str]) -> int:
    parser = embed_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--batch-size and --workers must be at least 1")
    try:
        summary = embed_folder(
            args.encoder,
            args.images,
            args.out,
            pooling=args.pooling,
            grid_cells=args.grid_cells,
            batch_size=args.batch_size,
            resize=args.resize,
            workers=args.workers,
            device=args.device,
            progress=True,
        )
    except (EmbedInputError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"selfsup embed: {error}", file=sys.stderr)
        return 2
    print(
        f"embedded {summary.embedded} images into {summary.outputs.features} "
        f"({summary.dimensions} features each; paths in {summary.outputs.paths}); "
        f"{summary.rejected} files rejected ({summary.outputs.rejected})",
        file=sys.stderr,
    )
    return 0
