/* The whole model for training: f32 master weights in one parameter table,
 * the inference forwards run over views of them (filling saved activations),
 * the loss heads fused with the LM head, and the backward of every parameter.
 *
 * One step (dm_trainable_forward_backward):
 *   patches -> vision tower + merger (vision_forward_train) -> vision tokens
 *   ids -> embeddings, image-pad rows replaced by the vision tokens in order
 *   -> decoder (dm_llm_forward_train) -> final norm -> h [T, hidden]
 *   text:   next-token CE on h (dm_head_ce), targets[t] = labels[t + 1]
 *   vision: NTP-M on the rows of the image pads (dm_head_ntpm), vision token i
 *           supervised by the labels of its own merged patch (no shift)
 *   -> dh -> decoder backward -> d(embeddings): scatter-add into the embedding's
 *   gradient (text rows), the pad rows into the vision backward.
 * Gradients ADD to the table's gradient buffers until dm_trainable_zero_grad.
 * Calls are serialised by a lock (the activations and gradients are shared). */
#ifndef DM_MODEL_TRAINABLE_H
#define DM_MODEL_TRAINABLE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "model/llm.h"
#include "model/params.h"
#include "model/vision.h"
#include "train/ntpm.h"

struct dm_checkpoint;

typedef struct dm_trainable {
    dm_vision_config vcfg;
    dm_llm_config lcfg;
    dm_params params; /* every weight: f32 master + gradient */
    dm_vision *vision;
    dm_llm *llm;
    dm_backend backend;
    int checkpointing; /* 1: recompute each layer's activations in the backward */
    int64_t head_chunk_bytes; /* loss heads' logits budget (<= 0: DM_HEAD_CHUNK_BYTES) */
    /* Activation blocks kept between steps (fresh pages for hundreds of MiB every
     * step cost page faults): reused while a step needs between half and all of
     * one, reallocated otherwise, freed with the model. */
    void *vision_block, *llm_block;
    size_t vision_cap, llm_cap;
    pthread_mutex_t lock;
} dm_trainable;

dm_status dm_trainable_create(const struct dm_checkpoint *ck, const dm_vision_config *vcfg,
                              const dm_llm_config *lcfg, dm_backend backend, dm_trainable **out);
void dm_trainable_free(dm_trainable *t);
void dm_trainable_zero_grad(dm_trainable *t);

typedef struct {
    const int64_t *ids; /* [T] */
    int64_t T;
    const float *patches; /* [gh*gw, C*p*p] (merge-block order) or NULL: no image */
    int64_t gh, gw;
    const int64_t *labels; /* [T] Hugging Face labels (-100 ignored) or NULL: no text loss */
    /* NTP-M on the vision tokens (L = gh/merge * gw/merge, row-major merged grid);
     * pos_offsets NULL: no vision loss. Validity / variant as dm_head_ntpm_args. */
    const int64_t *pos_offsets, *pos_ids;
    int64_t n_pos;
    int64_t n_sets;
    const int64_t *valid_offsets, *valid_ids, *token_set;
    int64_t n_valid;
    const int64_t *ntp_labels;
    int64_t k;
    double gamma, alpha, ohem_ratio;
    ntpm_variant variant;
    double vision_denom; /* 0: mean over active vision tokens, < 0: sum (Eq. 5), > 0: given */
    double text_denom;   /* 0: mean over counted text tokens, > 0: given */
    /* Embedding row that takes no gradient from its lookups (nn.Embedding's
     * padding_idx = pad_token_id in transformers' model); < 0: none. A tied head
     * still adds its own gradient to that row. */
    int64_t padding_idx;
} dm_train_inputs;

typedef struct {
    double loss, text_loss, vision_loss; /* loss = text_loss + vision_loss */
    int64_t n_text, n_vision;            /* counted text targets, active vision tokens */
    size_t act_bytes;                    /* saved activations of this step (vision + llm) */
    int64_t head_workspace;              /* largest loss-head scratch */
} dm_train_result;

dm_status dm_trainable_forward_backward(dm_trainable *t, const dm_train_inputs *in, dm_train_result *res);

/* Bytes of saved activations a step of this shape keeps (both modes). */
size_t dm_trainable_act_bytes(const dm_trainable *t, int64_t T, int64_t gh, int64_t gw, int checkpointing);

#endif
