"""Scoring for benchmarks/gpu_lease/evaluate.sh: does a prior trained on a lent GPU replace bundled:ct_patch_wide?

    python benchmarks/gpu_lease/lease_eval.py card OUT/prior          # load it, print its training record
    python benchmarks/gpu_lease/lease_eval.py loss OUT/heldout_loss.md
    python benchmarks/gpu_lease/lease_eval.py validate --current CURRENT_FULL CURRENT_CROP --new NEW_FULL NEW_CROP
    python benchmarks/gpu_lease/lease_eval.py heldout NEW_RUN... [--current CURRENT_RUN...]

Each RUN is a benchmarks/bench_real.py --out folder (its real.json). Exit status: validate 0 pass, 1 fail; heldout
0 adopt, 1 not, 2 no verdict (an invalid comparison); any error (a missing or malformed run, a usage error) 3, so
that evaluate.sh never reads a crash as a verdict. The rules (fixed before any run; evaluate.sh's
header): validation passes if at 8 and at 4 views the new prior's mean axial delta over tuned ADMM-TV on the eight
validation cases is >= the current prior's + 0.10 dB and it has no more cases below ADMM-TV; then held out, once,
adopt if the mean change against the current default over the nine cases of the README's issue-12 table is >= 0 at
8 and at 4 views and no case loses more than 0.2 dB (the forty-sixth session's rule, ct_patch_wide's card).
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root: pipelines, medrecon, README.md
sys.path.insert(0, str(ROOT))
FAST = "fast + z-TV (warm)"
VAL_MARGIN, MAX_LOSS, ADMM_TOL = 0.10, 0.2, 0.02
ERROR = 3  #: the exit status of any error: neither a verdict (0, 1) nor "no verdict" (2)


@functools.cache
def readme_table() -> dict:
    """The README's table "Where it stands on held-out real scans (issue 12)" as {scan: {case: (ADMM-TV, wide)}}:
    axial PSNR of tuned 3D ADMM-TV and of the current default (the "wide" column, bundled:ct_patch_wide; the single
    slices' 4-view figure the two-sample default, not the one sample's in brackets), per scan and config."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| held-out CT (pixel) |"):]
    rows = _md_rows(table[:table.index("\n\n")])
    if not (rows[0][1].startswith("8 views") and rows[0][4].startswith("4 views")):
        raise SystemExit(f"README.md: the held-out table's columns moved: {rows[0]}")
    out = {}
    for cells in rows[1:-1]:  # the header; the mean
        scan = re.match(r"`(\w+)`", cells[0])
        ct8, ct4 = ([float(x) for x in re.findall(r"\d+\.\d+", re.sub(r"\((was|one sample) [^)]*\)", "", c))]
                    for c in (cells[1], cells[4]))
        if scan is None or len(ct8) != 3 or len(ct4) != 3:
            raise SystemExit(f"README.md: a held-out table row is not `scan` | ADMM-TV / ct_patch / wide: {cells[0]}")
        out[scan.group(1)] = {"ct8": (ct8[0], ct8[2]), "ct4": (ct4[0], ct4[2])}
    return out


