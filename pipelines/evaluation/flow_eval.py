"""Flow accuracy on held-out degraded flow pairs: EPE and 1/3/5-px accuracy per degradation preset.

    cfg = FlowEvalConfig(checkpoint=("drfa=runs/flow_ablation/drfa/drfa.safetensors",), out="runs/flow_eval")
    result = evaluate_flow(cfg)      # {"rows", "columns", "markdown", "summary", "files", ...}

Methods: any number of `models.flow` checkpoints (NAME=PATH, read with `models.flow.load`)
plus OpenCV's DIS and Farneback as weight-free baselines, and optionally "zero" (no
motion: its EPE is the mean ground-truth displacement, the bar for having learned anything).

Pairs: `pipelines.data.flow_pairs.flow_pairs` (the recipe of DRFA's training pairs, see
there), from the *held-out* end of each video (the last `holdout` fraction of its frames;
`frame_split`), never seen in training when the trainer uses the complement
(benchmarks/flow_ablation.py does). Every preset degrades the *same* clean pairs.

Metrics pool all valid pixels of all pairs of a preset (as Sintel/KITTI "all" EPE): EPE =
mean end-point error, Npx = share of pixels with EPE < N, from `models.flow.flow_metrics`
per batch weighted by its valid pixel count.

Writes under `out`: flow_eval.md (rows = methods, columns = preset x metric, best per
column in bold), flow_eval.csv (full precision, plus ms per pair), flow_eval.json (config +
rows), and for pair `example` under every preset examples/<preset>/*.png: img1, img2 (LQ),
gt_flow (invalid pixels black), gt_valid, flow_<method> (coloured on the ground truth's
scale), confidence_<method> (DRFA's C, grey, absolute: white = 1), and
examples/<preset>.png, the same as one labelled strip.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from pipelines.common.tables import markdown_lines
from pipelines.common.video import to_uint8
from pipelines.data.flow_pairs import MOTIONS, flow_pairs, load_frames

METRICS = ("epe", "1px", "3px", "5px")
BASELINES = ("dis", "farneback")           # the default weight-free methods
REFERENCES = ("zero",)                      # also accepted: "zero" predicts no motion (EPE = mean |GT flow|)


@dataclasses.dataclass(frozen=True)
class FlowEvalConfig:
    checkpoint: tuple[str, ...] = ()        # NAME=PATH of a models.flow checkpoint (drfa.safetensors); repeat
    baselines: tuple[str, ...] = BASELINES  # weight-free: dis, farneback (OpenCV), zero (no motion); "none"
    frames_from: tuple[str, ...] = ("bikes", "carphone")  # sample names (pipelines.common.samples) or video paths/URLs
    holdout: float = 0.2                    # last fraction of each video's frames: the evaluation frames
    presets: tuple[str, ...] = ("clean", "light", "medium", "heavy")  # degradation presets (degrade.preset)
    pairs: int = 48                         # flow pairs per preset (the same clean pairs for every preset)
    crop: int = 64                          # px: LQ pair side (LoaderConfig.crop)
    flow_scale: int = 2                     # pairs made at crop*flow_scale px, degraded down by it (LoaderConfig)
    max_flow: float = 24.0                  # px at LQ size: largest synthetic displacement (LoaderConfig)
    motion: str = "layers"                  # "layers": training's pairs; "translation": camera shift only (sanity)
    seed: int = 20240601                    # numpy seed of the pairs and their degradations
    iters: int = -1                         # refinement iterations for checkpoints; -1: each one's test_iters
    batch_size: int = 8                     # pairs per forward pass of a checkpoint
    device: str = "cpu"                     # torch device for checkpoints (baselines run on CPU)
    threads: int = 0                        # torch intra-op threads while evaluating; 0: leave as is (tiny
    #                                         models on a busy 2-core machine: 1 is far faster)
    example: int = 0                        # index of the pair drawn as PNGs for every preset (-1: none)
    out: str = "runs/flow_eval"             # output folder

    def __post_init__(self):
        from degrade import PRESETS

        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"FlowEvalConfig.holdout must be in (0, 1), got {self.holdout}")
        bad = [p for p in self.presets if p not in PRESETS]
        if bad or not self.presets:
            raise ValueError(f"FlowEvalConfig.presets: unknown {bad or 'empty list'}; choose from {PRESETS}")
        bad = [b for b in self.baselines if b not in (*BASELINES, *REFERENCES, "none")]
        if bad:
            raise ValueError(f"FlowEvalConfig.baselines: unknown {bad}; choose from {BASELINES + REFERENCES} or none")
        if self.motion not in MOTIONS:
            raise ValueError(f"FlowEvalConfig.motion must be one of {MOTIONS}, got {self.motion!r}")
        if self.threads < 0:
            raise ValueError(f"FlowEvalConfig.threads must be >= 0, got {self.threads}")
        if self.pairs < 1 or self.batch_size < 1 or self.crop < 8 or self.flow_scale < 1 or self.max_flow <= 0:
            raise ValueError(f"FlowEvalConfig: bad pairs {self.pairs}, batch_size {self.batch_size}, crop "
                             f"{self.crop} (>= 8), flow_scale {self.flow_scale} or max_flow {self.max_flow}")
        if not self.frames_from:
            raise ValueError("FlowEvalConfig.frames_from is empty: name at least one video")


# ---------------------------------------------------------------- methods
@dataclasses.dataclass
class Method:
    name: str
    kind: str                          # "checkpoint" or "baseline"
    source: str                        # checkpoint path or OpenCV function name
    model: torch.nn.Module | None = None
    fn: Callable | None = None
    variant: str = ""                  # raft | gma | drfa | opencv | reference


def parse_checkpoint(spec: str) -> tuple[str, str]:
    """"NAME=PATH" -> (NAME, PATH); a bare PATH is named after its folder (or file stem)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        if not name or not path:
            raise ValueError(f"--checkpoint {spec!r}: expected NAME=PATH")
        return name, path
    p = Path(spec)
    return (p.parent.name or p.stem), spec


