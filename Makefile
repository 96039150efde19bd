# clipc — build the library, the CLI, the tests and the benchmark.
#   make            library (build/libclipc.a, build/libclipc.so) and build/clipc
#   make test       run every test (ends with "N passed, N failed")
#   make bench      throughput and share of the machine's peak
#   make sanitize   the tests under AddressSanitizer + UBSan
#   make install PREFIX=/usr/local   (binary, libraries, header, pkg-config file, default model)
#   make uninstall PREFIX=/usr/local removes them

CC      ?= cc
PREFIX  ?= /usr/local
BUILD   ?= build
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -g
# -fno-trapping-math: nothing reads FP exception flags; it lets GCC vectorise
# the clamped loops of the elementwise kernels.
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fno-trapping-math -fopenmp -fPIC -Iinclude
BLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-openmp
CFLAGS  += $(BLAS_CFLAGS)
LIBS    := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -ldnnl -lzip -lcurl -lcrypto -llbfgs -lfaiss -lsentencepiece -lsqlite3 -lmicrohttpd -lcjson -lutf8proc -ljpeg -lpng -ltiff -lwebpdemux -lwebp -lz -lstdc++ -lm -fopenmp -lpthread
LDLIBS  += $(LIBS)
# Data-parallel training over MPI when OpenMPI's development files are
# installed (MPI=0 builds without; `clipc train` then runs one process).
MPI     ?= $(shell pkg-config --exists ompi-c && echo 1 || echo 0)
ifeq ($(MPI),1)
MPI_LIBS := $(shell pkg-config --libs ompi-c)
CFLAGS  += -DCLIPC_MPI $(shell pkg-config --cflags ompi-c)
LDLIBS  += $(MPI_LIBS)
endif

