# givt: build the library (libgivt.a), the programs and the tests.
# The CPU path always builds; CUDA kernels build when nvcc is found; MPI when mpicc is found.
#   make            library + programs        make test      build and run every test
#   make clean      remove build outputs      make install   PREFIX=/usr/local
#   make info       what was detected (BLAS, nvcc, mpicc)
#   make test-sanitize   every test (and the programs) built with ASan + UBSan + LSan in build-san/
#   make emu        the programs with the CUDA backend emulated on the CPU, in build/emu/
#   make emu-profile  the same with the kernels instrumented (the emulator as a profiler), build/emu-prof/

PREFIX  ?= /usr/local
# the library's layers: core (errors, memory, files), io (file formats), backend (the op contract,
# the registry, the communicator contract), cpu (the CPU backend), model (the model and its HF
# serialisation), train (config, data, optimizer, trainer), sample; programs on top
SRC_DIRS := csrc/core csrc/io csrc/backend csrc/cpu csrc/model csrc/train csrc/sample
BUILD   ?= build
CC      ?= cc
ARCH    ?= -march=native
OPT     ?= -O3
CFLAGS  ?= $(OPT) $(ARCH) -g
# flags the build needs whatever CFLAGS the user sets (e.g. CFLAGS="-O1 -g -fsanitize=address,undefined")
# (-fno-trapping-math lets loops with float compares vectorise, -fno-math-errno loops with sqrtf
# (AdamW's); neither changes a result: givt never reads errno after a math call)
override CFLAGS += -std=c11 -Wall -Wextra -Werror -fopenmp -fno-trapping-math -fno-math-errno -MMD -MP $(addprefix -I,$(SRC_DIRS))
LDLIBS  += -fopenmp -lm

# BLAS, the CPU backend's matrix products (csrc/cpu/blas.h), chosen by measurement
# (scripts/bench_blas.sh; docs/benchmarks.md, "Which BLAS"): BLAS=dnnl (default), openblas, blis or mkl.
#  - dnnl: Debian's libdnnl-dev (oneDNN's dnnl_sgemm, GNU OpenMP threads);
#  - openblas: via pkg-config; Debian's OpenMP build is preferred when installed (one thread pool
#    shared with our own OpenMP loops), found beside the default .pc file rather than by a fixed path;
#  - blis: Debian's libblis-openmp-dev;
#  - mkl: MKLROOT holding include/mkl.h and lib/libmkl_*.so.N (e.g. a venv with pip's mkl-devel),
#    GNU OpenMP threading layer.
# The choice is recorded in $(BUILD)/.blas (below): changing it rebuilds every object.
BLAS ?= dnnl
PKG_CONFIG ?= pkg-config
comma := ,
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
OPENBLAS_PCDIR := $(shell $(PKG_CONFIG) --variable=pcfiledir openblas 2>/dev/null)
OPENBLAS_PC := $(or $(wildcard $(OPENBLAS_PCDIR)/../openblas-openmp/pkgconfig/openblas.pc),openblas)
ifeq ($(BLAS),openblas)
  ifeq ($(shell $(PKG_CONFIG) --exists $(OPENBLAS_PC) && echo yes),yes)
    BLAS_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(OPENBLAS_PC))
    BLAS_LIBDIR := $(shell $(PKG_CONFIG) --variable=libdir $(OPENBLAS_PC))
    LDLIBS += $(shell $(PKG_CONFIG) --libs $(OPENBLAS_PC)) $(if $(BLAS_LIBDIR),-Wl$(comma)-rpath$(comma)$(BLAS_LIBDIR))
  else
    LDLIBS += -lopenblas
  endif
else ifeq ($(BLAS),blis)
  BLIS_INC ?= /usr/include/$(MULTIARCH)/blis-openmp
  BLAS_LIBDIR ?= /usr/lib/$(MULTIARCH)/blis-openmp
  BLAS_CFLAGS := -DGIVT_BLAS_BLIS -I$(BLIS_INC)
  LDLIBS += -L$(BLAS_LIBDIR) -lblis -Wl,-rpath,$(BLAS_LIBDIR)
