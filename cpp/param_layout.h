// Where each layer's named parameter arrays live and how they are shaped, in PyTorch / ONNX layout
// (conv weight (O, I, KH, KW), fc weight (O, F) with F in C, H, W order, batch norm gamma, beta and
// running statistics (C)). One table serves reading (layer_params) and writing (set_layer_params).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "network.h"

namespace ndlm {

struct ParamSlot {
    std::string name;
    bool running;    // in Network::running() (batch norm statistics) rather than params()
    int64_t offset;  // into that block
    std::vector<int64_t> shape;
    int64_t size() const;
    float* data(Network& net) const;
};

// The named arrays of layer L, in a fixed order (none for layers without parameters).
std::vector<ParamSlot> param_slots(const Layer& L);

}  // namespace ndlm
