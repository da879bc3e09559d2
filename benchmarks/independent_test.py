"""A model on a larger, independent synthetic test set: the demo's own test set is only 14 images of 9 patients.

Synthesises ``--n`` labeled radiographs with the demo's corpus settings (lesion contrast 3, one or two images per
patient) but another seed, so no image or patient overlaps the demo's training, validation or test data, then
runs ``dentalmim evaluate`` on them (full report in ``--out``). Accuracy, not speed: it prints the headline metrics
with their patient-bootstrap 95 % intervals and writes ``benchmarks/results/independent_test_<tag>.json``.

    python benchmarks/independent_test.py --model demo_out/run/model.ckpt          # 40 images, seed 7
    python benchmarks/independent_test.py --model M --n 80 --seed 11 --tag demo_80
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, machine_info, write_json  # noqa: E402

HEADLINE = ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc", "auroc_image_size_baseline", "sensitivity",
            "specificity", "ece")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="fine-tuning .ckpt or model bundle")
    parser.add_argument("--n", type=int, default=40, help="labeled images to synthesise (default: 40)")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed; the demo uses 0 (default: 7)")
    parser.add_argument("--out", type=Path, default=Path("independent_test"), help="corpus and report folder")
    parser.add_argument("--tag", default="demo", help="result file suffix (default: demo)")
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor, 1.0 = realistic (default)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the result JSON")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    args = parser.parse_args(argv)

    from dentalmim.data.synth import generate_corpus
    from dentalmim.demo import DEMO_IMAGES_PER_PATIENT, DEMO_LESION_CONTRAST
    from dentalmim.evaluation.evaluate import evaluate_model, sha256_file
    from dentalmim.inference.predictor import Predictor

    corpus = args.out / "corpus"
    coco = corpus / "labeled" / "annotations.json"
    if not coco.exists():
        generate_corpus(corpus, n=args.n, seed=args.seed, n_unlabeled=0, lesion_contrast=DEMO_LESION_CONTRAST,
                        images_per_patient=DEMO_IMAGES_PER_PATIENT, scale=args.scale, progress=True)
    start = time.perf_counter()
    result = evaluate_model(Predictor.from_checkpoint(args.model), coco, args.out / "report", model_path=args.model,
                            n_boot=args.n_boot)
    m = result.metrics
    payload = {
        "benchmark": "independent_test", "machine": machine_info("cpu"),
        "model": {"path": str(args.model), "sha256": sha256_file(args.model)},
        "corpus": {"n": args.n, "seed": args.seed, "scale": args.scale, "lesion_contrast": DEMO_LESION_CONTRAST,
                   "images_per_patient": list(DEMO_IMAGES_PER_PATIENT)},
        "counts": m["counts"], "metrics": {k: m.get(k) for k in HEADLINE},
        "ci95": {k: m["ci"].get(k) for k in HEADLINE if k in m["ci"]},
        "per_image_type": m.get("per_image_type"), "warnings": m.get("warnings", []),
        "evaluate_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    path = write_json(payload, args.results / f"independent_test_{args.tag}.json")
    print(result.format())
    for k in HEADLINE:
        ci = payload["ci95"].get(k)
        value = payload["metrics"][k]
        shown = "n/a" if value is None else f"{value:.3f}"
        bounds = f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
        print(f"  {k:26s} {shown}{bounds}")
    for kind, row in (payload["per_image_type"] or {}).items():
        print(f"  {kind}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"  counts: {m['counts']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