def _md_rows(text: str) -> list[list[str]]:
    """The cells of each row of the markdown tables in ``text``, the header's included, the rule lines not."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def axial(runs, by_run: bool = False) -> dict:
    """{(case, scan): (ADMM-TV axial PSNR, default axial PSNR)} over bench_real.py output folders; ``by_run``: the
    scan named RUN_FOLDER:SCAN (the same slice full field and cropped are two validation cases). A scan in several
    folders without ``by_run`` is refused."""
    out = {}
    for run in runs:
        for case, rec in json.loads(Path(run, "real.json").read_text()).items():
            for scan, rows in rec["scans"].items():
                by = {r["method"]: r["psnr_axial"] for r in rows}
                admm = [v for k, v in by.items() if k.startswith("ADMM-TV")]
                if len(admm) != 1 or FAST not in by:
                    raise SystemExit(f"{run}/real.json: {case} {scan} lacks the ADMM-TV or the '{FAST}' row")
                key = (case, f"{Path(run).name}:{scan}" if by_run else scan)
                if key in out:
                    raise SystemExit(f"{case} {scan} is in two of the runs given")
                out[key] = (admm[0], by[FAST])
    return out


def val_summary(res: dict) -> dict:
    """Per config: mean delta over ADMM-TV, cases below it, number of cases."""
    out = {}
    for case in sorted({c for c, _ in res}, key=lambda c: -int(c[2:])):
        d = [f - a for (c, _), (a, f) in res.items() if c == case]
        out[case] = {"mean": sum(d) / len(d), "below": sum(x < 0 for x in d), "n": len(d)}
    return out


def val_rule(cur: dict, new: dict, cases=("ct8", "ct4")) -> tuple[bool, list[str]]:
    """Validation passes if, at every config, new mean >= current + 0.10 and no more cases below ADMM-TV."""
    ok, why = True, []
    for case in cases:
        if case not in cur or case not in new:
            ok = False
            why.append(f"{case}: not run for both priors")
            continue
        c, n = cur[case], new[case]
        good = n["mean"] >= c["mean"] + VAL_MARGIN - 1e-9 and n["below"] <= c["below"]
        ok &= good
        why.append(f"{case}: new {n['mean']:+.2f} ({n['below']} below) vs current {c['mean']:+.2f} ({c['below']} "
                   f"below), {n['mean'] - c['mean']:+.2f} dB: {'pass' if good else 'FAIL'} (needs >= +{VAL_MARGIN:.2f} "
                   "and no more below)")
    return ok, why


def heldout_compare(new: dict, current: dict | None = None) -> dict:
    """Per held-out case the change of the new prior against the current default: against ``current`` (a rerun) if
    given, else against the README's figures; also whether the run's ADMM-TV reproduces the reference's to 0.02."""
    ref = current if current is not None else {(c, s): v for s, by in readme_table().items() for c, v in by.items()}
    rows, mismatch = [], []
    for key, (admm, fast) in sorted(new.items()):
        if key not in ref:
            raise SystemExit(f"{key}: no current-default figure to compare with (README table or --current run)")
        r_admm, r_fast = ref[key]
        if abs(admm - r_admm) > ADMM_TOL + 1e-9:
            mismatch.append(f"{key[0]} {key[1]}: ADMM-TV {admm:.2f} here, {r_admm:.2f} in the reference")
        rows.append({"case": key[0], "scan": key[1], "admm": admm, "new": fast, "current": r_fast,
                     "change": fast - r_fast})
    return {"rows": rows, "admm_mismatch": mismatch}


def adopt_rule(rows: list[dict], cases=("ct8", "ct4"), n_cases: int | None = None) -> tuple[bool, list[str]]:
    """Adopt if the mean change is >= 0 at 8 and at 4 views over the nine cases (``n_cases``: the README table's)
    and no case loses more than 0.2."""
    ok, why = True, []
    n_cases = len(readme_table()) if n_cases is None else n_cases
    for case in cases:
        ch = [r["change"] for r in rows if r["case"] == case]
        if len(ch) != n_cases:
            ok = False
            why.append(f"{case}: {len(ch)} of {n_cases} cases run")
            if not ch:
                continue
        mean, worst = sum(ch) / len(ch), min(ch)
        good = mean >= -1e-9 and worst >= -MAX_LOSS - 1e-9
        ok &= good
        why.append(f"{case}: mean change {mean:+.2f} dB over {len(ch)}, worst {worst:+.2f}: "
                   f"{'pass' if good else 'FAIL'} (needs mean >= 0, none below -{MAX_LOSS})")
    return ok, why


def card(path: Path) -> None:
    """Load the prior as the pipelines do and print its training record; a patch card with inference_shifts other
    than bundled:ct_patch_wide's (1: one tile grid) is set to it, so the comparison is of weights alone, and said
    so. A fine-tune keeps its --init-from prior's count (since the sixty-fourth session), so this matters only for
    a prior trained before, when the trainer wrote 2 into every new card."""
    from medrecon.priors.card import read_model_card, write_model_card
    from pipelines.config import resolve_prior_path
    from pipelines.prior_cards import load_prior_for
    model_card = read_model_card(path)
    want = read_model_card(resolve_prior_path("bundled:ct_patch_wide"))["patch"]["inference_shifts"]
    got = (model_card.get("patch") or {}).get("inference_shifts")
    if got is not None and got != want:
        model_card["patch"]["inference_shifts"] = want
        write_model_card(path, model_card)  # atomic: never half a card
        print(f"NOTE: the card's patch.inference_shifts was {got}; set to {want}, bundled:ct_patch_wide's (the CPU "
              f"runs compare weights, not tile grids; a fine-tune trained before the sixty-fourth session wrote 2)")
    prior = load_prior_for(str(path))
    tr = model_card.get("training", {})
    print(f"loaded {path} as a prior: {type(prior).__name__}, card name {prior.card.get('name')}")
    print(f"steps {tr.get('steps')}, seconds {tr.get('seconds')}, device {tr.get('device')} "
          f"({tr.get('device_name', '')}), final loss {tr.get('final_loss')}, lr {tr.get('lr')} -> "
          f"{(tr.get('options') or {}).get('lr_final')}, init_from {(tr.get('options') or {}).get('init_from')}")
    held = tr.get("heldout")
    if not held:
        print("training.heldout: none (no held-out loss in the card)")
        return
    print(f"training.heldout: loss_before {held.get('loss_before')} (step {held.get('loss_before_step', 0)}), "
          f"loss_after {held.get('loss_after')}, {held.get('n_slices')} slices")
    for step, loss in held.get("log", []):
        print(f"  step {step:>6}: {loss}")


