"""Re-predict committed JAX validation runs with the current model: no timing, the
measured times as they were recorded, every case predicted again from its run's profile.

    .venv/bin/python benchmarks/repredict.py RUN.json PROFILE.yaml [RUN.json PROFILE.yaml ...]
        [--add-transfer-sizes]

When the model changes, this says what it would have predicted for measurements already
made, and so separates a model change from the machine's drift between runs.
``--add-transfer-sizes`` gives the rows curves of a profile calibrated before
`fidoperf calibrate` recorded them the transfer sizes it records now (the calibration's
kernels did not change, only the record): the median weight of ROWS_SHAPES and the
median key cache of ATTENTION_SHAPES. Prints one summary per run, as `fidoperf
validate` does, and one JSON line per run with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pandas as pd
import yaml

from fidoperf.measure.bench import Case, predict_case
from fidoperf.measure.calibrate import attention_transfer_bytes, rows_transfer_bytes
from fidoperf.measure.validate import summary, summary_text
from fidoperf.specs import hardware_from_dict

FIELDS = {f.name for f in dataclasses.fields(Case)}


def repredict(run_path: str, profile_path: str, add_transfer_sizes: bool) -> dict:
    with open(profile_path) as fh:
        profile = yaml.safe_load(fh)
    if add_transfer_sizes:
        eff = profile["efficiency"]
        eff["matmul_compute"].setdefault("transfer_bytes", rows_transfer_bytes())
        eff["attention_compute"].setdefault("transfer_bytes", attention_transfer_bytes())
    hw = hardware_from_dict(profile, profile_path)
    with open(run_path) as fh:
        cases = json.load(fh)["cases"]
    rows = [{**rec, **predict_case(Case(**{k: rec[k] for k in FIELDS if k in rec}), hw)} for rec in cases]
    return summary(pd.DataFrame(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="validation JSON and its profile YAML, in pairs")
    ap.add_argument("--add-transfer-sizes", action="store_true",
                    help="give the profile's rows curves the transfer sizes calibrate records now")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give validation runs and profiles in pairs: RUN.json PROFILE.yaml")
    for run_path, profile_path in zip(args.pairs[::2], args.pairs[1::2]):
        s = repredict(run_path, profile_path, args.add_transfer_sizes)
        print(f"{run_path} re-predicted from {profile_path}"
              + (" (transfer sizes added)" if args.add_transfer_sizes else ""))
        print(summary_text(s))
        print(json.dumps({"run": run_path, "profile": profile_path, "median_abs_rel_error": s["median_abs_rel_error"],
                          "p90_abs_rel_error": s["p90_abs_rel_error"], "median_rel_error": s["median_rel_error"],
                          "by_kind": {k: v["median_abs_rel_error"] for k, v in s["by_kind"].items()}}))
        print()


if __name__ == "__main__":
    main()
