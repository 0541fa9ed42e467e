#!/usr/bin/env bash
# Maintainer script (not a user tool): run the GPU checks and benchmarks from the repo root: environment
# report, optional offline wheel install, mmcv build, the fused block's check (dev/check_fused.py), backbone
# tables (ours fused / plain, ours + torch.compile, HF, timm if installed) and full mmseg/mmdet training
# iterations (stock components, ours, HF's backbone in the same process, with a profile). Every step runs
# even if an earlier one failed.
#
#   dev/device_bench.sh                     # every step
#   dev/device_bench.sh env bb-tiny-512     # only some steps (to fit a per-command time limit)
#
# Steps: env wheels mmcv gpu-tests export-fp16 dist-smoke check-fused check-dwconv ab-block-paths graph-memory bb-tiny-512 bb-base-512 bb-base-224 full-seg-base
# full-seg-tiny full-det-base full-det-tiny full-cascade dist-full-seg-base (UperNet-B under DDP on every visible GPU:
# mmengine's wrapper against the graph step's, DIST_IMPLS)
# Environment: OUT (results, default ./bench_out), PYTHON (default python3), WHEELS (wheel folder, default
# shared/wheels; an mmcv-*.tar.gz sdist there is compiled with CUDA ops by the mmcv step), WHEEL_PACKAGES (what to install from it), WHEEL_TARGET (install into this folder and put it
# on PYTHONPATH, e.g. /tmp/site, instead of into the environment), PIP_FLAGS (e.g. --break-system-packages),
# BACKBONE_ARGS / FULL_ARGS (extra arguments for tools/benchmark.py, e.g. "--iters 50"), LOG_DIR (stderr
# of each step, default /tmp/device_bench_logs), BB_IMPLS / FULL_IMPLS (the rows; defaults below),
# MMCV_WHEEL_OUT (copy the mmcv wheel built by the mmcv step there, to carry into a later run), STEP_TIMEOUT
# (seconds: a step that runs longer is stopped and the next one runs, so one slow step cannot use up a device
# call). The device image lacks these pure-Python needs of the mm packages (carry their wheels too): addict
# yapf platformdirs termcolor terminaltables pycocotools shapely prettytable ftfy wcwidth; it has
# opencv-python-headless, timm, scipy, rich. $OUT gets one JSON per benchmark step and summary.md (every table, and the log tail of each
# failed step).
set -u

OUT=${OUT:-./bench_out}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-shared/wheels}
WHEEL_PACKAGES=${WHEEL_PACKAGES:-"mmengine mmcv mmdet mmsegmentation transformers timm"}
PIP_FLAGS=${PIP_FLAGS:-}
WHEEL_TARGET=${WHEEL_TARGET:-}
BACKBONE_ARGS=${BACKBONE_ARGS:-}
FULL_ARGS=${FULL_ARGS:-}
FULL_IMPLS=${FULL_IMPLS:-"stock ours ours-eager ours-fused ours-compile hf"}
BB_IMPLS=${BB_IMPLS:-"ours ours-plain ours-fused ours-compile ours-fused-compile hf"}
DIST_IMPLS=${DIST_IMPLS:-"stock ours-eager ours"}
ALL_STEPS="env wheels mmcv gpu-tests export-fp16 dist-smoke check-fused check-dwconv ab-block-paths graph-memory bb-tiny-512 bb-base-512 bb-base-224 full-seg-base full-seg-tiny full-det-base full-det-tiny full-cascade dist-full-seg-base"
STEPS=${*:-$ALL_STEPS}
LOG_DIR=${LOG_DIR:-${TMPDIR:-/tmp}/device_bench_logs}
mkdir -p "$OUT" "$LOG_DIR"
# pip's destination for the wheels and the mmcv build: the environment, or $WHEEL_TARGET put on PYTHONPATH.
PIP_TARGET=""
if [ -n "$WHEEL_TARGET" ]; then
    PIP_TARGET="--upgrade --target $WHEEL_TARGET"
    export PYTHONPATH="$WHEEL_TARGET${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -n "${DEVICE_BENCH_CHILD:-}" ] || : >"$OUT/summary.md"  # a child run (STEP_TIMEOUT) appends
FAILED=""

note() { echo "=== $* ===" >&2; }
failed() {
    echo "!!! step '$1' failed (exit $2); going on" >&2
    FAILED="$FAILED $1"
    { echo "step '$1' failed (exit $2)"; echo '```'; tail -n 30 "$LOG_DIR/$1.log" 2>/dev/null; echo '```'; echo; } \
        >>"$OUT/summary.md"
}