else ifeq ($(BLAS),mkl)
  ifeq ($(MKLROOT),)
    $(error BLAS=mkl needs MKLROOT (a folder with include/mkl.h and lib/libmkl_core.so.N, e.g. a venv after pip install mkl-devel))
  endif
  MKL_SOVERSION ?= $(patsubst $(MKLROOT)/lib/libmkl_core.so.%,%,$(firstword $(wildcard $(MKLROOT)/lib/libmkl_core.so.*)))
  BLAS_LIBDIR := $(MKLROOT)/lib
  BLAS_CFLAGS := -DGIVT_BLAS_MKL -I$(MKLROOT)/include
  LDLIBS += -L$(BLAS_LIBDIR) -l:libmkl_intel_lp64.so.$(MKL_SOVERSION) -l:libmkl_gnu_thread.so.$(MKL_SOVERSION) \
            -l:libmkl_core.so.$(MKL_SOVERSION) -Wl,-rpath,$(BLAS_LIBDIR)
else ifeq ($(BLAS),dnnl)
  BLAS_CFLAGS := -DGIVT_BLAS_DNNL
  LDLIBS += -ldnnl
else
  $(error BLAS=$(BLAS): expected openblas, blis, mkl or dnnl)
endif
override CFLAGS += $(BLAS_CFLAGS)
NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))

# MPI (data-parallel training, csrc/train/dist_mpi.c): the flags of the mpicc compiler wrapper
# (Open MPI's --showme, MPICH's -compile_info/-link_info); MPI=0 builds without it.
MPI ?= 1
MPICC ?= $(if $(filter 1,$(MPI)),$(shell command -v mpicc 2>/dev/null))
ifneq ($(MPICC),)
  MPI_CFLAGS := $(or $(shell $(MPICC) --showme:compile 2>/dev/null),$(filter -I% -D%,$(shell $(MPICC) -compile_info 2>/dev/null)))
  MPI_LIBS   := $(or $(shell $(MPICC) --showme:link 2>/dev/null),$(filter -L% -l% -Wl%,$(shell $(MPICC) -link_info 2>/dev/null)))
  override CFLAGS += -DGIVT_WITH_MPI $(MPI_CFLAGS)
  LDLIBS += $(MPI_LIBS)
endif

# The build's configuration (BLAS, whether nvcc and mpicc were found) is recorded in $(BUILD)/.blas:
# changing any of them (BLAS=openblas, NVCC=, MPI=0) rebuilds every object instead of linking objects
# compiled for another configuration.
BLAS_STAMP := $(BUILD)/.blas
BUILD_CONFIG := $(BLAS) cuda=$(if $(NVCC),1,0) mpi=$(if $(MPICC),1,0)
$(shell mkdir -p $(BUILD) && { [ "$$(cat $(BLAS_STAMP) 2>/dev/null)" = "$(BUILD_CONFIG)" ] || echo "$(BUILD_CONFIG)" >$(BLAS_STAMP); })

# where the programs go: the top-level folder (BIN_PREFIX empty), or e.g. build-san/ for test-sanitize
BIN_PREFIX ?=

