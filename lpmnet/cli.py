"""Command line: ``lpmnet train``, ``lpmnet fuse``, ``lpmnet metrics``.

Bad input ends with one line ``lpmnet: error: <file>: <problem>`` on stderr and exit status 2; nothing
half-written is left behind (every output is written to a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys

import numpy as np

from lpmnet import __version__
from lpmnet.errors import LPMNetError
from lpmnet.methods import CLASSICAL, MODULES as METHOD_MODULES, is_classical
from lpmnet.methods.pretrained import CHOICES as PRETRAINED_CHOICES, KINDS
from lpmnet.volumes.colour import DEFAULT_COLOUR_MAP
from lpmnet.memory import DEFAULT_FUSION_BUDGET_MB

EXIT_BAD_INPUT = 2


def _read_pairs(path):
    """A TSV with columns x1 and x2 (paths relative to the working directory or absolute)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"x1", "x2"} <= set(rows[0]):
        raise ValueError(f"{path}: a pairs table needs a header with the columns x1 and x2")
    return [(row["x1"], row["x2"]) for row in rows]


LPMNET_MODEL_OPTIONS = ("base_c", "depth_c", "depth_m", "fuse_method", "rec")
LPMNET_LOSS_OPTIONS = {"loss_mode": "mode", "alpha": "alpha", "beta": "beta", "gamma": "gamma"}


def _json_object(text, option):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option}: expected a JSON object, got {text!r}")
    return value


def _pretrained(method, choice, path1, path2, doing):
    """The shipped checkpoint for ``choice`` (a kind, or ``pretrained``: the files' kind), said on stderr."""
    from lpmnet.methods import get_method
    from lpmnet.methods.pretrained import resolve

    path, kind = resolve(get_method(method), choice, path1, path2)
    how = "" if choice != "pretrained" else " (from the file names; choose with --pretrained mri-mri|mri-pet)"
    print(f"lpmnet: {doing} the pretrained {kind} model {path}{how}", file=sys.stderr)
    return str(path)


def _cmd_train(args):
    from lpmnet.engine.train import TrainConfig, train

    pairs = _read_pairs(args.pairs) if args.pairs else list(zip(args.x1 or [], args.x2 or []))
    if not pairs or (args.x1 and len(args.x1) != len(args.x2 or [])):
        raise ValueError("give --pairs TSV, or as many --x1 as --x2 volumes")
    val_pairs = _read_pairs(args.val_pairs) if args.val_pairs else []
    model = _json_object(args.model, "--model") if args.model else {}
    loss_settings = _json_object(args.loss_settings, "--loss-settings") if args.loss_settings else None
    # LPM-Net's own options (its constructor and its loss), refused by name for another method.
    lpmnet_model = {k: getattr(args, k) for k in LPMNET_MODEL_OPTIONS if getattr(args, k) is not None}
    if args.no_reconstruction:
        lpmnet_model["reconstruction"] = False
    lpmnet_loss = {v: getattr(args, k) for k, v in LPMNET_LOSS_OPTIONS.items() if getattr(args, k) is not None}
    if args.method != "lpmnet" and lpmnet_model:
        raise ValueError(f"--{next(iter(lpmnet_model)).replace('_', '-')} is an option of lpmnet, not of {args.method}; "
                         "give the network's arguments with --model JSON")
    model.update(lpmnet_model)
    if lpmnet_loss:
        loss_settings = {**(loss_settings or {}), **lpmnet_loss}
    recipe = dict(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  loss=args.loss, loss_settings=loss_settings, slice_axis=args.slice_axis)
    if args.whole_volume:
        recipe["patch_size"] = None
    elif args.patch_size:
        recipe["patch_size"] = tuple(args.patch_size)
    init = args.init
    if init in PRETRAINED_CHOICES:
        init = _pretrained(args.method, init, *pairs[0], "starting from")
    config = TrainConfig(method=args.method, **{k: v for k, v in recipe.items() if v is not None},
                         checkpoint_every=args.checkpoint_every, keep_every=args.keep_every, val_every=args.val_every,
                         amp=not args.no_amp, model=model, init=init)
    final = train(pairs, args.out_dir, config, val_pairs=val_pairs, device=args.device, normalize=True)
    print(final)


