# cmake -DFUZZER=... -DSEEDS=... -DWORK=... -DDICT=... -DARGS="a;b" -P run_fuzzer.cmake
# Copies the seed corpus to WORK/corpus (the fuzzer adds what it finds there), runs the fuzzer with
# ARGS, and fails on a non-zero exit. Crash inputs land in WORK/artifacts/.
foreach(var FUZZER SEEDS WORK DICT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${var}= is required")
  endif()
endforeach()
if(NOT IS_DIRECTORY "${SEEDS}")
  message(FATAL_ERROR "no seed corpus at ${SEEDS}: build the fuzz_safetensors_header_seeds target")
endif()

file(REMOVE_RECURSE "${WORK}/corpus")
file(MAKE_DIRECTORY "${WORK}/corpus" "${WORK}/artifacts")
file(GLOB seeds "${SEEDS}/*")
file(COPY ${seeds} DESTINATION "${WORK}/corpus")

execute_process(
  COMMAND "${FUZZER}" ${ARGS} "-dict=${DICT}" "-artifact_prefix=${WORK}/artifacts/" "${WORK}/corpus"
  WORKING_DIRECTORY "${WORK}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fuzzer exited with ${rc}; reproduce with: ${FUZZER} ${WORK}/artifacts/<crash-file>")
endif()
