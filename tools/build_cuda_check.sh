#!/usr/bin/env bash
# CUDA build check without a GPU: compile the extension's CUDA part with nvcc from the package
# index, import it on this (CPU-only) machine, and check that its CUDA kernels are registered.
#
#   tools/build_cuda_check.sh            # sm_80 and sm_90
#   tools/build_cuda_check.sh "9.0"      # any TORCH_CUDA_ARCH_LIST
#
# Everything happens in a temporary folder (removed on exit): the sources are copied there, so the
# in-place CPU build of this checkout is never touched. Needs a CUDA build of torch (the default
# Linux wheel) and pip access to the index for nvidia-cuda-nvcc / -nvvm / -crt / -cccl at torch's
# CUDA version (about 100 MB of wheels for CUDA 13.0).
set -euo pipefail
arch_list=${1:-"8.0;9.0"}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cuda=$("$python" -c "import torch; print(torch.version.cuda or '')")
if [ -z "$cuda" ]; then
  echo "build_cuda_check: torch $("$python" -c 'import torch; print(torch.__version__)') is a CPU-only build;" \
       "install the CUDA wheel (e.g. torch==2.14.1 from PyPI) to check the CUDA part" >&2
  exit 1
fi
echo "build_cuda_check: torch $("$python" -c 'import torch; print(torch.__version__)'), CUDA $cuda, arch $arch_list"

# nvcc and its companions at torch's CUDA major.minor. torch's own nvidia-* dependencies already
# installed the runtime headers and libraries; these wheels add the compiler, NVVM, crt headers and CCCL.
t0=$SECONDS
"$python" -m pip download -q --no-deps -d "$work/wheels" \
  "nvidia-cuda-nvcc==$cuda.*" "nvidia-nvvm==$cuda.*" "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-cccl==$cuda.*"
for wheel in "$work"/wheels/*.whl; do "$python" -m zipfile -e "$wheel" "$work/unpacked"; done
echo "build_cuda_check: fetched $(du -sh "$work/wheels" | cut -f1) of nvcc wheels in $((SECONDS - t0)) s"

# Assemble CUDA_HOME: the folder holding bin/nvcc, plus links to the runtime headers/libraries
# that come with torch (never overwriting what the nvcc wheels ship).
cuda_home=$(dirname "$(dirname "$(find "$work/unpacked" -path '*/bin/nvcc' -type f | head -n 1)")")
runtime=$("$python" - <<'EOF'
import glob, os, nvidia  # namespace package that torch's nvidia-* wheels install into
for root in nvidia.__path__:
    for header in glob.glob(os.path.join(root, "*", "include", "cuda_runtime.h")):
        print(os.path.dirname(os.path.dirname(header)))
EOF
)
if [ -z "$runtime" ]; then echo "build_cuda_check: no cuda_runtime.h in torch's nvidia-* packages" >&2; exit 1; fi
for sub in include lib; do
  mkdir -p "$cuda_home/$sub"
  for entry in "$runtime/$sub"/*; do
    [ -e "$cuda_home/$sub/$(basename "$entry")" ] || ln -s "$entry" "$cuda_home/$sub/"
  done
done
[ -e "$cuda_home/lib64" ] || ln -s lib "$cuda_home/lib64"
# The wheels ship only the versioned runtime (libcudart.so.13); the linker's -lcudart needs the plain name.
cudart=$(find -L "$cuda_home/lib" -maxdepth 1 -name 'libcudart.so.*' | head -n 1)
[ -e "$cuda_home/lib/libcudart.so" ] || ln -s "$cudart" "$cuda_home/lib/libcudart.so"
chmod +x "$cuda_home"/bin/* "$cuda_home"/nvvm/bin/* 2>/dev/null || true

# Build a copy of the sources in the temporary folder.
mkdir -p "$work/src"
cp -r "$repo/setup.py" "$repo/pyproject.toml" "$repo/README.md" "$repo/csrc" "$repo/sigma_kernels" "$work/src/"
find "$work/src" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
t0=$SECONDS
(cd "$work/src" && CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH" TORCH_CUDA_ARCH_LIST="$arch_list" \
   MAX_JOBS=${MAX_JOBS:-2} "$python" setup.py -q build_ext --inplace > "$work/build.log" 2>&1) || {
  tail -n 40 "$work/build.log" >&2; echo "build_cuda_check: the CUDA build failed" >&2; exit 1; }
grep -q "building the CPU and CUDA extension" "$work/build.log" || {
  cat "$work/build.log" >&2; echo "build_cuda_check: setup.py did not build the CUDA part" >&2; exit 1; }
echo "build_cuda_check: built the CPU + CUDA extension in $((SECONDS - t0)) s"

# Import the built copy (not this checkout's) and check what a CPU-only machine can check.
(cd "$work/src" && PYTHONPATH="$work/src" "$python" - "$arch_list" <<'EOF'
import os
import struct
import sys

import torch

import sigma_kernels
from sigma_kernels import _C


def fatbin_elf_archs(path):
    """The sm_XY of every ELF (machine code) entry in the library's .nv_fatbin section (no cuobjdump in the wheels)."""
    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx][4]
    fatbin = next(s for s in sections if data[names + s[0]:].startswith(b".nv_fatbin\0"))
    start, end = fatbin[4], fatbin[4] + fatbin[5]
    archs, pos = set(), start
    while pos + 16 <= end:
        magic, _, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:  # blobs are padded; step to the next 8-byte boundary
            pos += 8
            continue
        entry, stop = pos + header, pos + header + size
        while entry < stop:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            if kind == 2:  # 1 = PTX, 2 = ELF
                archs.add(struct.unpack_from("<I", data, entry + 28)[0])
            entry += entry_header + payload
        pos = stop
    return archs


# the copy built here, not an installed sigma_kernels
assert sigma_kernels.__path__[0].startswith(os.getcwd()) and _C.__file__.startswith(sigma_kernels.__path__[0]), _C.__file__
assert getattr(_C, "with_cuda", False), "the built extension says it has no CUDA part"
info = sigma_kernels.backend_info()["cuda"]
if torch.cuda.is_available():
    assert info["available"], info
else:
    assert info["reason"] == "no CUDA device is visible to torch", info["reason"]
for op in ("sinkhorn_col_lse", "sinkhorn_row_step"):
    name = f"sigma_kernels_ext::{op}"
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), f"{name} has no {key} kernel"
# The fatbinary must hold machine code for every architecture asked for.
wanted = {int(a.split("+")[0].strip().replace(".", "")) for a in sys.argv[1].replace(",", ";").split(";") if a.strip()}
found = fatbin_elf_archs(_C.__file__)
assert wanted <= found, f"asked for sm_{sorted(wanted)}, the fatbinary holds sm_{sorted(found)}"
print(f"build_cuda_check: fatbinary holds ELF code for sm_{sorted(found)}")
print(f"build_cuda_check: OK: cuda backend says {info['reason']!r}; "
      "sinkhorn_col_lse and sinkhorn_row_step have CUDA kernels")
EOF
)