def _cmd_fuse(args):
    from lpmnet.methods.classical import fuse_classical_files

    # Only the options given go to the method: one that only another method has is refused by name.
    options = dict(tile=args.tile, overlap=args.overlap, axis=args.axis, batch_size=args.batch_size,
                   scan_backend=args.scan_backend, preprocess=args.preprocess)
    settings = {k: v for k, v in options.items() if v is not None}
    if args.memory_budget_mb is not None:
        settings["memory_budget_mb"] = args.memory_budget_mb or None  # 0: never tile
    if is_classical(args.method):
        network_options = {**options, "memory_budget_mb": args.memory_budget_mb, "checkpoint": args.checkpoint,
                           "pretrained": args.pretrained, "components": args.components}
        given = [f"--{k.replace('_', '-')}" for k, v in network_options.items() if v not in (None, False)]
        if given:
            raise ValueError(f"{args.method} is a classical rule (no network): it takes no {', '.join(given)}")
        # Raw inputs: normalised here, by the one owner of the [0, 1] convention (lpmnet.volumes.normalize).
        fuse_classical_files(args.method, args.fixed, args.moving, args.output, normalize=True, colour=args.colour)
        print(args.output)
        return
    from lpmnet.engine.fuse import fuse_files

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = _pretrained(args.method, args.pretrained or "pretrained", args.fixed, args.moving, "fusing with")
    elif args.pretrained:
        raise ValueError("give --checkpoint or --pretrained, not both")
    fuse_files(args.fixed, args.moving, args.output, checkpoint, device=args.device, method=args.method,
               components=args.components, normalize=True, colour=args.colour, **settings)
    print(args.output)


def _cmd_metrics(args):
    from lpmnet.volumes.io import atomic_write_json, dhw, load_volume, require_same_grid
    from lpmnet.metrics import CONVENTIONS, TABLE_CONVENTIONS, compute_all
    from lpmnet.volumes.normalize import unit_range

    a, b, f = (load_volume(p) for p in (args.a, args.b, args.fused))
    require_same_grid(a, b)
    require_same_grid(a, f)
    # Sources in [0, 1] as the model sees them; the fused volume clipped (not stretched) to [0, 1].
    conventions = {"all": TABLE_CONVENTIONS, "both": CONVENTIONS}.get(args.convention, (args.convention,))
    results = compute_all(unit_range(dhw(a.data)), unit_range(dhw(b.data)), np.clip(dhw(f.data), 0, 1),
                          conventions=conventions, axis=args.axis)
    table = {name: ms.values for name, ms in results.items()}
    if args.output and args.method:
        from lpmnet.metrics.records import write_metrics_json

        # The workflow's per-subject document, which the metric tables and the comparison read.
        write_metrics_json(args.output, args.subject, args.method, results)
    elif args.output:
        atomic_write_json(args.output, table)
    if args.json:
        print(json.dumps(table, indent=2))
    elif not args.output:
        for name, values in table.items():
            print(f"[{name}]")
            for metric, value in values.items():
                print(f"  {metric:5s} {value:.6g}")


