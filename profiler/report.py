"""Human-readable views of a profile: the summary table the CLI prints and the heatmap PNG."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from profiler.profile import Profile


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _ranges(steps: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5,9'."""
    out, start = [], None
    for i, s in enumerate(steps):
        if start is None:
            start = s
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            out.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(out)


def _nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(matrix, axis=1)


def summary(profile: Profile, top: int = 8) -> str:
    k, t = profile.key, profile.data["timing"]
    lines = []
    name = k.get("model") or k["fingerprint"]
    lines.append(f"profile of {name} ({profile.data['environment']['denoiser']}) on {k['device']} {k['dtype']}, "
                 f"{k['sampler']['name']} x {k['steps']} steps, batch {k['batch']}, "
                 f"{profile.data['settings']['samples']} samples, resolution {k['resolution']}")
    den = np.nansum(profile.denoiser_ms)
    lines.append(f"pipeline {t['pipeline_ms']:.1f} ms/call (with profiler {t['pipeline_ms_with_profiler']:.1f}); "
                 f"denoiser {den:.1f} ms/call over {k['steps']} steps ({100 * den / t['pipeline_ms']:.0f}% of the call); "
                 f"timing: {t['method']}")
    flops = profile.data["flops"]["denoiser_call"]
    mem = profile.data["memory"]
    lines.append(f"denoiser call: {flops / 1e9 if flops else 0:.3f} GFLOP (FlopCounterMode), params "
                 f"{_fmt_bytes(mem['param_bytes'])}, peak memory {_fmt_bytes(mem['peak_bytes'])} "
                 f"({mem['method'].split(':')[0].split(' ')[0]})")
    share = profile.latency_share()
    lat = profile.latency
    blocks = profile.blocks
    top_mask = profile.top_level
    covered = share[top_mask].sum()
    lines.append("")
    lines.append(f"where time goes (top-level entries cover {100 * covered:.0f}% of denoiser time):")
    lines.append(f"  {'block':34s} {'kind':24s} {'share':>6s} {'ms/step':>8s} {'GFLOP':>7s} {'params':>8s}")
    order = [i for i in np.argsort(-share) if top_mask[i]][:top]
    steps = profile.steps
    for i in order:
        b = blocks[i]
        lines.append(f"  {b['name'][:34]:34s} {b['kind'][:24]:24s} {100 * share[i]:5.1f}% "
                     f"{np.nansum(lat[i]) / steps:8.2f} {(b['flops'] or 0) / 1e9:7.3f} {_fmt_bytes(b['param_bytes']):>8s}")
    subs = [i for i in np.argsort(-share) if not top_mask[i]][:min(top, 5)]
    if subs:
        lines.append("  largest sub-blocks: " + ", ".join(f"{blocks[i]['name']} {100 * share[i]:.1f}%" for i in subs))

    lines.append("")
    metric = "output_rel_l1"
    red = profile.redundancy(metric)
    usable = np.array([b["role"] in ("block", "sub") for b in blocks])
    lines.append("most redundant blocks (smallest step-to-step change of the block's output, rel L1; "
                 "steps where < 0.1 are cache candidates):")
    means = _nanmean_rows(np.where(usable[:, None], red, np.nan))
    for i in [i for i in np.argsort(means) if usable[i] and np.isfinite(means[i])][:top]:
        low = [s for s in range(steps) if np.isfinite(red[i, s]) and red[i, s] < 0.1]
        best = int(np.nanargmin(red[i])) if np.isfinite(red[i]).any() else 0
        lines.append(f"  {blocks[i]['name'][:34]:34s} mean {means[i]:.3f}  min {np.nanmin(red[i]):.3f} at step {best}"
                     f"  steps < 0.1: {_ranges(low) or 'none'}")

    per_step = profile.data["per_step"]
    out_change = profile.step_series("denoiser_rel_l1")
    if np.isfinite(out_change).any():
        lines.append("")
        lines.append("denoiser output change per step (rel L1): "
                     + " ".join("-" if not np.isfinite(v) else f"{v:.2f}" for v in out_change))
    for name, ind in profile.data["indicators"].items():
        if name == "primary":
            continue
        fit = ind.get("fit")
        if fit:
            lines.append(f"indicator {name} [{ind['source']}]: degree-{fit['degree']} polynomial, "
                         f"R^2 {fit['r2']:.3f}, RMSE {fit['rmse']:.4f} (held-out {fit['heldout_rmse']:.4f}), "
                         f"n {fit['n']}")
        else:
            lines.append(f"indicator {name} [{ind['source']}]: too few points to fit")
    if profile.data["cfg"]["detected"]:
        cos = profile.step_series("cfg_cos")
        lines.append("CFG cond/uncond output cosine per step: "
                     + " ".join("-" if not np.isfinite(v) else f"{v:.3f}" for v in cos))
    tok = profile.redundancy("token_frac")
    if np.isfinite(tok).any():
        per_block = _nanmean_rows(tok)
        best = [i for i in np.argsort(-np.nan_to_num(per_block, nan=-1)) if np.isfinite(per_block[i])][:3]
        lines.append("token redundancy (fraction of tokens with a twin of cosine > "
                     f"{profile.data['tokens']['threshold']}): "
                     + ", ".join(f"{blocks[i]['name']} {per_block[i]:.2f}" for i in best))
    del per_step
    return "\n".join(lines)


