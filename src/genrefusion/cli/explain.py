"""`genrefusion explain`: the parser and handler over inference/explain (Grad-CAM, word attributions, modality
shares for one movie)."""
from __future__ import annotations

from ..inference.explain import EXPLAIN_STEPS, explain, save_pngs
from ..inference.inputs import check_plot


def cmd_explain(args) -> int:
    from ..data.images import load_poster  # lazy: it imports torch, which genrefusion --help must not
    from ..inference.predictor import load_model  # lazy: it imports torch, which genrefusion --help must not

    if args.poster is None and args.plot is None:
        raise SystemExit("error: give --poster and/or --plot")
    predictor = load_model(args.model)
    poster = load_poster(args.poster) if args.poster else None
    plot = check_plot(args.plot)
    explanation = explain(predictor, poster, plot, args.genre, args.steps)
    for path in save_pngs(explanation, poster, args.out):
        print(path)
    c = explanation["contribution"]
    print(f"{explanation['genre']} p={explanation['probability']:.3f}; contribution: "
          + ", ".join(f"{m} {v:.0%}" for m, v in c.items()))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM over the poster, word attributions over the plot, modality shares")
    p.add_argument("--model", required=True, help="saved model folder (a run's model/)")
    p.add_argument("--poster", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--genre", default=None, help="genre to explain (default: the most probable predicted one)")
    p.add_argument("--steps", type=int, default=EXPLAIN_STEPS, help="integrated-gradients steps")
    p.add_argument("--out", required=True, help="folder for the PNGs and explanation.json")
    p.set_defaults(func=cmd_explain)