def build_parser():
    parser = argparse.ArgumentParser(prog="lpmnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lpmnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a fusion method on pairs of co-registered volumes (its original's "
                                      "recipe unless options change it)")
    p.add_argument("--method", default="lpmnet", help=f"fusion method: {', '.join(METHOD_MODULES)} or the dotted "
                                                      "name of your own method's module")
    p.add_argument("--pairs", help="TSV with columns x1, x2 (training pairs)")
    p.add_argument("--x1", action="append", help="first volume of a pair (repeatable)")
    p.add_argument("--x2", action="append", help="second volume of a pair (repeatable)")
    p.add_argument("--val-pairs", help="TSV with columns x1, x2 (validation pairs)")
    p.add_argument("-o", "--out-dir", required=True, help="folder for checkpoints and the training log")
    p.add_argument("--iterations", type=int, help="default: the method's recipe (lpmnet 3000)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                   help="3D methods: D H W of a patch (lpmnet: 64 64 64); 2D methods: H W of a slice crop")
    p.add_argument("--whole-volume", action="store_true", help="train on whole volumes or slices (GPU)")
    p.add_argument("--slice-axis", type=int, help="2D methods: the axis slices are taken along (0 = D)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--loss", help="a loss of lpmnet.engine.losses.LOSSES (lpmnet, mif, ...); default: the method's")
    p.add_argument("--loss-settings", help="JSON object of the loss's keyword arguments")
    p.add_argument("--model", help="JSON object of the network's constructor arguments")
    p.add_argument("--loss-mode", choices=("faithful", "fixed"), help="lpmnet loss (default faithful)")
    p.add_argument("--alpha", type=float, help="lpmnet loss: MSE weight (0.05)")
    p.add_argument("--beta", type=float, help="lpmnet loss: 1 - SSIM weight (1.0)")
    p.add_argument("--gamma", type=float, help="lpmnet loss: spatial-frequency reward (0.5)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--keep-every", type=int, default=0, metavar="N",
                   help="also keep the model every N iterations as checkpoints/iteration-<n>.pt (0: none)")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from these weights (fine-tuning): a checkpoint of the method, or lpmnet's shipped "
                        f"models: {', '.join(PRETRAINED_CHOICES)} (pretrained: the kind of the first pair's file names)")
    p.add_argument("--base-c", type=int, help="lpmnet network (8)")
    p.add_argument("--depth-c", type=int, help="lpmnet network (2)")
    p.add_argument("--depth-m", type=int, help="lpmnet network (2)")
    p.add_argument("--fuse-method", choices=("max", "mean", "min"), help="lpmnet network (max)")
    p.add_argument("--rec", type=float, help="lpmnet network: block drop probability of the masked branch (0.2)")
    p.add_argument("--no-reconstruction", action="store_true", help="lpmnet: train without the masked branch")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("fuse", help="fuse two co-registered NIfTI volumes")
    p.add_argument("fixed", help="first input; the output takes its grid and affine")
    p.add_argument("moving", help="second input, already on the fixed grid")
    p.add_argument("-o", "--output", required=True, help="fused NIfTI (.nii.gz); a .json sidecar is written")
    p.add_argument("--checkpoint",
                   help="a checkpoint of the method written by lpmnet train (or the workflow), or the original "
                        "code's weights: lpmnet an original LPM-Net state dict, mambadfuse the authors' released "
                        "10000_E.pth, asfe a state dict of the original code. Default (lpmnet): the shipped "
                        "pretrained model of the pair's kind (mri-pet when a file name has PET or SPECT in it)")
    p.add_argument("--pretrained", choices=tuple(KINDS),
                   help="lpmnet without --checkpoint: fuse with this shipped model whatever the file names say")
    p.add_argument("--method", default="lpmnet",
                   help=f"fusion method: a network ({', '.join(METHOD_MODULES)}, or the dotted name of your own "
                        f"method's module) or a classical rule ({', '.join(CLASSICAL)})")
    p.add_argument("--device", default="auto")
    p.add_argument("--tile", type=int, nargs="+",
                   help="3D methods: sliding-window tile size (lpmnet: multiples of 16, dc2fusion: of 32)")
    p.add_argument("--memory-budget-mb", type=int,
                   help=f"3D methods, without --tile: tile automatically when a whole-volume pass needs more "
                        f"(default {DEFAULT_FUSION_BUDGET_MB}; 0: never)")
    p.add_argument("--overlap", type=float, help="3D methods: tile overlap (default 0.25)")
    p.add_argument("--preprocess", choices=("pad", "original"),
                   help="dc2fusion: pad (default, the volume on its own grid) or original (the authors' crop, "
                        "pad and 128^3 resize, resampled back)")
    p.add_argument("--axis", type=int, help="2D methods: slice axis in (D, H, W) order (default 0 = D)")
    p.add_argument("--batch-size", type=int, help="2D methods: slices per batch (default 8)")
    p.add_argument("--scan-backend", choices=("auto", "cuda", "cpu", "torch"),
                   help="methods with Mamba layers (lpmnet, mambadfuse): the selective-scan backend (default auto)")
    p.add_argument("--components", action="store_true", help="also write the base and detail volumes")
    p.add_argument("--colour", nargs="?", const=DEFAULT_COLOUR_MAP, metavar="MAP",
                   help=f"the second input is functional (PET, SPECT): fuse in colour through this matplotlib colour "
                        f"map (default {DEFAULT_COLOUR_MAP}): the output is the fused luminance, <output>_rgb.nii.gz "
                        f"the RGB colour fusion")
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("metrics", help="fusion quality metrics of F against sources A and B")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("fused")
    p.add_argument("--convention", choices=("lpmnet", "standard", "artefacts", "both", "all"), default="all",
                   help="both: the two metric conventions; all: both and the artefact checks (background, lattice)")
    p.add_argument("--axis", type=int, default=0, help="slice axis of the 2D metrics in (D, H, W) order: 0 = D = the files' voxel axis k")
    p.add_argument("--json", action="store_true", help="print JSON: {convention: {metric: value}}")
    p.add_argument("-o", "--output", help="also write the JSON to this file")
    p.add_argument("--method", help="the method that fused F: -o then writes the workflow's per-subject metrics "
                                    "file (subject, method, values, slices used, notes), as its tables read them")
    p.add_argument("--subject", default="01", help="with --method: the subject's label (default 01)")
    p.set_defaults(func=_cmd_metrics)
    return parser


def main(argv=None):
    """The command line on ``argv``; returns the exit status. Leaves the process's settings alone, so
    that Python code (a notebook, a test) may call it; the ``lpmnet`` program is :func:`run`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.func(args)
    except (LPMNetError, ValueError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"lpmnet: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def run():
    """The ``lpmnet`` program: :func:`main` in a process of its own, whose malloc may keep freed blocks
    (lpmnet.runtime; 15-20 % faster fusion for the 2D methods; applied to a caller's process, it had
    grown a test session to 17 GB)."""
    from lpmnet.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    return main()


if __name__ == "__main__":
    sys.exit(run())
