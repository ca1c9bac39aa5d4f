"""PyTorch references shared by the tests, written from the notes
(/work/shared/reference/youtu-vl-notes.md) independently of the C code.

Vision (sections 2, 3): preprocessing and the tower + merger in float64, in the
ORIGINAL patch order with a window mask (the C code permutes into window order
instead), differentiable so torch.autograd gives the reference gradients
(tests/test_train_model.py); cross-checked against transformers' Qwen2.5-VL helpers
in tests/test_vision.py. NTP-M (section 9) on logits, for the whole-model gradients.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

def ref_positions(gh, gw, merge=2):
    """(row, col) of each patch in merge-block order (notes section 2.3)."""
    rows, cols = [], []
    for by in range(gh // merge):
        for bx in range(gw // merge):
            for iy in range(merge):
                for ix in range(merge):
                    rows.append(by * merge + iy)
                    cols.append(bx * merge + ix)
    return torch.tensor(rows), torch.tensor(cols)


def ref_window_ids(gh, gw, window_size, patch, merge=2):
    """Window id of each patch: windows of window_size/merge/patch merged tokens."""
    win = window_size // merge // patch
    rows, cols = ref_positions(gh, gw, merge)
    mw = gw // merge
    nww = -(-mw // win)
    return (rows // merge // win) * nww + (cols // merge // win)


def ref_rope(x, rows, cols, theta=10000.0):
    """Rotate-half 2D RoPE on x [N, H, hd]: angles [row*f, col*f] duplicated."""
    hd = x.shape[-1]
    d = hd // 2
    f = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # d/2 frequencies
    ang = torch.cat([rows[:, None] * f, cols[:, None] * f], dim=1)  # [N, d]
    ang = torch.cat([ang, ang], dim=1)[:, None, :]  # [N, 1, hd]
    x1, x2 = x[..., :d], x[..., d:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * ang.cos() + rot * ang.sin()


def ref_tower_t(w, cfg, patches, gh, gw):
    """float64 forward of the tower + merger as a torch graph (differentiable in the
    tensors of w when they require grad); w: name -> tensor (any prefix)."""
    def g(name, merger=False):
        for p in (("merger.", "vision_model.merger.") if merger else ("siglip2.vision_model.", "vision_model.")):
            if p + name in w:
                return w[p + name].double()
        raise KeyError(name)

    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = D // H
    merge = cfg["spatial_merge_size"]
    x = torch.as_tensor(patches).double() @ g("embeddings.patch_embedding.weight").T + g("embeddings.patch_embedding.bias")
    rows, cols = ref_positions(gh, gw, merge)
    wid = ref_window_ids(gh, gw, cfg["window_size"], cfg["patch_size"], merge)
    win_mask = wid[:, None] == wid[None, :]
    n = x.shape[0]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        lin = lambda t, name: t @ g(p + name + ".weight").T + g(p + name + ".bias")
        h = F.layer_norm(x, (D,), g(p + "layer_norm1.weight"), g(p + "layer_norm1.bias"), cfg["layer_norm_eps"])
        q = ref_rope(lin(h, "self_attn.q_proj").view(n, H, hd), rows, cols)
        k = ref_rope(lin(h, "self_attn.k_proj").view(n, H, hd), rows, cols)
        v = lin(h, "self_attn.v_proj").view(n, H, hd)
        s = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd)
        if i not in cfg["fullatt_block_indexes"]:
            s = s.masked_fill(~win_mask, float("-inf"))
        a = torch.einsum("hij,jhd->ihd", s.softmax(-1), v).reshape(n, D)
        x = x + lin(a, "self_attn.out_proj")
        h = F.layer_norm(x, (D,), g(p + "layer_norm2.weight"), g(p + "layer_norm2.bias"), cfg["layer_norm_eps"])
        act = F.gelu(lin(h, "mlp.fc1"), approximate="tanh" if cfg["hidden_act"] == "gelu_pytorch_tanh" else "none")
        x = x + lin(act, "mlp.fc2")
    x = F.layer_norm(x, (D,), g("post_layernorm.weight"), g("post_layernorm.bias"), cfg["layer_norm_eps"])
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g("ln_q.weight", True)
    x = x.reshape(n // merge**2, merge**2 * D)  # a merged token's patches are adjacent
    x = F.gelu(x @ g("mlp.0.weight", True).T + g("mlp.0.bias", True))
    return x @ g("mlp.2.weight", True).T + g("mlp.2.bias", True)


def ref_tower(w, cfg, patches, gh, gw):
    """float64 forward of the tower + merger as numpy [gh/2*gw/2, out_hidden]."""
    with torch.no_grad():
        return ref_tower_t(w, cfg, patches, gh, gw).numpy()


def ref_target_size(h, w, max_num_patches, patch=16, merge=2):
    unit = patch * merge
    k = 0
    while True:
        s = 1.0 - 0.02 * k
        th = max(unit, math.ceil(h * s / unit) * unit)
        tw = max(unit, math.ceil(w * s / unit) * unit)
        if (th // patch) * (tw // patch) <= max_num_patches:
            return th, tw
        k += 1


def ref_preprocess(img, max_num_patches=36864, patch=16, merge=2):
    th, tw = ref_target_size(img.shape[0], img.shape[1], max_num_patches, patch, merge)
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    r = F.interpolate(t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)[0]
    r = (r / 255.0 - 0.5) / 0.5  # [3, th, tw]
    gh, gw = th // patch, tw // patch
    # [3, gh/m, m, p, gw/m, m, p] -> [gh/m, gw/m, m, m, p, p, 3]
    x = r.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch).permute(1, 4, 2, 5, 3, 6, 0)
    return x.reshape(gh * gw, patch * patch * 3).numpy(), (gh, gw), (th, tw)


def ref_ntpm(Z, positives, valid=None, k=32):
    """NTP-M mean over active tokens of logits Z [L, V] (torch, differentiable):
    loss_i = mean_{P_i} softplus(-z) + mean over the top-k valid negatives (by logit,
    lower id first on ties) of softplus(z); valid: None or a list of id arrays per token."""
    L, V = Z.shape
    losses = []
    for i in range(L):
        z = Z[i]
        M = torch.ones(V, dtype=torch.bool)
        if valid is not None:
            M = torch.zeros(V, dtype=torch.bool)
            M[torch.as_tensor(np.asarray(valid[i]), dtype=torch.long)] = True
        if not M.any():
            continue
        y = torch.zeros(V, dtype=torch.bool)
        y[torch.as_tensor(np.asarray(positives[i]), dtype=torch.long)] = True
        y &= M
        P, C = torch.nonzero(y).flatten(), torch.nonzero(M & ~y).flatten()
        S = C[torch.argsort(-z.detach()[C], stable=True)][:min(k, len(C))]
        li = z.new_zeros(())
        if len(P):
            li = li + F.softplus(-z[P]).mean()
        if len(S):
            li = li + F.softplus(z[S]).mean()
        losses.append(li)
    return torch.stack(losses).mean()