LIB_SRCS  := $(foreach d,$(SRC_DIRS),$(wildcard $(d)/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
LIB       := $(BUILD)/libgivt.a
PROGRAMS  := givt-eval givt-train givt-sample givt-prepare-digits givt-bench givt-latents
PROGRAM_BINS := $(addprefix $(BIN_PREFIX),$(PROGRAMS))
TEST_SRCS := $(wildcard tests/*.c)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/%.o)
TEST_BIN  := $(BUILD)/run_tests

# ---- the CUDA backend (kernels/*.cu), when nvcc is found ---------------------------------------
# Two builds of the same sources:
#  - GPU: nvcc for sm_90 (+ compute_90 PTX), warnings as errors, into $(BUILD)/kernels/; linked into
#    the programs with cudart and cuBLASLt (on a machine without a GPU the cuda backend then says
#    why it is unavailable and device = auto falls back to cpu);
#  - emulated: g++ -x c++ -DGIVT_CUDA_EMU with kernels/emu/ (the CPU emulation of CUDA and of
#    cublasLtMatmul), into $(BUILD)/kernels-emu/; linked into the test runner, where the cuda backend
#    is "available, emulated" so that tests/test_backend_ops.c compares every kernel with the CPU,
#    into the programs of make emu and into everything test-sanitize builds (EMU_PROGRAMS=1).
KERNEL_OBJS :=
TEST_KERNEL_OBJS :=
KERNEL_LIBS :=
TEST_KERNEL_LIBS :=
ifneq ($(NVCC),)
  CUDA_HOME   ?= $(patsubst %/bin/,%,$(dir $(realpath $(NVCC))))
  CUDA_LIBDIR ?= $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/targets/x86_64-linux/lib))
  override CFLAGS += -DGIVT_WITH_CUDA
  # NCCL (kernels/dist_nccl.cu, the GPU communicator): GPU builds only, when nccl.h is beside nvcc
  NCCL_INC    := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
  NCCL_SRCS   := $(if $(NCCL_INC),kernels/dist_nccl.cu)
  KERNEL_SRCS := $(filter-out kernels/dist_nccl.cu,$(wildcard kernels/*.cu))
  KERNEL_HDRS := $(wildcard kernels/*.h kernels/*.cuh kernels/emu/*.h csrc/backend/*.h)
  GPU_OBJS    := $(KERNEL_SRCS:%.cu=$(BUILD)/%.o) $(NCCL_SRCS:%.cu=$(BUILD)/%.o)
  EMU_OBJS    := $(KERNEL_SRCS:kernels/%.cu=$(BUILD)/kernels-emu/%.o) \
                 $(patsubst kernels/emu/%.cpp,$(BUILD)/kernels-emu/emu/%.o,$(wildcard kernels/emu/*.cpp))
  TEST_CU_OBJS := $(patsubst tests/%.cu,$(BUILD)/tests-emu/%.o,$(wildcard tests/*.cu))
  NVCCFLAGS   ?= -O3 -lineinfo
  override NVCCFLAGS += -std=c++17 -arch=sm_90 -gencode arch=compute_90,code=compute_90 \
                 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings -Ikernels -Icsrc/core -Icsrc/backend
  # EMU_EXTRA: test-sanitize adds the sanitizers here
  EMU_CXXFLAGS := -std=c++17 -O1 -g $(ARCH) -Wall -Wextra -Werror -Wno-unknown-pragmas -DGIVT_CUDA_EMU \
                 -isystem $(CUDA_HOME)/include -Ikernels -Icsrc/core -Icsrc/backend -Itests -MMD -MP $(EMU_EXTRA)
  GPU_LIBS    := -L$(CUDA_LIBDIR) -lcudart -lcublasLt $(if $(NCCL_SRCS),-lnccl) -Wl,-rpath,$(CUDA_LIBDIR) -lstdc++
  EMU_LIBS    := -L$(CUDA_LIBDIR) -lcublasLt -Wl,-rpath,$(CUDA_LIBDIR) -lstdc++
  ifeq ($(EMU_PROGRAMS),1)
    KERNEL_OBJS := $(EMU_OBJS)
    KERNEL_LIBS := $(EMU_LIBS)
  else
    KERNEL_OBJS := $(GPU_OBJS)
    KERNEL_LIBS := $(GPU_LIBS)
  endif
  TEST_KERNEL_OBJS := $(EMU_OBJS) $(TEST_CU_OBJS)
  TEST_KERNEL_LIBS := $(EMU_LIBS)
endif

.PHONY: all test test-sanitize clean install info fuzz clean-fuzz emu test-gpu emu-profile
all: $(LIB) $(PROGRAM_BINS)

$(BUILD)/%.o: %.c $(BLAS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

# program givt-foo-bar is built from csrc/programs/givt_foo_bar.c
.SECONDEXPANSION:
$(PROGRAM_BINS): $(BIN_PREFIX)%: $$(BUILD)/csrc/programs/$$(subst -,_,$$*).o $(KERNEL_OBJS) $(LIB)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(KERNEL_LIBS) $(LDLIBS)

$(TEST_BIN): $(TEST_OBJS) $(TEST_KERNEL_OBJS) $(LIB)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(TEST_KERNEL_LIBS) $(LDLIBS)

# the CUDA kernels: for the GPU (nvcc) and emulated (g++), see above
$(BUILD)/kernels/%.o: kernels/%.cu $(KERNEL_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/kernels-emu/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/kernels-emu/emu/%.o: kernels/emu/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(BUILD)/tests-emu/%.o: tests/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

# make test-gpu: the test runner with the GPU build of the kernels ($(BUILD)/run_tests_gpu: every test
# but the emulator's own; test_backend_ops then compares the real GPU with the CPU; without a GPU the
# cuda backend reports itself unavailable and only the CPU runs). scripts/gpu_check.sh uses it.
GPU_TEST_BIN := $(BUILD)/run_tests_gpu
$(GPU_TEST_BIN): $(TEST_OBJS) $(GPU_OBJS) $(LIB)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(GPU_LIBS) $(LDLIBS)
test-gpu: $(GPU_TEST_BIN) $(PROGRAM_BINS)
	GIVT_BIN_DIR=$(or $(BIN_PREFIX),.) $(GPU_TEST_BIN) $(TEST_FILTER)

# make emu: the programs with the emulated CUDA backend (device = cuda runs the kernels on the CPU,
# slowly: tiny models only), from the objects of $(BUILD)
EMU_BIN := $(BUILD)/emu
emu: $(addprefix $(EMU_BIN)/,$(PROGRAMS))
$(addprefix $(EMU_BIN)/,$(PROGRAMS)): $(EMU_BIN)/%: $$(BUILD)/csrc/programs/$$(subst -,_,$$*).o $(EMU_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(EMU_LIBS) $(LDLIBS)

# ---- the emulator as a profiler: make emu-profile ------------------------------------------------
# kernels/*.cu compiled once more for the emulation, instrumented, into $(BUILD)/kernels-prof/:
#  - -fsanitize=thread for its instrumentation only: every load and store of the kernel code calls
#    __tsan_readN / __tsan_writeN (N = the access's bytes); no ThreadSanitizer runtime is linked,
#    kernels/emu/emu_prof_hooks.cpp defines them and hands each access to the profiler
#    (kernels/emu/emu_profile.cpp; both are part of every emulated build, where nothing calls the
#    hooks and the profiler stays off);
#  - -fsanitize-coverage=trace-pc: a call at each basic block, for the floating-point counts;
#  - -fno-tree-sra: a float4 or uint4 copy stays one 16-byte access (as nvcc's 128-bit load) instead
#    of four 4-byte ones;
#  - more inlining than -O1's (-finline-small-functions, early-inlining-insns): GCC does not
#    instrument a store of a call's result straight into memory (`*p = __float2bfloat16(x)` with the
#    conversion not inlined), so the small functions that return structs must be inlined.
# make emu-profile builds the programs with them in $(BUILD)/emu-prof/ (GIVT_EMU_PROFILE=FILE writes
# the counters; kernels/README.md, "The emulator as a profiler") and $(BUILD)/run_tests_prof, the
# planted-count tests of tests/prof/ (their own runner: the ordinary runner stays uninstrumented),
# which make test runs before the main runner. The ordinary emulated build is not changed by any of it.
PROF_TEST_BIN :=
ifneq ($(NVCC),)
  PROF_FLAGS       := -fsanitize=thread --param tsan-instrument-func-entry-exit=0 -fsanitize-coverage=trace-pc \
                      -fno-tree-sra -finline-small-functions --param early-inlining-insns=60
  PROF_CXXFLAGS    := $(filter-out $(EMU_EXTRA),$(EMU_CXXFLAGS)) $(PROF_FLAGS)
  PROF_KERNEL_OBJS := $(KERNEL_SRCS:kernels/%.cu=$(BUILD)/kernels-prof/%.o)
  PROF_EMU_OBJS    := $(filter $(BUILD)/kernels-emu/emu/%,$(EMU_OBJS))
  PROF_TEST_OBJS   := $(patsubst tests/prof/%.cu,$(BUILD)/tests-prof/%.o,$(wildcard tests/prof/*.cu))
  PROF_TEST_BIN    := $(BUILD)/run_tests_prof
endif
PROF_BIN := $(BUILD)/emu-prof

$(BUILD)/kernels-prof/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(PROF_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/tests-prof/%.o: tests/prof/%.cu
	@mkdir -p $(dir $@)
	$(CXX) $(PROF_CXXFLAGS) -x c++ -c $< -o $@

$(PROF_TEST_BIN): $(BUILD)/tests/run_tests.o $(PROF_TEST_OBJS) $(PROF_EMU_OBJS) $(LIB)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(EMU_LIBS) $(LDLIBS)

ifneq ($(NVCC),)
emu-profile: $(addprefix $(PROF_BIN)/,$(PROGRAMS)) $(PROF_TEST_BIN)
$(addprefix $(PROF_BIN)/,$(PROGRAMS)): $(PROF_BIN)/%: $$(BUILD)/csrc/programs/$$(subst -,_,$$*).o $(PROF_KERNEL_OBJS) \
		$(PROF_EMU_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.o,$^) $(LIB) -o $@ $(EMU_LIBS) $(LDLIBS)
else
emu-profile:
	@echo "make emu-profile: no nvcc (the emulation needs the CUDA headers): nothing to build"
endif

# The tests that run a program find it in GIVT_BIN_DIR (the top-level folder by default). With nvcc,
# the profiler's planted-count tests ($(PROF_TEST_BIN)) run first.
test: $(TEST_BIN) $(PROGRAM_BINS) $(PROF_TEST_BIN)
	$(if $(PROF_TEST_BIN),$(PROF_TEST_BIN) $(TEST_FILTER))
	GIVT_BIN_DIR=$(or $(BIN_PREFIX),.) $(TEST_BIN) $(TEST_FILTER)

# test-sanitize: the library, the programs and the test runner built again in build-san/ (never
# mixed with build/ or the top-level programs) with AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer, then every test run, error-path tests included, the programs they
# start being the sanitized ones. Any report fails the run: UBSan does not recover, ASan and LSan
# halt on the first error, with exit status 86. tests/lsan.supp may only suppress leaks inside
# third-party libraries (OpenBLAS; it explains why libgomp gets no entry); never our own code.
SAN_BUILD  := build-san
SAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_ENV    := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86
test-sanitize:
	$(MAKE) BUILD=$(SAN_BUILD) BIN_PREFIX=$(SAN_BUILD)/ CFLAGS="$(SAN_CFLAGS) $(ARCH)" EMU_PROGRAMS=1 \
	    EMU_EXTRA="-fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	    $(SAN_BUILD)/run_tests $(addprefix $(SAN_BUILD)/,$(PROGRAMS))
	$(SAN_ENV) GIVT_BIN_DIR=$(SAN_BUILD) $(SAN_BUILD)/run_tests $(TEST_FILTER)

# make install: the programs, libgivt.a (with the CUDA backend's GPU objects when nvcc built them), the
# configs and the Python scripts (samples and metrics pictures, the PyTorch reference) under
# $(PREFIX)/share/givt/, and the headers under $(PREFIX)/include/givt/ (#include <givt/model.h>: the headers include each other
# from their own folder, so a user's util.h is never picked up), plus givt.pc for pkg-config
# (--cflags -I$(PREFIX)/include; --libs with what the library needs: BLAS, OpenMP, MPI, CUDA).
# scripts/check_install.sh checks it with a user program that has its own util.h and rng_seed.
INSTALL_LIB := $(BUILD)/install/libgivt.a
INSTALL_HDRS := $(filter-out %_internal.h,$(foreach d,$(SRC_DIRS),$(wildcard $(d)/*.h)))
$(INSTALL_LIB): $(LIB_OBJS) $(KERNEL_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^
install: all $(INSTALL_LIB)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/givt
	install -m 755 $(PROGRAM_BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(INSTALL_LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(INSTALL_HDRS) $(DESTDIR)$(PREFIX)/include/givt/
	install -d $(DESTDIR)$(PREFIX)/share/givt/configs $(DESTDIR)$(PREFIX)/share/givt/scripts
	install -m 644 configs/*.ini $(DESTDIR)$(PREFIX)/share/givt/configs/
	install -m 644 scripts/*.py $(DESTDIR)$(PREFIX)/share/givt/scripts/
	printf '%s\n' 'prefix=$(PREFIX)' 'Name: givt' 'Description: GIVT training and sampling engine' 'Version: 1' \
	    'Cflags: -I$${prefix}/include' 'Libs: -L$${prefix}/lib -lgivt $(strip $(KERNEL_LIBS) $(LDLIBS))' \
	    >$(DESTDIR)$(PREFIX)/lib/pkgconfig/givt.pc

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(PROGRAMS)

info:
	@echo "BLAS:  $(BLAS)$(if $(filter openblas,$(BLAS)), ($(OPENBLAS_PC))) ($(or $(BLAS_LIBDIR),default library path))"
	@echo "nvcc:  $(or $(NVCC),not found)$(if $(NVCC), (CUDA backend: kernels/*.cu for sm_90; emulated in the tests; cuda libraries in $(CUDA_LIBDIR)), (no CUDA backend))"
	@echo "mpicc: $(or $(MPICC),not found)$(if $(MPICC), (data-parallel training on CPUs: csrc/train/dist_mpi.c), (single process only))"
	@echo "nccl:  $(or $(NCCL_INC),not found)$(if $(NCCL_INC), (data-parallel training on GPUs: kernels/dist_nccl.cu))"

# ---- fuzzing: make fuzz ----------------------------------------------------------------------
# libFuzzer targets (tests/fuzz/fuzz_*.c, one per input format: INI config, JSON/config.json,
# safetensors, npy, the training state, labels, digits.bin, overrides) built with clang into
# $(FUZZ_BUILD)/, with AddressSanitizer and UBSan: the library sources with -fsanitize=fuzzer-no-link
# (coverage only), each target linked with -fsanitize=fuzzer (libFuzzer's main). Separate from
# $(BUILD): make, make test and CFLAGS do not touch it.
# The library compiles as in the normal build (-fopenmp) and the targets link BLAS and clang's
# OpenMP runtime: the model's tables pull in the backend registry, which holds the CPU backend.
# Run them with scripts/fuzz.sh [SECONDS] [TARGET...] (corpora in tests/fuzz/corpus/<target>/);
# make clean-fuzz removes $(FUZZ_BUILD).
FUZZ_CC     ?= clang
FUZZ_BUILD  ?= build-fuzz
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS := -g -O1 -std=c11 -Wall -Wextra -Werror -MMD -MP $(addprefix -I,$(SRC_DIRS)) $(BLAS_CFLAGS)
FUZZ_SRCS   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS   := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_LIB    := $(FUZZ_BUILD)/libgivt.a
FUZZ_LDLIBS := $(LDLIBS)

fuzz: $(FUZZ_BINS)

clean-fuzz:
	rm -rf $(FUZZ_BUILD)

$(FUZZ_BUILD)/csrc/%.o: csrc/%.c $(BLAS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fopenmp -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c $< -o $@

$(FUZZ_LIB): $(LIB_SRCS:%.c=$(FUZZ_BUILD)/%.o)
	@rm -f $@
	$(AR) rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(FUZZ_SAN) $< $(FUZZ_LIB) -o $@ $(FUZZ_LDLIBS)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
