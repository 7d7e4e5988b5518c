"""The search report: Pareto front (PNG and HTML), the top trials, and where the time went."""
from __future__ import annotations

import html
import json
from pathlib import Path

import optuna

from ground.files import atomic_path, write_text_atomic


def _completed(study):
    return [t for t in study.get_trials(deepcopy=False) if "latency_ratio" in t.user_attrs]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (x lower is better, y lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def trial_rows(study, budget) -> list[dict]:
    rows = []
    for t in _completed(study):
        rows.append({"trial": t.number, "speedup": t.user_attrs.get("speedup"),
                     "latency_ratio": t.user_attrs.get("latency_ratio"),
                     "work_ratio": t.user_attrs.get("work_ratio"), "feasible": bool(t.user_attrs.get("feasible")),
                     "metrics": t.user_attrs.get("metrics", {}), "label": t.user_attrs.get("label", "")})
    return sorted(rows, key=lambda r: (not r["feasible"], r["latency_ratio"]))


def write_report(study, budget, out_base: Path, chosen_trial: int | None, summary: dict) -> list[Path]:
    """Writes OUT.report.md, OUT.pareto.png and OUT.pareto.html beside the plan; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = trial_rows(study, budget)
    written = []
    clauses = [str(c) for c in budget]
    fig, axes = plt.subplots(1, len(clauses), figsize=(5.5 * len(clauses), 4.2), squeeze=False)
    for ax, clause in zip(axes[0], clauses):
        pts = [(r["latency_ratio"], r["metrics"].get(clause)) for r in rows if r["metrics"].get(clause) is not None]
        pts_rows = [r for r in rows if r["metrics"].get(clause) is not None]
        if not pts:
            continue
        bound = next(c.bound for c in budget if str(c) == clause)
        upper = next(c.upper_bound for c in budget if str(c) == clause)
        signed = [(x, y if upper else -y) for x, y in pts]
        front = pareto_front(signed)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts],
                   c=["tab:green" if r["feasible"] else "tab:red" for r in pts_rows], s=22, alpha=0.7)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.axhline(bound, color="tab:blue", lw=1, label=f"budget {clause}")
        for r, (x, y) in zip(pts_rows, pts):
            if r["trial"] == chosen_trial:
                ax.scatter([x], [y], marker="*", s=220, c="gold", edgecolors="k", label="chosen plan", zorder=5)
        ax.set_xlabel("latency / baseline latency (lower is faster)")
        ax.set_ylabel(clause.rstrip("0123456789.").rstrip("+*-<>=") + (" change" if "+" in clause or "-" in clause else ""))
        ax.set_title(f"{clause}: {len(pts)} measured trials")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = out_base.with_suffix(".pareto.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append(png)

    table = ["| trial | speed-up | work ratio | feasible | " + " | ".join(clauses) + " | techniques |",
             "|---|---|---|---|" + "---|" * len(clauses) + "---|"]
    for r in rows[:15]:
        metrics = " | ".join(f"{r['metrics'].get(c):.3g}" if r["metrics"].get(c) is not None else "-" for c in clauses)
        work = f"{r['work_ratio']:.2f}" if r["work_ratio"] is not None else "-"
        mark = " (chosen)" if r["trial"] == chosen_trial else ""
        table.append(f"| {r['trial']}{mark} | {r['speedup']:.2f}x | {work} | {'yes' if r['feasible'] else 'no'} | "
                     f"{metrics} | {r['label']} |")
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    pruned = [t.user_attrs.get("pruned_by", "") for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.PRUNED]
    md = [f"# Search report: {summary.get('model')} at `{budget}`", "",
          f"- trials: {sum(states.values())} ({', '.join(f'{k.lower()} {v}' for k, v in sorted(states.items()))})",
          f"- pruned when a clause was decided to fail: {sum('quality decided' in p for p in pruned)}, by the cost model: "
          f"{sum('cost model' in p for p in pruned)}, not applicable: {sum('applicable' in p for p in pruned)}",
          *(f"- {k.replace('_', ' ')}: {v}" for k, v in summary.items() if k not in ("model", "trials", "decisions")),
          "", *decision_lines(summary.get("decisions")),
          "## Top trials (search seeds, point verdict; speed-up = baseline latency / plan latency, interleaved)",
          "", *table, "", f"![Pareto front]({png.name})", ""]
    report = out_base.with_suffix(".report.md")
    write_text_atomic(report, "\n".join(md))
    written.append(report)

    page = out_base.with_suffix(".pareto.html")
    data = json.dumps(rows)
    write_text_atomic(page, f"""<!doctype html><html><head><meta charset="utf-8"><title>planner search: {html.escape(str(summary.get('model')))}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}</style></head>
<body><h1>Search report: {html.escape(str(summary.get('model')))} at <code>{html.escape(str(budget))}</code></h1>
<img src="{html.escape(png.name)}" alt="Pareto front"><h2>Trials</h2><table id="t"></table>
<script>const rows={data};const clauses={json.dumps(clauses)};
const t=document.getElementById('t');let h='<tr><th>trial</th><th>speed-up</th><th>work ratio</th><th>feasible</th>'+clauses.map(c=>'<th>'+c+'</th>').join('')+'<th>techniques</th></tr>';
for(const r of rows){{h+='<tr><td>'+r.trial+'</td><td>'+r.speedup.toFixed(2)+'x</td><td>'+(r.work_ratio==null?'-':r.work_ratio.toFixed(2))+'</td><td>'+(r.feasible?'yes':'no')+'</td>'+clauses.map(c=>'<td>'+(r.metrics[c]==null?'-':r.metrics[c].toPrecision(3))+'</td>').join('')+'<td>'+r.label.replace(/</g,'&lt;')+'</td></tr>';}}
t.innerHTML=h;</script></body></html>
""")
    written.append(page)
    return written


def decision_lines(decisions: dict | None) -> list[str]:
    """The verified candidates: the search's verdict and estimate beside the verification's."""
    if not decisions or not decisions.get("rows"):
        return []
    agreement = decisions.get("agreement")
    out = ["## Search verdicts against the verification (unseen seeds)", "",
           f"Estimator: {decisions['estimator']}. Agreement of verdicts: "
           f"{'n/a' if agreement is None else f'{100 * agreement:.0f}%'}; mean search - verification: "
           + (", ".join(f"{k} {v:+.3g}" for k, v in decisions.get("bias", {}).items()) or "n/a"), "",
           "| trial | configuration | clause | search (n) | feasible | verification (n) | point | holds | why it failed |",
           "|---|---|---|---|---|---|---|---|---|"]

    def num(value, n):
        return "-" if value is None else f"{value:.3g} ({n})"

    for r in decisions["rows"]:
        out.append(f"| {r['trial']} | {r['label']} | {r['clause']} | {num(r['search_value'], r['search_n'])} | "
                   f"{'yes' if r['search_feasible'] else 'no'} | {num(r['verify_value'], r['verify_n'])} | "
                   f"{'-' if r['verify_point'] is None else 'yes' if r['verify_point'] else 'no'} | "
                   f"{'yes' if r['verify_holds'] else 'no'} | {r['why']} |")
    return out + [""]
