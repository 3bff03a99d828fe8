// Print llama.cpp's logits for a token sequence (one batch, positions 0..n-1), one line per
// position, space-separated. Used only by crosscheck_llamacpp.py to validate the numpy oracle.
//
// usage: llamacpp_logits MODEL.gguf t1,t2,... [kv=f16|kv=f32] [fa=0|fa=1]     (env NT = threads, default 2)
// build (llama.cpp checkout LL built with cmake -B build -DBUILD_SHARED_LIBS=OFF; cmake --build build --target llama):
//   g++ -O2 -std=c++17 -I$LL/include -I$LL/ggml/include llamacpp_logits.cpp $LL/build/src/libllama.a \
//       $LL/build/ggml/src/libggml.a $LL/build/ggml/src/libggml-cpu.a $LL/build/ggml/src/libggml-base.a \
//       -fopenmp -lpthread -ldl -o llamacpp_logits
// Written against llama.cpp as vendored in llama-cpp-python 0.3.16 (llama_context_params.flash_attn is a bool there).
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    std::vector<llama_token> toks;
    { std::string s = argv[2]; size_t p = 0; while (p < s.size()) { size_t q = s.find(',', p); if (q == std::string::npos) q = s.size(); toks.push_back(atoi(s.substr(p, q - p).c_str())); p = q + 1; } }
    bool kv32 = argc > 3 && strcmp(argv[3], "kv=f32") == 0;
    bool fa = argc > 4 && strcmp(argv[4], "fa=1") == 0;
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params();
    llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    auto cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_ubatch = 512; { const char *e = getenv("NT"); int nt = e ? atoi(e) : 2; cp.n_threads = nt; cp.n_threads_batch = nt; }
    cp.flash_attn = fa;
    if (kv32) { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }
    llama_context *ctx = llama_init_from_model(model, cp);
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_batch b = llama_batch_init(toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) { b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1; }
    b.n_tokens = toks.size();
    if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
    for (size_t i = 0; i < toks.size(); i++) { float *l = llama_get_logits_ith(ctx, i); for (int j = 0; j < nv; j++) printf(j ? " %.9g" : "%.9g", l[j]); printf("\n"); }
    return 0;
}