def zero_flow(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """No motion: (2, H, W) zeros. Its EPE is the mean ground-truth motion, the floor a
    learned method has to beat to have learned anything."""
    return img1.new_zeros((2, *img1.shape[-2:]))


def load_methods(cfg: FlowEvalConfig) -> list[Method]:
    from models.flow import dis_flow, farneback_flow, load

    methods: list[Method] = []
    for spec in cfg.checkpoint:
        name, path = parse_checkpoint(spec)
        if not Path(path).is_file():
            raise ValueError(f"--checkpoint {name}={path}: no such file")
        model = load(path, device=cfg.device)
        methods.append(Method(name, "checkpoint", path, model=model, variant=model.config.variant))
    fns = {"dis": (dis_flow, "DIS", "opencv"), "farneback": (farneback_flow, "Farneback", "opencv"),
           "zero": (zero_flow, "zero", "reference")}
    for b in cfg.baselines:
        if b != "none":
            fn, name, variant = fns[b]
            methods.append(Method(name, "baseline", b, fn=fn, variant=variant))
    names = [m.name for m in methods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"method names must be unique, got {dupes} twice: use --checkpoint NAME=PATH")
    if not methods:
        raise ValueError("nothing to evaluate: give --checkpoint NAME=PATH and/or --baselines dis farneback")
    return methods


@torch.no_grad()
def predict(method: Method, img1: torch.Tensor, img2: torch.Tensor, iters: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(flow (B, 2, H, W) on CPU, confidence (B, 1, H, W) or None) for a batch of pairs."""
    if method.kind == "baseline":
        return torch.stack([method.fn(a, b) for a, b in zip(img1, img2)]).cpu(), None
    model = method.model
    device = next(model.parameters()).device
    model.eval()
    out = model(img1.to(device), img2.to(device), iters=iters, final_only=True)
    conf = out.upsampled_confidence()
    return out.flow.float().cpu(), (conf.float().cpu() if conf is not None else None)


def score(method: Method, batch: dict[str, torch.Tensor], batch_size: int, iters: int | None
          ) -> tuple[dict[str, float], float]:
    """Pooled metrics over all valid pixels of `batch`, and seconds per pair."""
    from models.flow import flow_metrics

    n = batch["img1"].shape[0]
    sums, count, seconds = dict.fromkeys(METRICS, 0.0), 0, 0.0
    for a in range(0, n, batch_size):
        sl = slice(a, a + batch_size)
        t0 = time.perf_counter()
        flow, _ = predict(method, batch["img1"][sl], batch["img2"][sl], iters)
        seconds += time.perf_counter() - t0
        valid = batch["valid"][sl]
        k = int(valid.sum())
        if k == 0:
            continue
        m = flow_metrics(flow, batch["flow"][sl], valid)
        for key in METRICS:
            sums[key] += m[key] * k
        count += k
    metrics = {key: (sums[key] / count if count else float("nan")) for key in METRICS}
    return metrics, seconds / n


# ---------------------------------------------------------------- outputs
def column(preset: str, metric: str) -> str:
    return f"{preset}_{metric}"


def _fmt(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.2f}" if metric == "epe" else f"{100 * value:.1f}"


def markdown(rows: Sequence[dict], presets: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Rows = methods, columns = preset x metric; the best value of each column in bold."""
    heads = ["method"] + [f"{p} {'EPE' if m == 'epe' else m + ' %'}" for p in presets for m in METRICS]
    best = {}
    for p in presets:
        for m in METRICS:
            vals = [r[column(p, m)] for r in rows if not math.isnan(r[column(p, m)])]
            if vals and len(rows) > 1:
                best[column(p, m)] = min(vals) if m == "epe" else max(vals)
    body = []
    for r in rows:
        cells = [r["method"]]
        for p in presets:
            for m in METRICS:
                v = r[column(p, m)]
                text = _fmt(m, v)
                cells.append(f"**{text}**" if best.get(column(p, m)) == v else text)
        body.append(cells)
    lines = markdown_lines(heads, body, ["---"] + ["---:"] * (len(heads) - 1))
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r.get(c, "") for c in columns])


