#!/bin/bash
# The quiet validation run behind the committed CPU results (run on a 2-core AMD EPYC
# development VM with nothing else running; the machine, date, stage times and load
# averages are in run_validation.log; earlier machines' runs are in epyc-zen3/ and
# earlier-runs/). Run from the repository root; takes about an hour.
# The JAX full suite is timed in three passes, each after one pass of the full calibration
# (`validate --passes 3` without --hardware), so that the profile and the cases see the
# same states of the machine; the profile it calibrated is saved as cpu-calibrated.yaml.
set -u
R=${R:-benchmarks/results}  # R=DIR: write the outputs there instead
Q=$R/quick-runs
F=.venv/bin/fidoperf
mkdir -p $Q
stamp() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
stamp start
lscpu | grep -E '^(Model name|CPU family|Model|L1d|L2|L3)' | tr -s ' ' | paste -sd';'
$F validate --suite full --calibration full --passes 3 --save-profile $R/cpu-calibrated.yaml \
  -o $R/cpu-validation-full.json > $R/cpu-validation-full.txt 2> $R/cpu-calibrate-full.log
stamp val_done
$F calibrate --framework torch --level full -o $R/cpu-torch-calibrated.yaml > $R/cpu-torch-calibrate-full.log 2>&1
stamp torch_cal_done
$F validate --framework torch --suite full -H $R/cpu-torch-calibrated.yaml \
  -o $R/cpu-torch-validation-full.json > $R/cpu-torch-validation-full.txt 2>&1
stamp torch_val_done
# quick: calibrate and validate three times, each in its own processes
for i in 1 2 3; do
  $F calibrate --level quick -o $Q/cpu-calibrated-quick-$i.yaml > $Q/calibrate-quick-$i.log 2>&1
  $F validate --suite quick -H $Q/cpu-calibrated-quick-$i.yaml -o $Q/cpu-validation-quick-$i.json \
    > $Q/cpu-validation-quick-$i.txt 2>&1
  stamp quick$i
done
stamp end