LIB_SRC := $(wildcard src/util/*.c src/weights/*.c src/model/*.c src/tokenizer/*.c src/image/*.c src/tasks/*.c src/train/*.c src/eval/*.c src/index/*.c src/server/*.c src/hub/*.c src/finetune/*.c)
LIB_CXX := $(wildcard src/index/*.cpp src/tokenizer/*.cpp)
LIB_ASM := src/tokenizer/vocab_blob.S src/server/page_blob.S
CLI_SRC := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(LIB_ASM:%.S=$(BUILD)/%.o) $(LIB_CXX:%.cpp=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

all: $(BUILD)/libclipc.a $(BUILD)/libclipc.so $(BUILD)/clipc $(BUILD)/clipc.1

# clipc(1), from the binary's own --help texts
$(BUILD)/clipc.1: $(BUILD)/clipc scripts/man.sh
	sh scripts/man.sh $(BUILD)/clipc $@

$(BUILD)/%.o: %.c $(wildcard include/*.h src/*.h src/*/*.h tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The reduced-precision conversions are memory- and exp-bound loops that
# gain ~8% from 512-bit vectors where the CPU has them (GCC prefers 256).
$(BUILD)/src/model/precision.o: CFLAGS += -mprefer-vector-width=512

# FAISS's C++ API, behind index.h's C functions (Debian ships no compiled FAISS C API); SentencePiece behind spm.h
CXX      ?= g++
CXXFLAGS ?= $(OPT) -g
$(BUILD)/%.o: %.cpp $(wildcard src/*.h src/*/*.h include/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -std=c++17 -Wall -Wextra -fopenmp -fPIC -Iinclude -c $< -o $@

$(BUILD)/%.o: %.S data/bpe_simple_vocab_16e6.txt.gz src/server/page.html
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

$(BUILD)/libclipc.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

# The shared library is versioned: libclipc.so.$(VERSION) with the SONAME libclipc.so.$(SOVERSION),
# and the two links a program is built and run with.
VERSION   := 0.1.0
SOVERSION := 0
$(BUILD)/libclipc.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libclipc.so.$(SOVERSION) -o $@.$(VERSION) $^ $(LDLIBS)
	ln -sf libclipc.so.$(VERSION) $@.$(SOVERSION)
	ln -sf libclipc.so.$(SOVERSION) $@

$(BUILD)/clipc: $(CLI_OBJ) $(BUILD)/libclipc.a
	$(CC) -o $@ $^ $(LDLIBS)

$(BUILD)/test_clipc: $(TEST_OBJ) $(BUILD)/libclipc.a
	$(CC) -o $@ $^ $(LDLIBS)

$(BUILD)/bench_clipc: $(BUILD)/bench/bench.o $(BUILD)/libclipc.a
	$(CC) -o $@ $^ $(LDLIBS)

test: $(BUILD)/test_clipc $(BUILD)/clipc
	CLIPC=$(BUILD)/clipc $(BUILD)/test_clipc

bench: $(BUILD)/bench_clipc
	$(BUILD)/bench_clipc

sanitize:
	$(MAKE) BUILD=build-san OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    LDLIBS="$(LDLIBS) -fsanitize=address,undefined" test

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/clipc $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libclipc.a $(BUILD)/libclipc.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libclipc.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libclipc.so.$(SOVERSION)
	ln -sf libclipc.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libclipc.so
	install -m 644 include/clipc.h $(DESTDIR)$(PREFIX)/include/
	install -d $(DESTDIR)$(PREFIX)/share/clipc
	install -m 644 models/clipc-fmnist.safetensors models/clipc-fmnist-coca.safetensors $(DESTDIR)$(PREFIX)/share/clipc/
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 644 $(BUILD)/clipc.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 scripts/clipc-completion.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/clipc
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@BLAS_DIR@|$(BLAS_DIR)|g' -e 's|@MPI_LIBS@|$(MPI_LIBS)|' clipc.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/clipc.pc

# Removes exactly what install put there (and the share/clipc folder when it is left empty).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/clipc $(DESTDIR)$(PREFIX)/lib/libclipc.a $(DESTDIR)$(PREFIX)/lib/libclipc.so \
	    $(DESTDIR)$(PREFIX)/lib/libclipc.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libclipc.so.$(VERSION) \
	    $(DESTDIR)$(PREFIX)/include/clipc.h $(DESTDIR)$(PREFIX)/share/clipc/clipc-fmnist.safetensors \
	    $(DESTDIR)$(PREFIX)/share/clipc/clipc-fmnist-coca.safetensors \
	    $(DESTDIR)$(PREFIX)/share/man/man1/clipc.1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions/clipc \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig/clipc.pc
	-rmdir $(DESTDIR)$(PREFIX)/share/clipc 2>/dev/null

# libFuzzer targets (clang): each parser, under ASan + UBSan.
#   make fuzz                 builds them and runs each for FUZZ_TIME seconds on its seed corpus
FUZZ_TIME ?= 60
FUZZ_CC   ?= clang
FUZZ_CXX  ?= clang++
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -Iinclude -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
# The image target's seeds: the image fixtures of every format.
build-fuzz/corpus-image/.made: $(wildcard tests/data/formats/*.tif tests/data/formats/*.webp tests/data/modes/*.png tests/data/modes/*.jpg)
	@mkdir -p build-fuzz/corpus-image
	cp $^ build-fuzz/corpus-image/
	@touch $@

# Its seeds: the two test tokenizers' model files (first byte even) and texts (odd).
build-fuzz/corpus-tokenizer/.made: tests/data/siglip/unigram/spiece.model tests/data/siglip/bpe/tokenizer.model
	@mkdir -p build-fuzz/corpus-tokenizer
	{ printf '\000'; cat tests/data/siglip/unigram/spiece.model; } > build-fuzz/corpus-tokenizer/spiece
	{ printf '\000'; cat tests/data/siglip/bpe/tokenizer.model; } > build-fuzz/corpus-tokenizer/gemma
	printf '\001A photo of a DOG, 12 ΟΔΟΣ İ ▁x 😀\t\n' > build-fuzz/corpus-tokenizer/text
	@touch $@

# The checkpoint target's seeds: small models written by build/clipc (plain, F16, fine-tuned with CoOp's
# class-specific contexts, CoCoOp and CLIP-Adapter), made once.
build-fuzz/corpus-checkpoint/.made: $(BUILD)/clipc
	sh tests/fuzz/checkpoint_seeds.sh $(BUILD)/clipc build-fuzz/corpus-checkpoint
	@touch $@

# Each target links the library, compiled once with the fuzzer's instrumentation (without MPI).
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=build-fuzz/%.o) $(LIB_ASM:%.S=build-fuzz/%.o) $(LIB_CXX:%.cpp=build-fuzz/%.o)
build-fuzz/src/%.o: src/%.c $(wildcard include/*.h src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -g -O1 -std=c11 -D_GNU_SOURCE -Iinclude -fsanitize=fuzzer-no-link,address,undefined \
	    -fno-sanitize-recover=undefined -Wno-pass-failed -fopenmp $(BLAS_CFLAGS) -c $< -o $@
build-fuzz/src/%.o: src/%.cpp $(wildcard src/*.h src/*/*.h include/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) -g -O1 -std=c++17 -Iinclude -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=vptr -fopenmp -c $< -o $@
build-fuzz/src/%.o: src/%.S data/bpe_simple_vocab_16e6.txt.gz src/server/page.html
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -c $< -o $@
build-fuzz/libclipc.a: $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^
FUZZ_TARGETS := pickle checkpoint tokenizer image config npy csv query http
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c build-fuzz/libclipc.a
	$(FUZZ_CC) $(FUZZ_FLAGS) -fopenmp $< build-fuzz/libclipc.a $(LIBS) -o $@

# Seeds of the whole-library targets: committed ones (tests/fuzz/corpus/NAME), and for fuzz_config the
# real JSON files beside the test models, each led by the byte that picks its case (tests/fuzz/fuzz_config.c).
build-fuzz/corpus-config/.made: tests/data/arch/hf_mlp2.5_eps_mixed_act/config.json tests/data/siglip/b_like/config.json \
        tests/data/siglip/openclip/open_clip_config.json tests/data/coca/open_clip_config.json tests/data/pytorch/open_clip_config.json
	@mkdir -p build-fuzz/corpus-config
	{ printf '\000'; cat tests/data/arch/hf_mlp2.5_eps_mixed_act/config.json; } > build-fuzz/corpus-config/hf_clip
	{ printf '\001'; cat tests/data/siglip/b_like/config.json; } > build-fuzz/corpus-config/hf_siglip
	printf '\002{"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32}, "resample": 3, "rescale_factor": 0.00392156862745098, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_resize": true}' > build-fuzz/corpus-config/preprocessor
	{ printf '\003'; cat tests/data/siglip/openclip/open_clip_config.json; } > build-fuzz/corpus-config/openclip_siglip
	{ printf '\004'; cat tests/data/coca/open_clip_config.json; } > build-fuzz/corpus-config/coca
	{ printf '\005'; cat tests/data/pytorch/open_clip_config.json; } > build-fuzz/corpus-config/openclip
	printf '\006{"tokenizer_class": "SiglipTokenizer", "eos_token": "</s>", "pad_token": {"content": "</s>"}, "padding_side": "right"}' > build-fuzz/corpus-config/tokenizer
	@touch $@

fuzz-build: $(FUZZ_TARGETS:%=build-fuzz/fuzz_%) build-fuzz/corpus-checkpoint/.made build-fuzz/corpus-tokenizer/.made \
            build-fuzz/corpus-image/.made build-fuzz/corpus-config/.made

fuzz: fuzz-build
	@mkdir -p build-fuzz/corpus-pickle
	build-fuzz/fuzz_pickle -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build-fuzz/corpus-pickle tests/fuzz/corpus/pickle
	build-fuzz/fuzz_checkpoint -max_total_time=$(FUZZ_TIME) -rss_limit_mb=4096 -print_final_stats=1 \
	    build-fuzz/corpus-checkpoint
	build-fuzz/fuzz_tokenizer -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build-fuzz/corpus-tokenizer
	build-fuzz/fuzz_image -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build-fuzz/corpus-image
	build-fuzz/fuzz_config -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build-fuzz/corpus-config
	for t in npy csv query http; do mkdir -p build-fuzz/corpus-$$t && \
	    build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build-fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; done

clean:
	rm -rf build build-san build-fuzz

.PHONY: uninstall all test bench sanitize install clean fuzz fuzz-build