def loss(path: Path) -> None:
    """Summarise heldout_by_pixel.py's table: mean per prior over the scans, scans lower with the second."""
    rows = _md_rows(Path(path).read_text())
    if len(rows) < 2:
        raise SystemExit(f"{path}: no table rows")
    head, body = rows[0], [[float(x) for x in r[2:]] for r in rows[1:]]
    means = [sum(c) / len(c) for c in zip(*body)]
    print("held-out denoising loss, mean over scans (unweighted): "
          + ", ".join(f"{p} {m:.5f}" for p, m in zip(head[2:], means)))
    if len(means) == 2:
        print(f"  change {100 * (means[1] / means[0] - 1):+.1f} %; lower with {head[3]} on "
              f"{sum(b[1] < b[0] for b in body)} of {len(body)} scans (information only: not the rule)")


def validate(cur_runs, new_runs, cases) -> bool:
    cur, new = val_summary(axial(cur_runs, by_run=True)), val_summary(axial(new_runs, by_run=True))
    print("validation: mean axial delta over ADMM-TV (cases below it)")
    for case in cur:
        print(f"  {case}: current {cur[case]['mean']:+.2f} ({cur[case]['below']} of {cur[case]['n']} below), "
              f"new {new.get(case, {}).get('mean', float('nan')):+.2f} ({new.get(case, {}).get('below')} below)")
    ok, why = val_rule(cur, new, cases)
    for w in why:
        print("  " + w)
    print(f"VALIDATION: {'PASS' if ok else 'FAIL'}")
    return ok


def heldout(new_runs, cur_runs, cases) -> bool | None:
    """Print the held-out comparison and the adoption verdict: True adopt, False not, None no verdict (the run's
    ADMM-TV does not reproduce the reference's figures)."""
    res = heldout_compare(axial(new_runs), axial(cur_runs) if cur_runs else None)
    ref = "the --rerun-current run" if cur_runs else "the README's wide column"
    print(f"held out: new prior against the current default ({ref}), axial PSNR")
    print("| case | scan | ADMM-TV | current | new | change |\n|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['case']} | {r['scan']} | {r['admm']:.2f} | {r['current']:.2f} | {r['new']:.2f} | "
              f"{r['change']:+.2f} |")
    if res["admm_mismatch"]:
        print("!" * 100)
        print("ADMM-TV DOES NOT REPRODUCE THE REFERENCE FIGURES TO 0.02 dB: the comparison is INVALID; rerun with "
              "--rerun-current (the current prior run with the same code)")
        for m in res["admm_mismatch"]:
            print("  " + m)
        print("!" * 100)
        print("ADOPT: NO VERDICT (invalid comparison)")
        return None
    ok, why = adopt_rule(res["rows"], cases)
    for w in why:
        print("  " + w)
    print(f"ADOPT: {'YES' if ok else 'NO'}")
    return ok


def main(argv=None) -> int:
    """The command's exit status (0, 1, 2: see the module's docstring); errors raise."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("card", help="load a prior folder, print its training record").add_argument("prior", type=Path)
    sub.add_parser("loss", help="summarise heldout_by_pixel.py's table").add_argument("table", type=Path)
    v = sub.add_parser("validate", help="the validation rule: --current RUN... --new RUN...")
    v.add_argument("--current", nargs="+", type=Path, required=True)
    v.add_argument("--new", nargs="+", type=Path, required=True)
    h = sub.add_parser("heldout", help="the adoption rule: NEW_RUN... [--current CURRENT_RUN...]")
    h.add_argument("runs", nargs="+", type=Path)
    h.add_argument("--current", nargs="+", type=Path, default=None)
    for p in (v, h):
        p.add_argument("--cases", nargs="+", default=["ct8", "ct4"],
                       help="configs the rule asks for (a dry run: fewer)")
    a = ap.parse_args(argv)
    if a.cmd == "card":
        card(a.prior)
    elif a.cmd == "loss":
        loss(a.table)
    elif a.cmd == "validate":
        return 0 if validate(a.current, a.new, a.cases) else 1
    else:
        verdict = heldout(a.runs, a.current, a.cases)
        return 2 if verdict is None else 0 if verdict else 1
    return 0


def run(argv=None) -> int:
    """``main``'s exit status, or ERROR (3) for any error: a SystemExit with a message (the checks above), a usage
    error (argparse's 2, which would read as "no verdict") or any exception, said on stderr."""
    try:
        return main(argv)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return 0
        if isinstance(e.code, str):
            print(f"lease_eval.py: error: {e.code}", file=sys.stderr)
        return ERROR
    except Exception:  # noqa: BLE001 - any error is "no verdict", with its traceback
        traceback.print_exc()
        return ERROR


if __name__ == "__main__":
    sys.exit(run())
