# LibTorch >= 2.4, CPU or CUDA build, found through Torch_DIR / CMAKE_PREFIX_PATH; when neither is
# given, the torch wheel in the project's .venv (scripts/setup.sh installs it) is used.
if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  set(_venv_python "${CMAKE_SOURCE_DIR}/.venv/bin/python")
  if(EXISTS "${_venv_python}")
    execute_process(COMMAND "${_venv_python}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
    if(_torch_rc EQUAL 0 AND _torch_prefix)
      list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
    endif()
  endif()
endif()

# A CUDA build's config probes the toolkit by compiling test programs; CMake 3.25 knows no C++20 dialect
# flag for nvcc, and we need neither cuDNN nor that dialect there.
set(CAFFE2_USE_CUDNN OFF CACHE BOOL "" FORCE)
set(CMAKE_CUDA_STANDARD 17)
find_package(Torch REQUIRED)
if(Torch_VERSION VERSION_LESS 2.4)
  message(FATAL_ERROR "LibTorch ${Torch_VERSION} found at ${Torch_DIR}; Linearize needs >= 2.4 "
                      "(set Torch_DIR or CMAKE_PREFIX_PATH, or run scripts/setup.sh for the venv's torch)")
endif()
if(TORCH_CUDA_LIBRARIES)
  set(LINEARIZE_TORCH_CUDA ON)
else()
  set(LINEARIZE_TORCH_CUDA OFF)
endif()
message(STATUS "LibTorch ${Torch_VERSION} (${Torch_DIR}), CUDA build: ${LINEARIZE_TORCH_CUDA}")

# The wheel's include root also ships its own fmt (12.x) and protobuf headers, which would shadow
# Debian's fmt 9 (that spdlog was built against) and protobuf 3.21 (that ONNX was built against). Every
# imported target gets, instead of that root, a directory of links to everything in it but those two.
function(_linearize_filter_torch_includes)
  set(_filtered "${CMAKE_BINARY_DIR}/torch-include")
  get_directory_property(_targets IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs)
    foreach(_dir IN LISTS _dirs)
      if(EXISTS "${_dir}/fmt" OR EXISTS "${_dir}/google")
        if(NOT EXISTS "${_filtered}")
          file(MAKE_DIRECTORY "${_filtered}")
          file(GLOB _entries RELATIVE "${_dir}" "${_dir}/*")
          foreach(_entry IN LISTS _entries)
            if(NOT _entry STREQUAL "fmt" AND NOT _entry STREQUAL "google")
              file(CREATE_LINK "${_dir}/${_entry}" "${_filtered}/${_entry}" SYMBOLIC)
            endif()
          endforeach()
        endif()
        list(APPEND _new_dirs "${_filtered}")
      else()
        list(APPEND _new_dirs "${_dir}")
      endif()
    endforeach()
    set_property(TARGET ${_target} PROPERTY INTERFACE_INCLUDE_DIRECTORIES ${_new_dirs})
    # LibTorch's headers are not warning-clean: include them as system headers.
    set_property(TARGET ${_target} PROPERTY INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${_new_dirs})
  endforeach()
endfunction()
file(REMOVE_RECURSE "${CMAKE_BINARY_DIR}/torch-include")
_linearize_filter_torch_includes()

# linearize_torch_cpu: only LibTorch's CPU libraries, for code that never touches a device (formats/);
# processes built from it alone do not load a CUDA build's ~0.3 GiB of CUDA libraries at start-up.
# linearize_torch: everything, CUDA included when the build has it (kernels/ and above).
add_library(linearize_torch_cpu INTERFACE)
target_link_libraries(linearize_torch_cpu INTERFACE torch_cpu c10)
target_compile_options(linearize_torch_cpu INTERFACE ${TORCH_CXX_FLAGS})
add_library(linearize_torch INTERFACE)
target_link_libraries(linearize_torch INTERFACE linearize_torch_cpu ${TORCH_LIBRARIES})
# The torch wheel's libtorch.so exports its own copies of std::filesystem (from a newer libstdc++), and
# they crash when called with this system's libstdc++ (remove_all jumps to null). Putting libstdc++
# first among the needed libraries makes every std:: symbol resolve to the system's own.
target_link_options(linearize_torch_cpu INTERFACE "LINKER:--push-state,--no-as-needed" "-lstdc++" "LINKER:--pop-state")

# linearize_openmp: for code that calls at::parallel_for. That is a header template whose OpenMP loop
# exists only where the caller is compiled with -fopenmp; without it every hand-written CPU kernel ran on
# one thread whatever at::set_num_threads said (decode's bf16 matrix-vector loop: 8.4 GB/s at 1 and at 2
# threads). Linked against the OpenMP runtime LibTorch itself uses (the wheel ships its libgomp), so
# at::set_num_threads sets our loops' thread count too and one thread pool serves both.
file(GLOB _linearize_torch_gomp "${TORCH_INSTALL_PREFIX}/lib/libgomp*.so*")
add_library(linearize_openmp INTERFACE)
target_compile_options(linearize_openmp INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
if(_linearize_torch_gomp)
  list(GET _linearize_torch_gomp 0 _linearize_torch_gomp)
  target_link_libraries(linearize_openmp INTERFACE "${_linearize_torch_gomp}")
else()
  find_package(OpenMP REQUIRED COMPONENTS CXX)
  target_link_libraries(linearize_openmp INTERFACE OpenMP::OpenMP_CXX)
endif()