step_env() {
    nvidia-smi || echo "nvidia-smi not available"
    "$PYTHON" --version
    "$PYTHON" - <<'EOF'
import importlib.metadata as md
import torch
print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(),
      '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')
for name in ('triton', 'transformers', 'timm', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'numpy'):
    try:
        print(f'{name} {md.version(name)}')
    except md.PackageNotFoundError:
        print(f'{name} not installed')
EOF
}

step_wheels() {
    if [ ! -d "$WHEELS" ]; then
        echo "no wheel folder $WHEELS; using what is installed"
        return 0
    fi
    ls -l "$WHEELS"
    # Never let a wheel replace the machine's torch (or its CUDA build).
    "$PYTHON" -c 'import torch; print("torch==" + torch.__version__)' >"$LOG_DIR/constraints.txt" || return 1
    local pkg rc=0
    for pkg in $WHEEL_PACKAGES; do
        if ! ls "$WHEELS" | grep -qi "^${pkg//-/_}-.*\.whl$"; then  # an sdist (mmcv's) is the mmcv step's
            echo "skip $pkg: no wheel in $WHEELS"
            continue
        fi
        "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -c "$LOG_DIR/constraints.txt" \
            $PIP_TARGET $PIP_FLAGS "$pkg" || { echo "could not install $pkg from $WHEELS"; rc=1; }
    done
    return $rc
}

