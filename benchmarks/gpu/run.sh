#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md#gpu, run once on a lent GPU machine: python3 there is 3.12 with torch;
# the rest travels as wheels in .gpu/whl, SimpleITK as a stand-in (nnU-Net's 2D path only imports it). .gpu/study:
# a finished oasis-manual study's exported set, label maps and held-out heads (no model: trained here). prepare.sh
# beside this file builds .gpu/.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/stub:$PWD
BIN="$(dirname "$(command -v python3)")"
cp /tmp/site/bin/nnUNetv2_plan_and_preprocess /tmp/site/bin/nnUNetv2_train "$BIN"/ && sed -i "1s|.*|#!$(command -v python3)|" "$BIN"/nnUNetv2_*
nvidia-smi -L; nproc; python3 -c "import numpy, torch; print('numpy', numpy.__version__, 'torch', torch.__version__)"
python3 -c "import pipeline.apps.bench_device, pipeline.stages.evaluate, pipeline.nnunet.trainers.nnUNetTrainerPipeline; print('imports ok')" || exit 1
cd .gpu/study
echo "== train (profile auto) $(( $(date +%s) - T0 )) s"
( nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 > $OUT/train_smi.csv & echo $! > /tmp/smi.pid )
timeout 300 python3 -m pipeline run train --segmenter hmrf --stripper deepbet > $OUT/train.log 2>&1; echo "train rc=$?"
kill "$(cat /tmp/smi.pid)"
tail -5 $OUT/train.log; cp models/hmrf-deepbet/training.json $OUT/ 2>/dev/null; cp metrics/hmrf-deepbet-training.csv $OUT/ 2>/dev/null
echo "== evaluate $(( $(date +%s) - T0 )) s"
timeout 90 python3 -m pipeline run evaluate --segmenter hmrf --stripper deepbet > $OUT/evaluate.log 2>&1; echo "evaluate rc=$?"
tail -3 $OUT/evaluate.log; cp metrics/hmrf-deepbet.json $OUT/evaluate_metrics.json 2>/dev/null; cat metrics/hmrf-deepbet.json 2>/dev/null
cd ../..
echo "== bench device $(( $(date +%s) - T0 )) s"
timeout 130 python3 -m pipeline bench device --study .gpu/study --seconds 20 > $OUT/device.json 2> $OUT/device.log; echo "device rc=$?"
cat $OUT/device.json | head -c 2500; tail -3 $OUT/device.log
echo "== one tile a call $(( $(date +%s) - T0 )) s"
timeout 45 python3 .gpu/one_tile.py .gpu/study > $OUT/one_tile.json 2>> $OUT/device.log; echo "one_tile rc=$?"; cat $OUT/one_tile.json
echo "== done $(( $(date +%s) - T0 )) s"