def heatmap(profile: Profile, path, metric: str | None = None) -> Path:
    """PNG: blocks x steps of step-to-step change (log colour), latency share bars on the right, and
    per-step series (denoiser output change, indicator, CFG) underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    metric = metric or "output_rel_l1"
    red = profile.redundancy(metric)
    share = profile.latency_share()
    names = [("    " if b["level"] else "") + b["name"] for b in profile.blocks]
    n_blocks, steps = red.shape
    height = min(2.2 + 0.22 * n_blocks + 2.0, 40)
    fig = plt.figure(figsize=(11, height))
    grid = fig.add_gridspec(2, 2, width_ratios=[4, 1.2], height_ratios=[0.22 * n_blocks + 0.8, 2.0],
                            wspace=0.05, hspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    finite = red[np.isfinite(red) & (red > 0)]
    vmin = max(float(finite.min()), 1e-4) if finite.size else 1e-3
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin * 10
    masked = np.ma.masked_invalid(np.where(np.isfinite(red), np.maximum(red, vmin), np.nan))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(masked, aspect="auto", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), interpolation="nearest")
    ax.set_yticks(range(n_blocks))
    ax.set_yticklabels(names, fontsize=7, family="monospace")
    for i, b in enumerate(profile.blocks):
        if b["level"] == 0:
            ax.get_yticklabels()[i].set_fontweight("bold")
    ax.set_xticks(range(steps))
    ax.set_xticklabels([str(s) for s in range(steps)], fontsize=7)
    ax.set_xlabel("step (darker = smaller change since the previous step = more redundant; grey = n/a)", fontsize=8)
    k = profile.key
    ax.set_title(f"{k.get('model') or k['fingerprint']}: step-to-step change of each block's "
                 f"{metric.split('_')[0]} (rel L1) "
                 f"({k['sampler']['name']} x {k['steps']}, {k['device']})", fontsize=9)
    bar = fig.add_subplot(grid[0, 1], sharey=ax)
    colours = ["#c0392b" if b["level"] == 0 else "#e6a0a0" for b in profile.blocks]
    bar.barh(range(n_blocks), 100 * share, color=colours)
    for i, s in enumerate(share):
        if s > 0.005:
            bar.text(100 * s, i, f" {100 * s:.1f}", va="center", fontsize=6)
    bar.set_xlabel("% of denoiser time\n(dark: top-level, light: nested)", fontsize=7)
    bar.tick_params(axis="y", left=False, labelleft=False)
    bar.tick_params(axis="x", labelsize=7)
    bar.set_xlim(0, max(100 * share.max() * 1.35, 1))
    line = fig.add_subplot(grid[1, 0])
    x = np.arange(steps)
    for name, label in (("denoiser_rel_l1", "denoiser output"), ("indicator_rel_l1", "indicator (modulated input)"),
                        ("first_block_residual_rel_l1", "first-block residual"), ("cfg_rel_l1", "CFG cond vs uncond")):
        series = profile.step_series(name)
        if np.isfinite(series).any():
            line.plot(x, series, marker="o", ms=3, label=label)
    line.set_yscale("log")
    line.set_xlim(-0.5, steps - 0.5)
    line.set_xticks(range(steps))
    line.tick_params(labelsize=7)
    line.set_ylabel("rel L1 change", fontsize=8)
    line.legend(fontsize=7, loc="best")
    line.grid(alpha=0.3)
    text = fig.add_subplot(grid[1, 1])
    text.axis("off")
    fit = profile.indicator().get("fit")
    lines = [f"pipeline {profile.pipeline_ms:.0f} ms/call", f"denoiser {np.nansum(profile.denoiser_ms):.0f} ms/call"]
    if fit:
        lines += [f"indicator fit: degree {fit['degree']}", f"R^2 {fit['r2']:.3f}  RMSE {fit['rmse']:.3g}"]
    text.text(0, 0.9, "\n".join(lines), fontsize=8, va="top", family="monospace")
    cax = text.inset_axes([0.0, 0.12, 0.95, 0.1])
    cbar = fig.colorbar(im, cax=cax, orientation="horizontal")
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("heatmap: rel L1 change (log)", fontsize=7)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
