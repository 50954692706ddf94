// Greedy decode from token ids with libllama; prints generated ids and the prompt's last logits.
// usage: greedy MODEL N id0 id1 ...
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
static int argmax(const float *v, int n) { int b = 0; for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i; return b; }
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage\n"); return 2; }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) { fprintf(stderr, "load failed\n"); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 64; cp.n_batch = 64; cp.n_threads = 1; cp.n_threads_batch = 1;
    struct llama_context *ctx = llama_init_from_model(m, cp);
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    int n = atoi(argv[2]);
    int np = argc - 3;
    llama_token *ids = malloc(sizeof(llama_token) * (np + n));
    for (int i = 0; i < np; i++) ids[i] = atoi(argv[3 + i]);
    if (llama_decode(ctx, llama_batch_get_one(ids, np))) { fprintf(stderr, "decode failed\n"); return 1; }
    float *l = llama_get_logits_ith(ctx, -1);
    printf("LOGITS");
    for (int i = 0; i < nv; i++) printf(" %.6f", l[i]);
    printf("\nGREEDY");
    llama_token t = argmax(l, nv);
    for (int k = 0; k < n; k++) {
        printf(" %d", t);
        if (k + 1 == n) break;
        if (llama_decode(ctx, llama_batch_get_one(&t, 1))) { fprintf(stderr, "decode failed\n"); return 1; }
        t = argmax(llama_get_logits_ith(ctx, -1), nv);
    }
    printf("\n");
    llama_free(ctx); llama_model_free(m);
    return 0;
}
