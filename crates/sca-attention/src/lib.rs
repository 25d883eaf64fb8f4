//! The spatial cross-attention add-on (SPEC §4 items 3-5, paper §2.3 and
//! supplementary 1.1): correlation mask μ, attention mask β, explanation maps and the
//! cluster classifier. Pure tensor code, generic over `B: Backend`; the backbone is not a
//! dependency: callers hand in plain feature maps and, where needed, a closure for the
//! backbone stages that follow the tap.
//!
//! # Design choices
//! - **Which features** ([`Tap`]): the caller passes the four stage maps
//!   `[c2, c3, c4, c5]` (outputs of layer1..layer4). `Last` uses c5 (7×7 at 224 px).
//!   `Stage3` uses c4 (layer3, 14×14); its explanation map then goes through the
//!   caller's layer4 before pooling. `Multi` resizes c3, c4, c5 (stages 2-4) bilinearly
//!   to the c3 grid (28×28 at 224 px) and concatenates them on channels
//!   (D = 512 + 1024 + 2048 for ResNet-50).
//! - **Bilinear resizing** matches PyTorch's
//!   `F.interpolate(x, size, mode="bilinear", align_corners=False)` (half-pixel centres,
//!   source coordinates clamped at 0), as two matmuls with the interpolation matrices
//!   ([`resize_bilinear`]: Burn's bilinear `interpolate` has no backward on CubeCL); a test
//!   pins the PyTorch values.
//! - **μ** ([`correlation_mask`], eq. 3-4): ρ_ij = max_{i'j'} ⟨f_s\[ij\], f'\[i'j'\]⟩ / D as one
//!   batched matmul `[B·P, HW, D]·[B·P, D, H'W']` (the source repeated over its P positives)
//!   and a max over the last axis; μ = mean over the P positives; then, by default, min-max
//!   normalised per image to [0, 1] so a sigmoid β can track it (a constant μ becomes 0).
//!   μ is computed from detached inputs: no graph, no gradient (the paper's stop-gradient;
//!   without it the supervision signal could collapse the features).
//! - **β** ([`AttentionHead`], eq. 5): sigmoid(conv1×1(relu(f))), D → 1 with bias, stride 1.
//!   β is computed for the sources and the positives; only the sources' β has a target:
//!   L_μ = mean over batch and H×W of (β_source − μ)², so L_μ's gradient reaches the
//!   backbone through β alone.
//! - **Classifier** ([`ClusterClassifier`], eq. 6): for every image of {I_s, P}:
//!   f ⊙ β (β broadcast over channels) → the caller's remaining stages (identity for
//!   `Last`/`Multi`) → global average pool → Linear(C). L_cls = cross-entropy of
//!   softmax(logits/τ_c) at the pseudo-label, averaged over all B·(1+P) images (sources
//!   and positives weigh the same), τ_c = 0.05.
//! - **Losses** come from `sca-losses` (`attention_mse`, `pseudo_label_ce`); [`AddOnOutput`]
//!   also carries `w1·L_μ + w2·L_cls` with (w1, w2) = (0.05, 0.1).
//! - **Detachable**: [`AddOn`] is its own module (β conv + classifier), separate from the
//!   backbone, so a saved backbone holds none of its parameters.

pub mod addon;
pub mod correlation;
pub mod head;
pub mod tap;

pub use addon::{labels_tensor, AddOn, AddOnConfig, AddOnOutput};
pub use correlation::{correlation_mask, MaskNorm};
pub use head::{
    explanation, global_avg_pool, AttentionHead, AttentionHeadConfig, ClusterClassifier,
    ClusterClassifierConfig,
};
pub use tap::{classifier_channels, resize_bilinear, tap_channels, tap_features, Tap};
