"""`genrefusion distill`: the parser and handler over training/distill (a light student head learns a teacher's
genre probabilities)."""
from __future__ import annotations

from ..training.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, run_distill


def add_cli(sub) -> None:
    p = sub.add_parser("distill", help="train a light student head on a teacher's probabilities")
    p.add_argument("--teacher", required=True, metavar="RUN_ROW_OR_MODEL",
                   help="a run folder, a grid row folder (its seed-*/ runs are ensembled) or a saved model folder")
    p.add_argument("--text-encoder", default="minilm-l6", help="the student's text encoder")
    p.add_argument("--image-encoder", default="efficientnet-lite0", help="the student's image encoder")
    p.add_argument("--unlabelled", action="append", default=[], metavar="PATH",
                   help="MM-IMDb folder or catalog of extra movies (labels optional, ignored) the teacher labels; "
                        "repeat for several; dev/test movies (by id or content) are dropped and counted")
    p.add_argument("--data", default=None, help="the labelled data (default: the teacher's)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"weight of the true labels' loss for labelled movies (default {DEFAULT_ALPHA}); the "
                        "teacher's soft targets get 1 - alpha")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"softens teacher and student logits in the soft loss (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--seeds", type=int, default=1, help="train this many students (seed-<n>/ run folders)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="the student's run folder (default runs/distill-<model>-<time>)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for the student, e.g. model=gmu")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    run_distill(args.teacher, args.text_encoder, args.image_encoder, args.unlabelled, args.data, args.alpha,
                args.temperature, args.overrides, args.seeds, args.out, args.cache_dir)
    return 0
