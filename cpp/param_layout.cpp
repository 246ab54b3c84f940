#include "param_layout.h"

#include "checked_size.h"

namespace ndlm {

int64_t ParamSlot::size() const {
    int64_t n = 1;
    for (int64_t s : shape) n = checked_mul(n, s, name.c_str());
    return n;
}

float* ParamSlot::data(Network& net) const {
    return (running ? net.running().data() : net.params()) + offset;
}

std::vector<ParamSlot> param_slots(const Layer& L) {
    switch (L.spec.type) {
        case LayerType::BatchNorm:
            return {{"gamma", false, L.w_off, {L.inC}},
                    {"beta", false, L.b_off, {L.inC}},
                    {"running_mean", true, L.run_off, {L.inC}},
                    {"running_var", true, L.run_off + L.inC, {L.inC}}};
        case LayerType::Conv:
            return {{"weight", false, L.w_off, {L.outC, L.inC, L.spec.kh, L.spec.kw}},
                    {"bias", false, L.b_off, {L.outC}}};
        case LayerType::FC:
            return {{"weight", false, L.w_off, {L.outC, L.in_size()}}, {"bias", false, L.b_off, {L.outC}}};
        default:
            return {};
    }
}

}  // namespace ndlm
