#!/bin/sh
# slimd links no LibTorch (docs/service.md, "Tensor work runs in subprocesses"): its dynamic
# dependencies show gRPC (so ldd read the right binary) and no libtorch or libc10.
# Usage: slimd_links_no_torch.sh PATH_TO_SLIMD
set -eu
libs=$(ldd "$1")
if ! printf '%s\n' "$libs" | grep -q 'libgrpc++'; then
  echo "ldd shows no libgrpc++ for $1; is it slimd?" >&2
  exit 1
fi
if printf '%s\n' "$libs" | grep -Ei 'libtorch|libc10'; then
  echo "$1 loads LibTorch (above)" >&2
  exit 1
fi
echo "$1: $(printf '%s\n' "$libs" | wc -l) shared libraries, none of them LibTorch"
