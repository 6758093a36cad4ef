#!/usr/bin/env bash
# Prepare, on a machine with internet, what benchmarks/bench_gpu_extract.py needs on a GPU
# machine that has none (its Python 3.12 image lacks these packages; see the device notes):
#
#   .whl/       py3.12 manylinux x86-64 wheels that the image lacks: OpenSlide (our reader and
#               TRIDENT's), imagecodecs (tifffile's JPEG encoder, which writes the generated
#               slide), geopandas + shapely (imported by TRIDENT's package), lifelines and its
#               autograd pair (our metrics), nystrom-attention (TransMIL, in our model registry)
#   .trident/   TRIDENT's source (mahmoodlab/TRIDENT, CC BY-NC-ND 4.0: never committed, it only
#               travels in this ignored folder)
#   shared/slides/  two of the real slides of ../shared/slides (../shared does not travel)
#
# All three are ignored through .git/info/exclude (this checkout only). A device call then
# names `.whl` and `.trident` in `carry`; shared/ travels by itself.
#
#   bash benchmarks/gpu_prepare.sh
#
# TRIDENT comes from a git mirror: TRIDENT_GIT_DIR (default: the session mirror
# /work/.mirror/mahmoodlab+TRIDENT/repo).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    openslide-python==1.4.7
    openslide-bin==4.0.1.2
    imagecodecs==2026.3.6
    geopandas==1.2.0
    shapely==2.2.0
    lifelines==0.30.3
    autograd==1.9.1
    nystrom-attention==0.0.14
    pytz==2026.6
)
# published as source only: built into a wheel here (pure Python)
SOURCE_ONLY=(autograd-gamma==0.5.0)
SLIDES=(cmu-1-small-region.svs tcga-cr-7395-01a-01-ts1.svs)
TRIDENT_GIT_DIR=${TRIDENT_GIT_DIR:-/work/.mirror/mahmoodlab+TRIDENT/repo}
LIMIT_MIB=64

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for entry in /.whl/ /.trident/ /shared/; do
    grep -qxF "$entry" "$exclude" || echo "$entry" >>"$exclude"
done

echo "== wheels -> .whl/"
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    stem=${name//-/_}
    # one version of each project: two stop the install on the GPU machine
    for old in .whl/"$stem"-*.whl; do
        [[ -e $old && $old != .whl/"$stem"-"${spec##*==}"-* ]] && rm -v "$old"
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl "$spec"
done

for spec in "${SOURCE_ONLY[@]}"; do
    python3 -m pip wheel -q --no-deps -w .whl "$spec"
done

echo "== TRIDENT -> .trident/"
if ! git --git-dir="$TRIDENT_GIT_DIR" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    echo "No TRIDENT git mirror at $TRIDENT_GIT_DIR. Get one first: in a session, the fetch" >&2
    echo "tool with github:mahmoodlab/TRIDENT; elsewhere, git clone --bare" >&2
    echo "https://github.com/mahmoodlab/TRIDENT /tmp/TRIDENT.git and rerun with" >&2
    echo "TRIDENT_GIT_DIR=/tmp/TRIDENT.git." >&2
    exit 1
fi
rm -rf .trident
mkdir -p .trident
# the package and its licence only (no notebooks, docs or pictures)
git --git-dir="$TRIDENT_GIT_DIR" archive HEAD trident LICENSE | tar -x -C .trident
git --git-dir="$TRIDENT_GIT_DIR" rev-parse HEAD >.trident/COMMIT
echo "TRIDENT $(cat .trident/COMMIT)"

echo "== real slides -> shared/slides/"
if [[ -d ../shared/slides ]]; then
    mkdir -p shared/slides
    for slide in "${SLIDES[@]}"; do
        cp -u "../shared/slides/$slide" shared/slides/
    done
    cp -u ../shared/slides/README.md shared/slides/
else
    echo "../shared/slides is absent: the benchmark will run on the generated slide only" >&2
fi

echo "== sizes (MiB)"
mib() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}'; }
for wheel in .whl/*.whl; do
    printf '  %6s  %s\n' "$(mib "$wheel")" "$wheel"
done
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 |
    awk '{printf "%.1f", $1 / 1048576}')
printf '  %6s  .whl/\n  %6s  .trident/\n  %6s  shared/\n  %6s  tracked + untracked files\n' \
    "$(mib .whl)" "$(mib .trident)" "$(mib shared)" "$tree"
total=$(awk -v a="$(mib .whl)" -v b="$(mib .trident)" -v c="$(mib shared)" -v d="$tree" \
    'BEGIN {printf "%.1f", a + b + c + d}')
echo "  ${total} MiB travel with carry [.whl, .trident] (limit ${LIMIT_MIB} MiB)"
if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t > l)}'; then
    echo "Over the limit: remove what is not needed from .whl/ or shared/" >&2
    exit 1
fi