# mmcv 2.1.0 has no wheel for new torch/CUDA: compile the sdist from $WHEELS (about 4 minutes on 16 cores).
step_mmcv() {
    if "$PYTHON" -c 'import mmcv._ext' 2>/dev/null; then
        echo "mmcv with compiled ops is already importable"
        return 0
    fi
    local sdist build
    sdist=$(ls "$WHEELS"/mmcv-*.tar.gz 2>/dev/null | head -n 1)
    [ -n "$sdist" ] || { echo "no mmcv sdist in $WHEELS"; return 1; }
    build=$(mktemp -d)
    tar -xzf "$sdist" -C "$build" || return 1
    (cd "$build"/mmcv-* && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
        MAX_JOBS=${MAX_JOBS:-16} "$PYTHON" setup.py -q bdist_wheel) >"$LOG_DIR/mmcv-build.log" 2>&1 \
        || { tail -n 30 "$LOG_DIR/mmcv-build.log"; return 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps $PIP_TARGET $PIP_FLAGS "$build"/mmcv-*/dist/mmcv-*.whl \
        || return 1
    if [ -n "${MMCV_WHEEL_OUT:-}" ]; then cp "$build"/mmcv-*/dist/mmcv-*.whl "$MMCV_WHEEL_OUT"/; fi
    (cd / && "$PYTHON" -c 'import mmcv, mmcv._ext; print("mmcv", mmcv.__version__, "with compiled ops")')
}

# The tests that mean something on a GPU (CUDA RoIAlign on our features, parity, backbone contracts), after
# the environment check's GPU branch (mmcv's CUDA build, a CUDA RoIAlign against the CPU one).
step_gpu_tests() {
    "$PYTHON" -m convnextv2_dense.doctor --require-mm 2>&1 | tee -a "$LOG_DIR/gpu-tests.log" | tee -a "$OUT/summary.md"
    "$PYTHON" -m pytest -q -p no:cacheprovider -x tests/mm/test_roi_features.py tests/mm/test_graph_step.py tests/mm/test_fast_det.py tests/mm/test_fast_rpn.py tests/mm/test_fast_roi.py tests/mm/test_fast_boxes.py tests/mm/test_fast_heads.py tests/models tests/mm/test_graph_ddp.py 2>&1 \
        | tee -a "$LOG_DIR/gpu-tests.log" | tail -n 15
    return "${PIPESTATUS[0]}"
}

# Per-step time and memory of UperNet-B's first steps, eager and with the CUDA graph step (dev/graph_memory.py).
step_graph_memory() {
    "$PYTHON" dev/graph_memory.py configs/upernet_convnextv2_base_ade20k.py 2>&1 | tee -a "$OUT/summary.md"
    return "${PIPESTATUS[0]}"
}

# tools/export.py of a V2-B backbone (random non-zero weights, 512x512) exported on the GPU: --fp16 checked
# against fp32 eager on the GPU (onnxruntime's CUDA provider where installed, else its CPU provider), then
# fp32 for its 1e-4 gate. The files stay in a temporary folder.
step_export_fp16() {
    local dir
    dir=$(mktemp -d)
    "$PYTHON" -c 'import sys, torch
sys.path.insert(0, "tests")
from suite_support import randomize_parameters
from convnextv2_dense.models import ConvNeXtV2
torch.save(randomize_parameters(ConvNeXtV2(arch="base")).state_dict(), sys.argv[1])' "$dir/base.pth" || return 1
    "$PYTHON" tools/export.py backbone "$dir/base.pth" --out "$dir/base16.onnx" --fp16 --device cuda \
        --input-size 512 512 2>&1 | tee -a "$OUT/summary.md"
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    "$PYTHON" tools/export.py backbone "$dir/base.pth" --out "$dir/base32.onnx" --device cuda \
        --input-size 512 512 2>&1 | tee -a "$OUT/summary.md"
    return "${PIPESTATUS[0]}"
}

# The fused block against the plain one on the GPU (numerics and speed), see dev/check_fused.py.
step_check_fused() {
    "$PYTHON" dev/check_fused.py --json-out "$OUT/check-fused.json" | tee -a "$OUT/summary.md"
    return "${PIPESTATUS[0]}"
}

# The backbone's training step under each setting of the block's eager switches (base 512 x16), see
# dev/ab_block_paths.py.
step_ab_block_paths() {
    "$PYTHON" dev/ab_block_paths.py --json-out "$OUT/ab-block-paths.json" | tee -a "$OUT/summary.md"
    return "${PIPESTATUS[0]}"
}

# The Triton depthwise convolution against cuDNN on the GPU (numerics, speed per stage shape, a compiled
# profile of timm's backbone), see dev/check_dwconv.py.
step_check_dwconv() {
    "$PYTHON" dev/check_dwconv.py --profile timm-compile --json-out "$OUT/check-dwconv.json" | tee -a "$OUT/summary.md"
    return "${PIPESTATUS[0]}"
}

# Both demo configs through tools/dist_train.sh and tools/dist_test.sh on every visible GPU (NCCL), a few
# iterations each on a small synthetic set. Without a GPU: DIST_PROCS (default 2) gloo processes on the CPU.
step_dist_smoke() {
    local procs data work seg det
    procs=${DIST_PROCS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 2)')} || return 1
    data=$(mktemp -d)
    work=${DIST_WORK_DIR:-$(mktemp -d)}
    "$PYTHON" tools/make_demo_data.py --out "$data" --num-train 32 --num-val 8 || return 1
    local loaders="train_dataloader val_dataloader test_dataloader" loader
    seg="" det=""
    for loader in $loaders; do
        seg="$seg $loader.dataset.data_root=$data/ade/ADEChallengeData2016 $loader.num_workers=2"
        det="$det $loader.dataset.data_root=$data/coco/ $loader.num_workers=2"
    done
    det="$det val_evaluator.ann_file=$data/coco/annotations/instances_val2017.json"
    det="$det test_evaluator.ann_file=$data/coco/annotations/instances_val2017.json"
    echo "dist-smoke: $procs processes"
    PYTHON=$PYTHON bash tools/dist_train.sh configs/demo/upernet_convnextv2_atto_demo.py "$procs" \
        --work-dir "$work/seg" --cfg-options $seg train_cfg.max_iters=20 train_cfg.val_interval=20 \
        default_hooks.checkpoint.interval=20 default_hooks.logger.interval=5 || return 1
    PYTHON=$PYTHON bash tools/dist_test.sh configs/demo/upernet_convnextv2_atto_demo.py "$work/seg/iter_20.pth" \
        "$procs" --work-dir "$work/seg-test" --cfg-options $seg || return 1
    PYTHON=$PYTHON bash tools/dist_train.sh configs/demo/mask-rcnn_convnextv2_atto_demo.py "$procs" \
        --work-dir "$work/det" --cfg-options $det train_cfg.max_epochs=1 train_cfg.val_interval=1 \
        default_hooks.checkpoint.interval=1 default_hooks.logger.interval=2 || return 1
    PYTHON=$PYTHON bash tools/dist_test.sh configs/demo/mask-rcnn_convnextv2_atto_demo.py "$work/det/epoch_1.pth" \
        "$procs" --work-dir "$work/det-test" --cfg-options $det || return 1
    echo "dist-smoke: train and test of both demos passed on $procs processes"
}

# run_tool STEP ARGS...: tools/benchmark.py (started through $LAUNCH, e.g. "-m torch.distributed.run ...", when
# set); its table goes to summary.md, its JSON to $OUT/STEP.json, its progress and errors to $LOG_DIR/STEP.log
# (shown at the end of the step; its tail goes to summary.md on failure).
run_tool() {
    local name=$1 rc
    shift
    "$PYTHON" ${LAUNCH:-} tools/benchmark.py "$@" --json-out "$OUT/$name.json" 2>"$LOG_DIR/$name.log" \
        | tee -a "$OUT/summary.md"
    rc=${PIPESTATUS[0]}
    echo >>"$OUT/summary.md"
    grep -v 'pkg_resources' "$LOG_DIR/$name.log" | tail -n 40 >&2
    return "$rc"
}

# bb STEP ARCH INPUT BATCH: one backbone table, train and infer, bf16, channels_last.
bb() {
    local impls=$BB_IMPLS
    if [ -z "${BB_NO_TIMM:-}" ] && "$PYTHON" -c 'import timm' 2>/dev/null; then
        impls="$impls timm $(echo "$impls" | grep -q compile && echo timm-compile)"
    fi
    run_tool "$1" backbone --impl $impls --arch "$2" --input "$3" --batch "$4" --mode train infer --dtype bf16 \
        --channels-last $BACKBONE_ARGS
}

# dist_full STEP CONFIG: the full iteration under DDP, one process per visible GPU (torchrun; rank 0 reports).
dist_full() {
    local procs
    procs=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())') || return 1
    [ "$procs" -ge 1 ] || { echo "no GPU: skipping $1"; return 0; }
    echo "$1: $procs processes"
    LAUNCH="-m torch.distributed.run --nproc_per_node $procs" run_tool "$1" full --config "$2" \
        --backbone-impl $DIST_IMPLS $FULL_ARGS
}

