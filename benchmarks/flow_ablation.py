"""A miniature of the paper's Table 2 (DRFA ablation), measured as flow accuracy:
tiny RAFT, GMA and DRFA trained alike on heavily degraded flow pairs from real video,
then scored with OpenCV's DIS and Farneback on held-out pairs at every degradation preset.

    .venv/bin/python benchmarks/flow_ablation.py                 # ~15 min of training in all, ~20 min total
    .venv/bin/python benchmarks/flow_ablation.py --minutes 1     # smoke run
    .venv/bin/python benchmarks/flow_ablation.py --measure-threads 4   # 1 vs 2 threads vs 3 processes, then exit

1. Data: the first 80% of the frames of the sample videos (bikes, carphone; the last 20%
   are the evaluation's held-out frames) -> a fixed pool of flow pairs made and degraded
   with preset `heavy` exactly as pipelines/data/loaders.py does for DRFA pretraining (made at
   128 px, degraded to 64 px; pipelines/data/flow_pairs.py: `flow_pairs`). Every variant sees
   the same batches in the same order (pool reshuffled per epoch, a whole batch flipped
   left-right half the time, both from the seed).
2. Train, in this process, no Ray: for each variant the same seed, steps, AdamW + one-cycle
   (RAFT's recipe: lr 4e-4, weight decay 1e-4, 5% linear warm-up then linear decay, grad
   clip 1.0, sequence loss gamma 0.8) through `pipelines.train.drfa.drfa_step`. The step
   count is calibrated: a few timed steps of each variant, then `--minutes` of training
   split over the three. Checkpoints: <out>/<variant>/drfa.safetensors (+ drfa.json).
3. Evaluate: `pipelines.evaluation.flow_eval.evaluate_flow` (held-out pairs, all presets, DIS,
   Farneback and "zero", the no-motion floor) -> <out>/eval/flow_eval.md, .csv,
   examples/*.png; the table is printed.

Threads (`--measure-threads K`): K steps of each variant run (a) in sequence with 1 torch
thread, (b) in sequence with 2, (c) as three processes at once with 1 thread each; prints
wall and CPU seconds. Measured here (K=6, 18 steps in all, 2 cores at load ~15): (a) 15 s
wall / 4.1 s CPU, (b) 335 s / 78 s (OpenMP spin-waiting on busy cores: 20x worse), (c) 70 s
/ 3.7 s (2.8-3.1 s per step in each process, against 0.65-0.75 s in sequence; process
start-up on top). Hence the default: in sequence, `--threads 1`.
Times are wall clock (what a run costs here) with CPU time alongside: a machine shared
with other jobs inflates wall time far more than CPU time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repository root there.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

VARIANTS = ("raft", "gma", "drfa")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    preset: str = "tiny"          # models.flow size preset
    steps: int = 100              # optimizer steps (the same for every variant)
    batch_size: int = 4           # pairs per step
    lr: float = 4e-4              # one-cycle peak learning rate (RAFT)
    weight_decay: float = 1e-4    # AdamW weight decay (RAFT)
    pct_start: float = 0.05       # warm-up share of the one-cycle schedule (RAFT)
    gamma: float = 0.8            # sequence-loss decay (RAFT)
    grad_clip: float = 1.0        # gradient-norm clip (RAFT)
    seed: int = 0                 # model init, batch order and flips
    flip: bool = True             # flip a whole batch left-right half the time
    threads: int = 1              # torch intra-op threads for this variant
    log_every: int = 0            # print every N steps (0: ~10 lines per run)


def plain_engine(model, spec: TrainSpec):
    """The engine `drfa_step` drives: the model + AdamW + RAFT's one-cycle schedule, clipped."""
    from pipelines.train.common import PlainEngine

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.lr, total_steps=spec.steps + 1, pct_start=spec.pct_start,
        cycle_momentum=False, anneal_strategy="linear")
    return PlainEngine(model, optimizer, grad_clip=spec.grad_clip, scheduler=scheduler)


def batches(pool: dict[str, torch.Tensor], batch_size: int, seed: int):
    """Endless batches of the pool: reshuffled every epoch, a batch flipped left-right with
    probability 1/2 (flow x negated); the same sequence for a given (pool, batch_size, seed)."""
    n = pool["img1"].shape[0]
    if n < batch_size:
        raise ValueError(f"pool of {n} pairs is smaller than a batch of {batch_size}")
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, epoch, 0xBA7C])
        perm = torch.from_numpy(rng.permutation(n))
        for a in range(0, n - batch_size + 1, batch_size):
            idx = perm[a:a + batch_size]
            b = {k: v[idx] for k, v in pool.items()}
            if rng.random() < 0.5:
                b = {k: v.flip(-1) for k, v in b.items()}
                b["flow"] = b["flow"] * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
            yield b
        epoch += 1


