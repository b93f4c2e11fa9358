"""Per-aspect proxy reward models (METHOD.md, "Estimating PD", step 1).

One Bradley-Terry reward model r_k per aspect k, trained on D_k (or a fraction ``p_r`` of it),
length-debiased two ways:

- length-balanced resampling: D_k+ (y_w at least as long as y_l) and D_k- are resampled so that
  f+' = exp(f+/tau) / (exp(f+/tau) + exp(f-/tau)); tau = inf gives exactly 50/50, tau = None
  ("off") keeps the data as it is;
- the length term rho in the loss: -log sigmoid(r(x,y_w) - r(x,y_l) + rho * dlen), with dlen the
  word-count difference in units of ``length_unit_words``; the model is scored with r alone.

Two modes:

- ``frozen``: a frozen backbone embeds every (prompt, response) once (mean pooling for encoders,
  last token for decoders; ``layer`` picks a transformer block, ``auto`` the one measured best)
  and a small head per aspect (linear or MLP, ``ensemble`` seeds averaged) is trained on the
  embeddings. The CPU default: MiniLM block 4, a 5-seed ensemble of 128-unit MLP heads. Embeddings
  live in an on-disk cache keyed by the backbone's file contents (weights, config, tokenizer),
  the recipe and the torch / transformers versions, then by text hash; readers take no lock and
  read only the shards holding their texts, writers of missing texts serialise on a file lock,
  so K aspect tasks running in parallel embed each response once overall.
- ``finetune``: the paper's setting, the whole ``AutoModelForSequenceClassification`` (one
  output) trained per aspect.

A shared fine-tuned backbone with K heads is deliberately NOT offered: that backbone would be
trained on every aspect's pairs, so r_k' scoring a pair of D_k would no longer be an
extrapolation (its features were fitted to D_k's labels), which biases PD toward agreement.
``frozen`` mode shares the backbone without that leak because the backbone never sees a label.

Layout written by ``run_reward_model``: ``out_dir/<aspect>/`` with reward_model.json (config,
aspect, fingerprints, metrics), training_ids.json, head.safetensors (frozen) or model/ (finetune),
loss_curve.png, length_bias.png, manifest.json.

Modules: ``config`` (RewardModelConfig), ``embeddings`` (frozen backbones and the embedding
cache), ``training`` (one aspect's model), ``loading`` (saved models and their scorers).
"""

from fgpo_tasks.reward_models.config import (  # noqa: F401
    UNIFIED, MODEL_FILE, EMBED_VERSION, ENCODER_TYPES, _parse_tau, RewardModelConfig, weight_fields, weights_dtype, text_key, resolve_device, default_cache_root)
from fgpo_tasks.reward_models.embeddings import (  # noqa: F401
    length_sorted_batches, padding_fraction, encode_texts, _collate, _autocast, EmbeddingCache, _CACHES, embedding_cache, backbone_fingerprint, library_versions, pool, transformer_blocks, FrozenEmbedder, _EMBEDDERS, get_embedder)
from fgpo_tasks.reward_models.loading import (  # noqa: F401
    _make_head, _score_classifier, load_record, load_scorer, discover_models, load_models)
from fgpo_tasks.reward_models.training import (  # noqa: F401
    word_length, balanced_fraction, _take, length_balanced_indices, bt_loss, spearman, pairwise_accuracy, split_aspect, _accelerator, _one_thread, _train_head, _train_heads, _train_head_loop, _head_margin, _train_classifier, _aspect_rows, _recipe_fingerprint, _length_bias_figure, _loss_figure, _heldout_loss, run_reward_model, _pair_margin_classifier, run_unified_reward_model, summarize_reward_models, run_reward_models)
