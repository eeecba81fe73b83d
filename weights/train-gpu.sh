#!/usr/bin/env bash
# The GPU runs of docs/training.md, side by side on one GPU, each the paper's schedule
# (50 epochs x 250 steps of 16 pairs, 156x156 crops, Adam 1e-4 x 0.8 every 2 epochs):
#   paper: the paper's network and loss (Dice + 1 x (1 - Qg));
#   ours:  the decision score pooled over a Gaussian of 4 px, Dice + 3 x (1 - Qg);
#   dice:  the paper's network, Dice only (the ablation).
# Usage: weights/train-gpu.sh DATA OUT [SECONDS]
# A run still going after SECONDS (0: no limit) is stopped and its last finished epoch
# exported. Each run folder is packed as OUT/NAME.tar. A run whose folder already holds
# a checkpoint.pt resumes from it. RUNS="ours" runs a subset. Overrides for a smoke
# test: EPOCHS, STEPS, CROP, DEVICE, WORKERS.
# How the kept 13-epoch run was finished to 50 on one GPU (docs/training.md; about 18 s
# an epoch alone, so 37 epochs need about 660 s: a second call resumed at epoch 39):
#   mkdir -p OUT/ours && cp weights/experiments/gpu-ours-e13-checkpoint.pt OUT/ours/checkpoint.pt
#   RUNS=ours WORKERS=14 weights/train-gpu.sh DATA OUT 480
set -uo pipefail
data=$1 out=$2 limit=${3:-0}
python=${PYTHON:-python3}
schedule=(--epochs "${EPOCHS:-50}" --steps-per-epoch "${STEPS:-250}" --batch-size 16 --crop "${CROP:-156}"
          --lr 1e-4 --lr-decay 0.8 --decay-every 2 --seed 0 --device "${DEVICE:-cuda}" --workers "${WORKERS:-4}")
declare -A loss=([paper]="--qg-weight 1" [ours]="--qg-weight 3 --score-sigma 4" [dice]="--qg-weight 0")
read -r -a names <<<"${RUNS:-paper ours dice}"
mkdir -p "$out"
for name in "${names[@]}"; do
    mkdir -p "$out/$name"
    # Weights exported when an earlier call hit its limit are stale once the run goes on;
    # without them, a run stopped again is exported again below.
    rm -f "$out/$name/gacn.pt" "$out/$name/gacn.pt.sha256"
    # shellcheck disable=SC2086  # the loss options split into words on purpose
    timeout -s INT -k 30 "$limit" "$python" -m focusfuse train --data "$data" --out "$out/$name" \
        "${schedule[@]}" ${loss[$name]} >>"$out/$name/console.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
    run=$out/$name
    if [[ ! -f $run/gacn.pt && -f $run/checkpoint.pt ]]; then
        done_epochs=$("$python" -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['epoch'])" "$run/checkpoint.pt")
        echo "$name: stopped at the time limit; exporting epoch $done_epochs" | tee -a "$run/console.log"
        # shellcheck disable=SC2086
        "$python" -m focusfuse train --data "$data" --out "$run" "${schedule[@]}" ${loss[$name]} \
            --epochs "$done_epochs" --workers 0 >>"$run/console.log" 2>&1
    fi
    rm -f "$run/checkpoint.pt.partial"
    tar -C "$out" -cf "$out/$name.tar" "$name"
    echo "== $name"; tail -n 4 "$run/console.log"
done