def train_variant(variant: str, pool, spec: TrainSpec, out: str | None = None, quiet: bool = False) -> dict:
    """Train one variant on `pool` (a dict of tensors, or a path saved with torch.save)."""
    import cv2

    from models.flow import build, flow_preset, save
    from pipelines.train.drfa import drfa_step

    torch.set_num_threads(spec.threads)
    cv2.setNumThreads(1)
    if isinstance(pool, (str, os.PathLike)):
        pool = torch.load(pool, weights_only=True)
    torch.manual_seed(spec.seed)
    model = build(flow_preset(spec.preset, variant)).train()
    engine = plain_engine(model, spec)
    data = batches(pool, spec.batch_size, spec.seed)
    every = spec.log_every or max(1, spec.steps // 10)
    history = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, spec.steps + 1):
        _, m = drfa_step(engine, next(data), spec.gamma, None)
        history.append(m)
        if not quiet and (step % every == 0 or step == spec.steps):
            recent = history[-every:]
            print(f"  [{variant}] step {step}/{spec.steps} loss {np.mean([h['loss'] for h in recent]):.3f} "
                  f"train EPE {np.mean([h['epe'] for h in recent]):.2f} lr {engine.scheduler.get_last_lr()[0]:.1e} "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tail = history[-max(1, spec.steps // 10):]
    summary = {"variant": variant, "steps": spec.steps, "wall_s": wall, "cpu_s": cpu,
               "s_per_step": wall / spec.steps, "cpu_s_per_step": cpu / spec.steps,
               "params": sum(p.numel() for p in model.parameters()),
               "train_epe_last10%": float(np.mean([h["epe"] for h in tail])),
               "train_loss_last10%": float(np.mean([h["loss"] for h in tail]))}
    if out:
        summary["checkpoint"] = str(save(model, Path(out) / variant / "drfa.safetensors"))
    return summary


def _train_job(args):
    return train_variant(*args)


def run_variants(variants, pool_path: str, spec: TrainSpec, parallel: bool, out: str | None,
                 quiet: bool = False) -> tuple[list[dict], float]:
    """Train every variant, in sequence here or at once in one process each; (summaries, wall s)."""
    t0 = time.perf_counter()
    if not parallel:
        pool = torch.load(pool_path, weights_only=True)
        results = [train_variant(v, pool, spec, out, quiet) for v in variants]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(variants), mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_train_job, [(v, pool_path, spec, out, quiet) for v in variants]))
    return results, time.perf_counter() - t0


def measure_threads(variants, pool_path: str, spec: TrainSpec, k: int) -> None:
    """(a) sequence x 1 thread, (b) sequence x 2 threads, (c) one process per variant x 1 thread."""
    small = dataclasses.replace(spec, steps=k)
    print(f"threads: {k} steps of each of {', '.join(variants)} (batch {spec.batch_size}, 64 px):")
    for label, threads, parallel in (("in sequence, 1 thread", 1, False), ("in sequence, 2 threads", 2, False),
                                     (f"{len(variants)} processes at once, 1 thread each", 1, True)):
        cpu0 = time.process_time()
        res, wall = run_variants(variants, pool_path, dataclasses.replace(small, threads=threads), parallel,
                                 None, quiet=True)
        cpu = sum(r["cpu_s"] for r in res) if parallel else time.process_time() - cpu0
        per = ", ".join(f"{r['variant']} {r['s_per_step']:.2f}" for r in res)
        print(f"  {label:34s} wall {wall:6.1f} s, CPU {cpu:6.1f} s for {k * len(variants)} steps "
              f"({per} s/step wall)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget for all variants together")
    parser.add_argument("--steps", type=int, default=0, help="steps per variant; 0: calibrated from --minutes")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--videos", nargs="+", default=["bikes", "carphone"], help="sample names or video paths")
    parser.add_argument("--holdout", type=float, default=0.2, help="last share of frames kept for evaluation")
    parser.add_argument("--pool", type=int, default=1024, help="training pairs made (capped at steps x batch)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--parallel", action="store_true", help="train the variants at once, one process each")
    parser.add_argument("--measure-threads", type=int, default=0, metavar="K",
                        help="only time K steps per variant in the three thread layouts, then exit")
    parser.add_argument("--eval-pairs", type=int, default=48, help="held-out pairs per preset")
    parser.add_argument("--out", default="runs/flow_ablation")
    args = parser.parse_args(argv)

    import cv2

    from pipelines.data.flow_pairs import flow_pairs, load_frames
    from pipelines.evaluation.flow_eval import FlowEvalConfig, evaluate_flow

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    crop, flow_scale, max_flow = 64, 2, 24.0          # LoaderConfig defaults: 128 px pairs -> 64 px LQ
    videos = load_frames(args.videos, "train", args.holdout, min_side=crop * flow_scale)
    print("training frames: " + ", ".join(f"{n} {len(f)}" for n, f in videos)
          + f" (the last {args.holdout:.0%} of each video held out)", flush=True)

    def make_pool(count: int, start: int = 0) -> dict[str, torch.Tensor]:
        return flow_pairs(videos, count, 1000 + args.seed, ("heavy",), crop, flow_scale, max_flow,
                          start=start)["heavy"]

    spec = TrainSpec(batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    pool_path = str(out / "pool.pt")

    # 1. Calibrate on a first slice of the pool: seconds per step of each variant.
    t0 = time.perf_counter()
    pool = make_pool(4 * args.batch_size)
    torch.save(pool, pool_path)
    if args.measure_threads:
        measure_threads(args.variants, pool_path, spec, args.measure_threads)
        return 0
    steps = args.steps
    if steps <= 0:
        cal, _ = run_variants(args.variants, pool_path, dataclasses.replace(spec, steps=4), args.parallel, None,
                              quiet=True)
        per_step = {r["variant"]: r["s_per_step"] for r in cal}
        # In sequence the variants' times add up; at once (measured at once) the slowest sets the pace.
        step_s = max(per_step.values()) if args.parallel else sum(per_step.values())
        steps = max(10, int(60 * args.minutes / step_s))
        print("calibration (s/step, wall): " + ", ".join(f"{v} {s:.2f}" for v, s in per_step.items())
              + f" -> {steps} steps per variant for {args.minutes:g} min", flush=True)

    # 2. The rest of the pool.
    need = min(args.pool, steps * args.batch_size)
    if need > pool["img1"].shape[0]:
        rest = make_pool(need - pool["img1"].shape[0], start=pool["img1"].shape[0])
        pool = {k: torch.cat([pool[k], rest[k]]) for k in pool}
        torch.save(pool, pool_path)
    n_pool = pool["img1"].shape[0]
    print(f"pool: {n_pool} heavy pairs (64 px, {100 * float(pool['valid'].float().mean()):.0f}% valid pixels), "
          f"{steps * args.batch_size / n_pool:.1f} epochs, {time.perf_counter() - t0:.0f} s incl. calibration",
          flush=True)
    del pool

    # 3. Train.
    spec = dataclasses.replace(spec, steps=steps)
    results, wall = run_variants(args.variants, pool_path, spec, args.parallel, str(out))
    Path(pool_path).unlink()
    print("training (same data, seed, steps): " + "; ".join(
        f"{r['variant']} {r['steps']} steps {r['wall_s']:.0f} s wall / {r['cpu_s']:.0f} s CPU, "
        f"train EPE (last 10%) {r['train_epe_last10%']:.2f}, {r['params'] / 1e3:.0f}k params" for r in results)
        + f"; {wall:.0f} s", flush=True)

    # 4. Evaluate.
    cfg = FlowEvalConfig(checkpoint=tuple(f"{r['variant']}={r['checkpoint']}" for r in results),
                         frames_from=tuple(args.videos), holdout=args.holdout, pairs=args.eval_pairs, crop=crop,
                         flow_scale=flow_scale, max_flow=max_flow, threads=args.threads, out=str(out / "eval"),
                         baselines=("dis", "farneback", "zero"))
    result = evaluate_flow(cfg, log=lambda s: None)
    (out / "train.json").write_text(json.dumps({"args": vars(args), "spec": dataclasses.asdict(spec),
                                                "results": results}, indent=2) + "\n")
    print(f"\nMiniature Table 2: tiny {'/'.join(args.variants)} trained {steps} steps x {args.batch_size} pairs on "
          f"heavy-degraded pairs; evaluated on {args.eval_pairs} held-out pairs per preset\n")
    print(result["markdown"])
    print(result["summary"])
    print(f"flow_ablation: {time.perf_counter() - t_start:.0f} s in all -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
