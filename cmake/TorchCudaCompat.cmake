# Workarounds for configuring against PyTorch's CUDA LibTorch (the pip wheel's CMake package) with
# recent CUDA toolkits. Included before find_package(Torch); a no-op where no CUDA toolkit is
# found (Debian's CPU LibTorch, CI). The cuDNN paths of the wheel are passed by
# scripts/gpu-check.sh (CUDNN_INCLUDE_PATH, CUDNN_LIBRARY_PATH), since only it knows where the
# wheel is.

find_package(CUDAToolkit QUIET)
if(CUDAToolkit_FOUND AND NOT TARGET CUDA::nvToolsExt)
  # CUDA 12.9 and 13 no longer ship libnvToolsExt (NVTX 3 is header-only), but the CMake config
  # of LibTorch <= 2.7 still links torch::nvtoolsext to CUDA::nvToolsExt (pytorch#152756), and
  # generation fails on the missing target. An interface target standing for it, forwarding to
  # NVTX 3's headers, lets it configure; LibTorch >= 2.8 uses nvtx3 itself and never asks.
  add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
  if(TARGET CUDA::nvtx3)
    target_link_libraries(CUDA::nvToolsExt INTERFACE CUDA::nvtx3)
  endif()
  message(STATUS "slim: CUDA ${CUDAToolkit_VERSION} without nvToolsExt: CUDA::nvToolsExt stands for NVTX 3")
endif()
