"""Recognition galleries for `kubeinfer serve --task recognize --embeddings FILE`.

    kubeinfer gallery build --model encoder.onnx --base-data DIR --out brands.npz

DIR holds one sub-folder of images per label (DIR/<label>/<images>). The output is
an .npz with `embeddings` [N, D] float32 (L2-normalised) and `labels` [N] strings,
written atomically, so a runtime watching the file picks up the new gallery whole.
Use the same encoder and preprocessing flags (or sidecar) as the runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubeinfer.runtime.config import DEFAULT_MAX_IMAGE_PIXELS, _triple


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="gallery_command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="encode DIR/<label>/<images> into an embeddings file",
                                description=__doc__.strip() if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--model", type=Path, required=True, help="encoder: TorchScript, ONNX or ultralytics -cls .pt")
    build.add_argument("--base-data", type=Path, required=True, help="directory of DIR/<label>/<images>")
    build.add_argument("--out", type=Path, required=True, help="embeddings file to write (.npz)")
    build.add_argument("--gallery-batch-size", type=int, default=32, help="images per encoder call (default 32)")
    build.add_argument("--gallery-mode", choices=["centroid", "exemplar"], default="centroid",
                       help="one vector per label (centroid, default) or per image (exemplar)")
    build.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    build.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="threads decoding and preprocessing images")
    build.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                       help="refuse images with more pixels")
    preprocessing = build.add_argument_group("preprocessing (default: the model's sidecar, as the runtime does)")
    preprocessing.add_argument("--image-size", type=int, help="square model input side in pixels")
    preprocessing.add_argument("--mean", type=_triple, help="per-channel mean, e.g. 0.485,0.456,0.406")
    preprocessing.add_argument("--std", type=_triple, help="per-channel std, e.g. 0.229,0.224,0.225")
    preprocessing.add_argument("--channel-order", choices=["rgb", "bgr"], help="model input channel order")
    preprocessing.add_argument("--resize-mode", choices=["stretch", "letterbox", "center-crop"],
                               help="how images are fitted to the input size")
    build.set_defaults(_gallery_run=run_build)


def run(args: argparse.Namespace) -> int:
    return int(args._gallery_run(args))


def _check(args: argparse.Namespace) -> str | None:
    checks = [
        (args.out.suffix.lower() == ".npz", f"--out {args.out}: the gallery file must end in .npz"),
        (args.model.exists(), f"--model {args.model}: no such file"),
        (args.base_data.is_dir(), f"--base-data {args.base_data}: not a directory"),
        (args.gallery_batch_size >= 1, "--gallery-batch-size must be at least 1"),
        (args.workers >= 1, "--workers must be at least 1"),
        (args.device == "cpu" or args.device.startswith("cuda"), "--device must be cpu, cuda or cuda:N"),
    ]
    return next((message for ok, message in checks if not ok), None)


def run_build(args: argparse.Namespace) -> int:
    """Encode the base-data directory with a progress bar and write the .npz; 1 with one line on failure."""
    problem = _check(args)
    if problem is not None:
        print(f"kubeinfer gallery build: {problem}", file=sys.stderr)
        return 2
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from kubeinfer.runtime.engine.encoder import load_encoder
    from kubeinfer.runtime.errors import StartupError
    from kubeinfer.runtime.gallery import build_from_directory, save_npz, scan_base_data

    try:
        encoder = load_encoder(args.model, args.device, image_size=args.image_size, mean=args.mean, std=args.std,
                               channel_order=args.channel_order, resize_mode=args.resize_mode)
        total = len(scan_base_data(args.base_data))
        with ThreadPoolExecutor(args.workers) as pool, \
                tqdm(total=total, unit="img", desc="encoding", file=sys.stderr, dynamic_ncols=True) as bar:
            gallery = build_from_directory(args.base_data, encoder.preprocess, encoder.forward,
                                           batch_size=args.gallery_batch_size, mode=args.gallery_mode,
                                           max_pixels=args.max_image_pixels, executor=pool, progress=bar.update)
        save_npz(gallery, args.out)
    except StartupError as exc:
        print(f"kubeinfer gallery build: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kubeinfer gallery build: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {gallery.size} vectors x {gallery.dimension}, {len(gallery.labels)} labels "
          f"({args.gallery_mode}, {total} images)")
    return 0
