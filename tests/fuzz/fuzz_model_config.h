// The model the model-file fuzz seeds are made of (make_model_seeds.cc) and the base the fuzzed
// LoRA adapters are loaded onto: the smallest config ModelConfig::Validate accepts, with favor+
// features, so a whole model file is about 1.5 KB and mutations reach past the header quickly.
#pragma once

#include "base/model_config.h"

namespace slim::fuzz {

inline ModelConfig FuzzModelConfig() {
  ModelConfig c;
  c.vocab_size = 4;
  c.d_model = 2;
  c.n_layers = 1;
  c.n_heads = 1;
  c.d_ff = 2;
  c.feature_map = FeatureMap::kFavorPlus;
  c.n_features = 2;
  c.attention_block = 4;
  c.redraw_interval = 0;
  c.feature_seed = 1;
  return c;
}

}  // namespace slim::fuzz
