#!/usr/bin/env bash
# Install defectkit with its [openmmlab] and [test] extras into the active Python environment.
#
# The line chosen is OpenMMLab's own: mmcv 2.1.0, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2
# (mmdet 3.3.0 and mmseg 1.2.2 accept mmcv >= 2.0.0rc4, < 2.2.0). The onedl-* fork fails to build
# against torch 2.14 in the same way and has fewer users; see docs/openmmlab.md.
#
# PyPI has only mmcv's source, and that source does not build against torch 2.14 as published:
#   - its setup.py imports pkg_resources, which setuptools >= 81 no longer ships;
#   - it compiles with -std=c++17, and torch 2.14's ATen headers require C++20;
#   - it requires the "mmengine" distribution, whose opencv-python requirement would overwrite the
#     opencv-python-headless that defectkit installs; defectkit's mmengine-lite (the same mmengine
#     package, same version, without that requirement) is declared instead.
# So this script downloads the pinned source (checked against its sha256), patches those lines,
# builds a wheel (about 5 minutes on 2 cores, CPU ops only) and keeps it in pip's cache directory.
# Later runs find the wheel there and install in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

MMCV_VERSION=2.1.0
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
MMCV_URL="https://files.pythonhosted.org/packages/a7/19/f97f0fd4d432113a232e75f965335be6b7bb6557ae9faf8051e9a012cadd/mmcv-${MMCV_VERSION}.tar.gz"

python -m pip --version >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q -e ".[test]"
torch_version=$(python -c "import torch; print(torch.__version__.split('+')[0])")
python_tag=$(python -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
# The wheel is built against one torch (its C++ ABI), so the cache is keyed by torch and Python.
wheel_dir="$(python -m pip cache dir)/defectkit-openmmlab/mmcv-${MMCV_VERSION}-torch${torch_version}-${python_tag}"
mkdir -p "$wheel_dir"

if ! ls "$wheel_dir"/mmcv-"${MMCV_VERSION}"-*.whl >/dev/null 2>&1; then
    echo "openmmlab: building mmcv ${MMCV_VERSION} from source for torch ${torch_version} (about 5 minutes on 2 cores)"
    build_dir=$(mktemp -d)
    trap 'rm -rf "$build_dir"' EXIT
    python - "$MMCV_URL" "$MMCV_SHA256" "$build_dir/mmcv.tar.gz" <<'EOF'
import hashlib
import sys
import urllib.request

url, expected_sha256, target = sys.argv[1:]
with urllib.request.urlopen(url, timeout=180) as response:
    payload = response.read()
actual = hashlib.sha256(payload).hexdigest()
if actual != expected_sha256:
    sys.exit(f"openmmlab: {url} has sha256 {actual}, expected {expected_sha256}; not building it")
with open(target, "wb") as handle:
    handle.write(payload)
EOF
    tar -xzf "$build_dir/mmcv.tar.gz" -C "$build_dir"
    source_dir="$build_dir/mmcv-${MMCV_VERSION}"
    # pkg_resources -> importlib.metadata and packaging; C++17 -> C++20 (no debug info); mmengine -> mmengine-lite.
    python - "$source_dir/setup.py" "$source_dir/requirements/runtime.txt" <<'EOF'
import sys

path, requirements = sys.argv[1:]
lines = open(requirements, encoding="utf-8").read().splitlines()
if "mmengine>=0.3.0" not in lines:
    sys.exit(f"openmmlab: {requirements} is not the requirements file this script knows how to patch")
open(requirements, "w", encoding="utf-8").write("\n".join("mmengine-lite>=0.3.0" if line == "mmengine>=0.3.0" else line for line in lines) + "\n")
text = open(path, encoding="utf-8").read()
old_import = "from pkg_resources import DistributionNotFound, get_distribution, parse_version\n"
new_import = (
    "from importlib.metadata import PackageNotFoundError as DistributionNotFound\n"
    "from importlib.metadata import distribution as get_distribution\n"
    "from packaging.version import parse as parse_version\n"
)
if old_import not in text or "'-std=c++17'" not in text:
    sys.exit(f"openmmlab: {path} is not the setup.py this script knows how to patch")
# -g0 after Python's own -g: debug info for torch's headers costs compile time and makes the wheel
# several times larger, for no use here.
text = text.replace(old_import, new_import).replace("'-std=c++17'", "'-std=c++20', '-g0'")
open(path, "w", encoding="utf-8").write(text)
EOF
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        python -m pip wheel -q --no-deps --no-build-isolation -w "$wheel_dir" "$source_dir"
fi

# The extra also declares what mmsegmentation imports without declaring it (ftfy, regex).
python -m pip install -q --find-links "$wheel_dir" -e ".[openmmlab,test]"
python -c "import mmcv.ops, mmdet, mmseg; print(f'openmmlab: mmcv {mmcv.__version__} (ops built), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}')"