def _grey(x: torch.Tensor) -> np.ndarray:
    g = (x.clamp(0, 1) * 255).round().byte().numpy()
    return np.repeat(g[..., None], 3, axis=2)


def _save_png(image: np.ndarray, path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"could not write {path}")


def _strip(tiles: Sequence[tuple[str, np.ndarray]], zoom: int = 3) -> np.ndarray:
    """Tiles side by side, each enlarged `zoom` x (nearest) under a one-line label."""
    import cv2

    out = []
    for label, tile in tiles:
        big = cv2.resize(tile, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        head = np.full((18, big.shape[1], 3), 255, np.uint8)
        cv2.putText(head, label[: max(4, big.shape[1] // 8)], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        out += [np.concatenate([head, big]), np.full((big.shape[0] + 18, 4, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=1)


def write_examples(out: Path, preset: str, pair: dict[str, torch.Tensor], methods: Sequence[Method],
                   iters: int | None) -> list[Path]:
    """PNGs of one LQ pair under `preset`: frames, GT flow and valid, flows (GT's colour
    scale), confidences (grey, absolute: white = 1). Returns the files written."""
    from models.flow import flow_to_color

    folder = out / "examples" / preset
    gt, valid = pair["flow"][0], pair["valid"][0]
    scale = max(float(gt.norm(dim=0)[valid].max()) if valid.any() else float(gt.norm(dim=0).max()), 1e-3)
    gt_img = flow_to_color(gt, max_flow=scale)
    gt_img[~valid.numpy()] = 0                      # invalid ground truth in black
    tiles = [("img1", "img1", to_uint8(pair["img1"][0])), ("img2", "img2", to_uint8(pair["img2"][0])),
             ("GT flow", "gt_flow", gt_img), ("GT valid", "gt_valid", _grey(valid.float()))]
    for m in methods:
        flow, conf = predict(m, pair["img1"], pair["img2"], iters)
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in m.name)
        tiles.append((m.name, f"flow_{slug}", flow_to_color(flow[0], max_flow=scale)))
        if conf is not None:
            tiles.append((f"{m.name} C", f"confidence_{slug}", _grey(conf[0, 0])))
    files = []
    for _, name, tile in tiles:
        _save_png(tile, folder / f"{name}.png")
        files.append(folder / f"{name}.png")
    sheet = out / "examples" / f"{preset}.png"
    _save_png(_strip([(label, tile) for label, _, tile in tiles]), sheet)
    return files + [sheet]


# ---------------------------------------------------------------- the evaluation
def evaluate_flow(cfg: FlowEvalConfig, log: Callable[[str], None] = print) -> dict:
    """Evaluate every method on `cfg.pairs` held-out pairs per preset; write the tables and PNGs.

    Returns {"rows": [{"method", "variant", "<preset>_<metric>", ..., "ms_per_pair"}],
    "columns", "markdown", "summary", "files", "pairs", "valid_fraction", "seconds"}."""
    saved_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _evaluate_flow(cfg, log)
    finally:
        torch.set_num_threads(saved_threads)


def _evaluate_flow(cfg: FlowEvalConfig, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = load_methods(cfg)
    videos = load_frames(cfg.frames_from, "heldout", cfg.holdout, min_side=cfg.crop * cfg.flow_scale)
    t0 = time.perf_counter()
    data = flow_pairs(videos, cfg.pairs, cfg.seed, cfg.presets, cfg.crop, cfg.flow_scale, cfg.max_flow, cfg.motion)
    t_pairs = time.perf_counter() - t0
    iters = cfg.iters if cfg.iters > 0 else None

    rows, files = [], []
    for m in methods:
        row = {"method": m.name, "variant": m.variant, "source": m.source}
        seconds = []
        for p in cfg.presets:
            metrics, spp = score(m, data[p], cfg.batch_size, iters)
            seconds.append(spp)
            row.update({column(p, k): v for k, v in metrics.items()})
        row["ms_per_pair"] = 1000 * float(np.mean(seconds))
        rows.append(row)
    if 0 <= cfg.example < cfg.pairs:
        for p in cfg.presets:
            pair = {k: v[cfg.example:cfg.example + 1] for k, v in data[p].items()}
            files += write_examples(out, p, pair, methods, iters)

    valid_fraction = {p: float(data[p]["valid"].float().mean()) for p in cfg.presets}
    source = (f"{cfg.pairs} pairs per preset from the held-out last {cfg.holdout:.0%} of the frames of "
              f"{', '.join(cfg.frames_from)}; motion '{cfg.motion}', made at {cfg.crop * cfg.flow_scale} px and "
              f"degraded (one shared draw per pair) to {cfg.crop} px, max flow {cfg.max_flow:g} px; seed {cfg.seed}")
    notes = [source,
             ("EPE in px (lower is better), Npx = % of valid pixels with end-point error < N px (higher is "
              "better); pooled over all valid pixels of a preset"),
             "valid pixels: " + ", ".join(f"{p} {100 * v:.0f}%" for p, v in valid_fraction.items()),
             "checkpoint iterations: " + (str(iters) if iters else "each model's test_iters"),
             "runtime ms/pair: " + ", ".join(f"{r['method']} {r['ms_per_pair']:.1f}" for r in rows)]
    table = markdown(rows, cfg.presets, notes)
    columns = ["method", "variant"] + [column(p, k) for p in cfg.presets for k in METRICS] + ["ms_per_pair", "source"]
    md, csv_path, js = out / "flow_eval.md", out / "flow_eval.csv", out / "flow_eval.json"
    md.write_text("# Flow accuracy on held-out degraded pairs\n\n" + table)
    _write_csv(csv_path, rows, columns)
    js.write_text(json.dumps({"config": dataclasses.asdict(cfg), "rows": rows,
                              "valid_fraction": valid_fraction}, indent=2) + "\n")

    last = cfg.presets[-1]
    first = cfg.presets[0]
    ranked = sorted(rows, key=lambda r: (math.isnan(r[column(last, 'epe')]), r[column(last, 'epe')]))
    summary = (f"flow_eval: {len(methods)} methods x {len(cfg.presets)} presets x {cfg.pairs} pairs "
               f"({cfg.crop} px, held-out {', '.join(cfg.frames_from)}); EPE {first}->{last}: "
               + ", ".join(f"{r['method']} {r[column(first, 'epe')]:.2f}->{r[column(last, 'epe')]:.2f}" for r in rows)
               + f"; best on {last}: {ranked[0]['method']}; {time.perf_counter() - t_start:.0f} s -> {md}")
    log(table)
    log(summary)
    return {"rows": rows, "columns": columns, "markdown": table, "summary": summary,
            "files": {"markdown": md, "csv": csv_path, "json": js, "examples": files},
            "pairs": cfg.pairs, "valid_fraction": valid_fraction, "pair_seconds": t_pairs,
            "seconds": time.perf_counter() - t_start}