# full STEP CONFIG: one training iteration of a config, our backbone and HF's.
full() {
    if ! "$PYTHON" -c 'import mmcv, mmengine' 2>/dev/null; then
        echo "mmcv/mmengine do not import; skipping $1"
        return 0
    fi
    run_tool "$1" full --config "$2" --backbone-impl $FULL_IMPLS $FULL_ARGS
}

run_step() {
    case "$1" in
        env) step_env ;;
        wheels) step_wheels ;;
        mmcv) step_mmcv ;;
        gpu-tests) step_gpu_tests ;;
        export-fp16) step_export_fp16 ;;
        check-fused) step_check_fused ;;
        check-dwconv) step_check_dwconv ;;
        ab-block-paths) step_ab_block_paths ;;
        graph-memory) step_graph_memory ;;
        dist-smoke) step_dist_smoke ;;
        bb-tiny-512) bb "$1" tiny 512 32 ;;
        bb-base-512) bb "$1" base 512 16 ;;
        bb-base-224) bb "$1" base 224 128 ;;
        full-seg-base) full "$1" configs/upernet_convnextv2_base_ade20k.py ;;
        full-seg-tiny) full "$1" configs/upernet_convnextv2_tiny_ade20k.py ;;
        full-det-base) full "$1" configs/mask-rcnn_convnextv2_base_fpn_3x_coco.py ;;
        full-det-tiny) full "$1" configs/mask-rcnn_convnextv2_tiny_fpn_3x_coco.py ;;
        full-cascade) full "$1" configs/cascade-mask-rcnn_convnextv2_tiny_fpn_1x_coco.py ;;
        dist-full-seg-base) dist_full "$1" configs/upernet_convnextv2_base_ade20k.py ;;
        *) echo "unknown step '$1'; steps: $ALL_STEPS" >&2; false ;;
    esac
}

for step in $STEPS; do
    note "$step"
    if [ -z "${STEP_TIMEOUT:-}" ]; then
        run_step "$step" || failed "$step" "$?"
        continue
    fi
    # The step in a child run of this script, stopped (with everything it started) after STEP_TIMEOUT seconds;
    # the child reports its own failures, this run the timeouts.
    STEP_TIMEOUT='' DEVICE_BENCH_CHILD=1 timeout -k 10 "$STEP_TIMEOUT" bash "$0" "$step"
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        failed "$step" "$rc, timed out after $STEP_TIMEOUT s"
    elif [ "$rc" != 0 ]; then
        FAILED="$FAILED $step"
    fi
done

note "done; results in $OUT${FAILED:+; failed steps:$FAILED}"
[ -z "$FAILED" ]
