"""`report`: every figure of the toolkit for one or more runs, in one directory with index.html: a
summary table of the runs' final figures, their configuration (the keys that differ, and each
run's whole config.ini), provenance (logs/invocations.csv and logs/events.csv) and the figures
with their captions. Everything the page references lies in that directory (relative links).
"""
import datetime
import html
import os

from . import figures
from .runs import parse_ini

SECTIONS = [("Learning curves", "curves"), ("PI assessment", "pi"), ("Experts", "experts"),
            ("Trajectory of theta_t", "trajectory"), ("Comparison", "compare")]


def _table(head, rows):
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _csv_table(run, name):
    t = run.optional(name)
    if t is None:
        return f"<p>no {html.escape(name)}</p>"
    rows = [[c[i] if isinstance(c, list) else figures.number(c[i]) for c in (t.columns[h] for h in t.header)]
            for i in range(len(t))]
    return _table(t.header, rows)


def build(runs, out_dir, window=None, max_snapshots=50, builders=None):
    """Writes the figures and index.html into out_dir; returns (index path, notes)."""
    builders = builders or {"curves": lambda rs: figures.curves(rs, window), "pi": lambda rs: figures.pi(rs, window),
                            "experts": lambda rs: figures.experts(rs, window),
                            "trajectory": lambda rs: figures.trajectory(rs, max_snapshots),
                            "compare": lambda rs: figures.compare(rs, window)[:2]}
    sections, notes = [], []
    for title, key in SECTIONS:
        if key == "compare" and len(runs) < 2:
            continue
        figs, n = builders[key](runs)
        notes += n
        items = []
        for f in figs:
            path = f.save(out_dir)
            items.append(f'<figure><img src="{html.escape(os.path.basename(path))}" alt="{html.escape(f.name)}">'
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
        if items:
            sections.append(f"<h2>{html.escape(title)}</h2>\n" + "\n".join(items))
    summary = [figures.summary(r) for r in runs]
    head = list(summary[0].keys())
    configs = [parse_ini(r.config_text) for r in runs]
    keys = sorted(set().union(*configs))
    differ = [k for k in keys if len({c.get(k, "") for c in configs}) > 1] if len(runs) > 1 else []
    main_keys = [k for k in ("model", "task", "d-model", "layers", "heads", "experts", "top-k", "d-ff", "batch", "shards",
                             "steps", "lr", "seed", "pilf-profile") if k in keys]
    shown = differ or main_keys
    config_html = _table(["key"] + [r.label for r in runs], [[k] + [c.get(k, "") for c in configs] for k in shown])
    details = "\n".join(f"<details><summary>{html.escape(r.label)}: config.ini</summary><pre>{html.escape(r.config_text)}"
                        f"</pre></details>" for r in runs)
    prov = "\n".join(f"<h3>{html.escape(r.label)}</h3><p>{html.escape(r.path)}</p><h4>invocations</h4>"
                     f"{_csv_table(r, 'logs/invocations.csv')}<h4>events</h4>{_csv_table(r, 'logs/events.csv')}"
                     for r in runs)
    note_html = ("<h2>Left out</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hyperrnn report: {html.escape(", ".join(r.label for r in runs))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1em 0 2em; }} img {{ max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #555; }}
pre {{ font-size: 0.8em; background: #f8f8f8; padding: 0.5em; }}
</style></head><body>
<h1>hyperrnn report</h1>
<p>{len(runs)} run(s), written {when} by analysis/hyperrnn-analysis report.</p>
<h2>Summary</h2>
{_table(head, [[s[h] for h in head] for s in summary])}
<h2>Configuration</h2>
<p>{"The keys that differ between the runs." if differ else "The main keys" + (" (the runs agree on every key)." if len(runs) > 1 else ".")}</p>
{config_html}
{details}
{"".join(sections)}
<h2>Provenance</h2>
{prov}
{note_html}
</body></html>
"""
    index = os.path.join(out_dir, "index.html")
    with open(index, "w") as f:
        f.write(page)
    return index, notes
