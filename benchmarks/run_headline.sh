#!/usr/bin/env bash
# The headline throughput table: zoo models vs timm peers (and the official VMamba) on one GPU, one process.
#
#   benchmarks/run_headline.sh OUT_DIR [OFFICIAL_VMAMBA_CHECKOUT [EXTENSION_DIR ...]]
#
# Batch 128, 224x224, no torch.compile, NCHW: bf16 inference, fp32 inference with TF32, bf16 training (forward,
# cross-entropy, backward, SGD step; drop path off for every model). Writes OUT_DIR/headline.{json,csv,png,md}.
# Needs torch, triton and timm; not fvcore (GFLOPs come from model_cards/index.json, or torch's flop counter).
# OFFICIAL_VMAMBA_CHECKOUT is the root of a MzeroMiko/VMamba checkout; EXTENSION_DIRs hold its compiled scan
# extensions (selective_scan_cuda_oflex*.so, and selective_scan_cuda*.so for vanilla VMamba). Environment knobs:
# TIME_BUDGET_S (default 360: no new measurement starts after it), WARM/ITERS (inference, default 5/20),
# TRAIN_WARM/TRAIN_ITERS (default 3/10), BATCH (128), PROFILE_STEPS (default 0: profiled steps per row, whose top
# kernels land in the JSON), EXTRA_ARGS (passed to tools/throughput.py). Short warm-ups under-measure the first zoo
# model of the process: on 2026-11-30 VMamba-T took 5,572 img/s (bf16 inference) at WARM=3 ITERS=10 and
# 7,821-8,124 at 10 + 40 steps (benchmarks/results/README.md); keep WARM at 10 where the time budget allows.
# MIN_WARM_S (default 1): every measurement also warms up for at least this many seconds.
set -euo pipefail

OUT_DIR=${1:?usage: benchmarks/run_headline.sh OUT_DIR [OFFICIAL_VMAMBA_CHECKOUT [EXTENSION_DIR ...]]}
OFFICIAL=${2:-}
shift $(( $# > 2 ? 2 : $# ))
EXT_DIRS=("$@")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"

# vmamba_zoo is installed from the top-level kernels/ folder as vmamba_zoo.kernels (see setup.py). Where it is not
# installed, lay out the same package under /tmp instead of running pip.
if ! (cd /tmp && "$PYTHON" -c "import vmamba_zoo.kernels" 2>/dev/null); then
    SITE=$(mktemp -d /tmp/vmamba_zoo_site.XXXX)
    cp -r "$REPO/vmamba_zoo" "$SITE/vmamba_zoo"
    rm -rf "$SITE/vmamba_zoo/kernels"
    cp -r "$REPO/kernels" "$SITE/vmamba_zoo/kernels"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd /tmp && "$PYTHON" -c "import vmamba_zoo.kernels, torch, triton, timm; print('vmamba_zoo', vmamba_zoo.__file__, \
'torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, \
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)")

# VMamba T/S/B[s1l*] and vanilla-T, then the tiny model of every other registered zoo family.
MODELS=$(cd /tmp && "$PYTHON" - <<'PY'
import vmamba_zoo
from vmamba_zoo.utils.registry import count_params_by_name, list_zoo_models
import timm
headline = ['vmamba_tiny_s1l8', 'vmamba_small_s1l20', 'vmamba_base_s1l20', 'vanilla_vmamba_tiny']
names = [n for n in headline if timm.is_model(n)]
families = {}
for name in list_zoo_models():
    families.setdefault(timm.models.model_entrypoint(name).__module__, []).append(name)
for module, members in sorted(families.items()):
    if any(n in names for n in members):
        continue
    tiny = [n for n in members if 'tiny' in n]
    names.append(sorted(tiny)[0] if tiny else min(members, key=count_params_by_name(members).get))
print(' '.join(names))
PY
)
if [ -z "$MODELS" ]; then echo "no zoo model is registered" >&2; exit 1; fi
echo "zoo models: $MODELS"

OFFICIAL_ARGS=()
if [ -n "$OFFICIAL" ]; then
    OFFICIAL_ARGS=(--official-vmamba "$OFFICIAL" --official-models vmamba_tiny_s1l8 vmamba_small_s1l20
                   vmamba_base_s1l20 vanilla_vmamba_tiny)
    if [ ${#EXT_DIRS[@]} -gt 0 ]; then OFFICIAL_ARGS+=(--official-ext-dir "${EXT_DIRS[@]}"); fi
fi

# Measurement order (model-major, so a run cut short by the time budget still has complete rows): the target model,
# its official twin and the three timm peers first (the peers take seconds; on 2026-11-29 a 230 s budget cut Swin and
# DeiT when they came last), then each larger zoo model next to its official twin, then the other families.
FIRST=(vmamba_tiny_s1l8 official:vmamba_tiny_s1l8 convnext_tiny swin_tiny_patch4_window7_224 deit_small_patch16_224
       vmamba_small_s1l20 official:vmamba_small_s1l20 vmamba_base_s1l20 official:vmamba_base_s1l20
       vanilla_vmamba_tiny official:vanilla_vmamba_tiny)

# shellcheck disable=SC2086
"$PYTHON" -u "$REPO/tools/throughput.py" \
    --model $MODELS \
    --compare convnext_tiny swin_tiny_patch4_window7_224 deit_small_patch16_224 \
    "${OFFICIAL_ARGS[@]}" \
    --runs inference:bfloat16 inference:float32 train:bfloat16 --tf32 \
    --batch-size "${BATCH:-128}" --img-size 224 224 \
    --num-warm-iter "${WARM:-5}" --num-bench-iter "${ITERS:-20}" \
    --train-num-warm-iter "${TRAIN_WARM:-3}" --train-num-bench-iter "${TRAIN_ITERS:-10}" \
    --min-warm-s "${MIN_WARM_S:-1}" \
    --drop-path 0 --opt sgd --time-budget-s "${TIME_BUDGET_S:-360}" --progress lines \
    --profile-steps "${PROFILE_STEPS:-0}" \
    --order model --first "${FIRST[@]}" \
    --output-dir "$OUT_DIR" --tag headline ${EXTRA_ARGS:-}

"$PYTHON" "$REPO/benchmarks/summarize_headline.py" "$OUT_DIR/headline.json" | tee "$OUT_DIR/headline.md"
