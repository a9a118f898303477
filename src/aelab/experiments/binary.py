"""Binary codes for images: the conv autoencoder with a {0, 1} straight-through bottleneck, the same network with a
float (sigmoid) bottleneck of the same size, and PCA-sign hashing, compared on reconstruction and on Hamming
retrieval (semantic hashing, Salakhutdinov & Hinton 2009; STE, Bengio, Leonard & Courville 2013).

    train "binary" (STE) and "binary" with float_bottleneck=True on the TRAIN split (aelab.train)
    PCA-sign codes: signs of the top `bits` principal components, fitted on TRAIN
    test images -> codes -> reconstruction error; test codes query the train codes by Hamming distance
    -> results.json, report.html/md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .. import io, report
from ..evaluate import encode_all, load_run_data, probe_accuracy, read_history, reconstruct_all, sse_per_image
from ..models.binary import BACKWARD_RULES, bits_per_image, encode_codes, hamming_retrieval, pca_sign_codes
from ..train import TrainConfig, load_model, train

PROTOCOL = {
    "database": "train codes", "queries": "test codes", "relevant": "same digit label",
    "ranking": "Hamming distance, ties broken by database index (aelab.models.binary.hamming_retrieval)",
    "float_baseline_retrieval": "the float model's sigmoid code thresholded at 0.5 (the sign of its "
                                "pre-activation, the binary model's own threshold), then Hamming ranking",
    "float_baseline_reconstruction_and_probe": "the float (sigmoid) code itself",
    "pca_sign_reconstruction": "least-squares linear decoder x ~ W b + c from the sign bits, fitted on train",
    "probe": "logistic regression on standardised train codes, scored on test codes (aelab.evaluate.probe_accuracy)",
    "recon_sse": "sum of squared errors over the pixels of a test image, mean over test images",
    "recon_mse": "recon_sse / pixels per image",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import positive_int

    p.add_argument("--out", default="runs/binary")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--bits", type=positive_int, default=512, help="code size (binary, float baseline and PCA-sign)")
    p.add_argument("--backward", default="identity", choices=BACKWARD_RULES, help="straight-through estimator")
    p.add_argument("--epochs", type=positive_int, default=None, help="default 20, --quick 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument("--quick", action="store_true", help="3 epochs (about 2 minutes)")
    p.add_argument("--no-progress", action="store_true")


def linear_decoder_sse(train_codes: np.ndarray, train_x: np.ndarray, test_codes: np.ndarray,
                       test_x: np.ndarray) -> np.ndarray:
    """Per-image test SSE of the least-squares affine decoder x_hat = W b + c fitted on the train codes.

    Solved through the normal equations A^T A w = A^T X (A = [b, 1], (bits+1) x (bits+1)), with lstsq giving
    the minimum-norm solution when a bit is constant or bits are collinear: 10x faster than lstsq on the
    N x (bits+1) matrix itself, and accurate here (0/1 columns, float64)."""
    def design(b):
        return np.c_[b.astype(np.float64), np.ones(len(b))]

    x_tr = train_x.reshape(len(train_x), -1).astype(np.float64)
    a = design(train_codes)
    weights, *_ = np.linalg.lstsq(a.T @ a, a.T @ x_tr, rcond=None)
    return sse_per_image(test_x.astype(np.float64), design(test_codes) @ weights)


def _retrieval(train_codes, train_y, test_codes, test_y) -> dict[str, float]:
    ks = [k for k in (10, 100) if k <= len(train_codes)]
    result = hamming_retrieval(train_codes, train_y, test_codes, test_y, ks=ks)
    return {"precision@10": result.get("precision@10", float("nan")),
            "precision@100": result.get("precision@100", float("nan")), "mAP": result["mAP"]}


def run(args) -> Path:
    t_start = time.perf_counter()
    out = Path(args.out)
    epochs = args.epochs or (3 if args.quick else 20)
    rows, runs, histories, recon_rows = [], {}, {}, None
    for name, options in [("binary", {"bits": args.bits, "backward": args.backward}),
                          ("float", {"bits": args.bits, "float_bottleneck": True})]:
        t0 = time.perf_counter()
        cfg = TrainConfig(model="binary", model_options=options, dataset=args.dataset, data_dir=args.data_dir,
                          train_limit=args.train_limit, epochs=epochs, seed=args.seed, out=str(out / name))
        run_dir = train(cfg, resume=(out / name / "checkpoint.safetensors").exists(), progress=not args.no_progress)
        model = load_model(run_dir)
        train_x, train_y, test_x, test_y = load_run_data(io.read_json(run_dir / "config.json"), args.data_dir)
        test_hat = reconstruct_all(model, test_x)
        sse = sse_per_image(test_x.numpy(), test_hat.numpy())
        if name == "binary":
            train_codes, test_codes = encode_codes(model, train_x), encode_codes(model, test_x)
            probe_tr, probe_te = train_codes, test_codes
        else:
            probe_tr, probe_te = encode_all(model, train_x).numpy(), encode_all(model, test_x).numpy()
            train_codes, test_codes = (probe_tr > 0.5).astype(np.uint8), (probe_te > 0.5).astype(np.uint8)
        rows.append({"code": f"{name} AE ({args.backward} STE)" if name == "binary" else "float AE (sigmoid code)",
                     "bits per image": bits_per_image(model), "recon_sse": float(sse.mean()),
                     "recon_mse": float(sse.mean() / test_x[0].numel()),
                     **_retrieval(train_codes, train_y.numpy(), test_codes, test_y.numpy()),
                     "probe_accuracy": probe_accuracy(probe_tr, train_y.numpy(), probe_te, test_y.numpy()),
                     "distinct train codes": int(len(np.unique(train_codes, axis=0))),
                     "time (s)": time.perf_counter() - t0})
        runs[name] = str(run_dir)
        histories[name] = read_history(run_dir)
        if recon_rows is None:
            first = [int(torch.nonzero(test_y == c)[0]) for c in torch.unique(test_y)[:10]]
            recon_rows = [test_x[first].numpy()]
        recon_rows.append(test_hat[first].numpy())

    # PCA-sign hashing on the same splits
    t0 = time.perf_counter()
    x_tr, x_te = train_x.numpy(), test_x.numpy()
    notes_pca = ""
    if args.bits <= min(len(x_tr), x_tr[0].size):
        pca_tr, pca_te = pca_sign_codes(x_tr, x_te, args.bits)
        sse = linear_decoder_sse(pca_tr, x_tr, pca_te, x_te)
        rows.append({"code": "PCA-sign", "bits per image": args.bits, "recon_sse": float(sse.mean()),
                     "recon_mse": float(sse.mean() / x_te[0].size),
                     **_retrieval(pca_tr, train_y.numpy(), pca_te, test_y.numpy()),
                     "probe_accuracy": probe_accuracy(pca_tr, train_y.numpy(), pca_te, test_y.numpy()),
                     "distinct train codes": int(len(np.unique(pca_tr, axis=0))), "time (s)": time.perf_counter() - t0})
    else:
        notes_pca = (f"PCA-sign skipped: {args.bits} bits exceed the number of principal components "
                     f"(min of {len(x_tr)} train images and {x_tr[0].size} pixels).")

    fig_dir = out / "figures"
    figures = [("Test images (top), binary AE, float AE reconstructions", report.plot_image_rows(
                    recon_rows, ["input", "binary", "float"], fig_dir / "reconstructions.png")),
               ("Loss per epoch", report.plot_curves(histories, fig_dir / "loss.png"))]
    result = {"experiment": "binary", "rows": rows, "protocol": PROTOCOL, "runs": runs,
              "data": {"dataset": args.dataset, "n_train": len(x_tr), "n_test": len(x_te),
                       "train_limit": args.train_limit, "fit_split": "train", "query_split": "test"},
              "settings": {"bits": args.bits, "backward": args.backward, "epochs": epochs, "seed": args.seed,
                           "quick": bool(args.quick)},
              "wall_time_s": time.perf_counter() - t_start}
    io.write_json(out / "results.json", result)
    notes = [f"Data: {args.dataset}, {len(x_tr)} train images (the retrieval database) / {len(x_te)} test images "
             f"(the queries); relevant = same digit. {epochs} epochs, seed {args.seed}.",
             "Float baseline: retrieval uses its sigmoid code thresholded at 0.5 (Hamming ranking); its "
             "reconstruction and probe use the float code (32 bits per number, hence 32x the bits per image).",
             "PCA-sign: the reconstruction is the least-squares affine decoder from the bits, fitted on train.",
             "Hamming ties are broken by database index (deterministic, not tie-averaged).",
             f"Wall time {result['wall_time_s']:.0f} s."] + ([notes_pca] if notes_pca else [])
    return report.write_report(out, f"Binary codes: {args.bits}-bit STE autoencoder vs float bottleneck vs PCA-sign",
                               [("Reconstruction and retrieval on the test split", rows)], figures, notes,
                               config=result["settings"])
