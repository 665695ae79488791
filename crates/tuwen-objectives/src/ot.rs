//! Word-region alignment by optimal transport (UNITER's WRA): the inexact proximal point method
//! (IPOT, Xie et al. 2019) computes a transport plan between text tokens and regions under a
//! cosine cost; the OT distance `<C, T>` is small for matched pairs. Always computed in f32, the
//! plan without gradient (as the reference), the distance differentiable through the cost.

use burn::tensor::{Bool, Tensor};

use crate::itc::l2_normalize;

/// IPOT settings (UNITER defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IpotConfig {
    /// Proximal step (`beta`).
    pub beta: f32,
    /// Outer iterations.
    pub iterations: usize,
    /// Inner Sinkhorn steps per iteration.
    pub k: usize,
}

impl Default for IpotConfig {
    fn default() -> Self {
        Self {
            beta: 0.5,
            iterations: 50,
            k: 1,
        }
    }
}

/// Cosine cost `1 - cos(text_i, region_j)`, `[B, T, V]`.
pub fn cosine_cost(text: Tensor<3>, regions: Tensor<3>) -> Tensor<3> {
    let norm = |x: Tensor<3>| {
        let [b, n, d] = x.dims();
        l2_normalize(x.reshape([b * n, d])).reshape([b, n, d])
    };
    norm(text)
        .matmul(norm(regions).swap_dims(1, 2))
        .neg()
        .add_scalar(1.0)
}

/// IPOT transport plan `[B, V, T]` (regions x tokens, as the reference) for cost `[B, T, V]`.
/// `text_pad` `[B, T]` / `region_pad` `[B, V]` are true at PADDED positions.
pub fn ipot(
    cost: Tensor<3>,
    text_pad: Tensor<2, Bool>,
    region_pad: Tensor<2, Bool>,
    config: &IpotConfig,
) -> Tensor<3> {
    let [b, m, n] = cost.dims(); // m text tokens, n regions
    let device = cost.device();
    let cost = cost.detach();
    let text_len = text_pad.clone().bool_not().float().sum_dim(1); // [B, 1]
    let region_len = region_pad.clone().bool_not().float().sum_dim(1);
    let joint = text_pad
        .clone()
        .reshape([b, m, 1])
        .expand([b, m, n])
        .bool_or(region_pad.clone().reshape([b, 1, n]).expand([b, m, n]));
    let joint_t = joint.swap_dims(1, 2); // [B, n, m]
    let mut sigma = Tensor::<2>::ones([b, m], &device)
        .div(text_len.clone())
        .mask_fill(text_pad.clone(), 0.0)
        .reshape([b, m, 1]);
    let mut plan = Tensor::<3>::ones([b, n, m], &device).mask_fill(joint_t.clone(), 0.0);
    let a = cost
        .swap_dims(1, 2)
        .div_scalar(-config.beta)
        .exp()
        .mask_fill(joint_t.clone(), 0.0);
    let x_len = text_len.reshape([b, 1, 1]);
    let y_len = region_len.reshape([b, 1, 1]);
    let x_mask = text_pad.float().mul_scalar(1e4).reshape([b, 1, m]);
    let y_mask = region_pad.float().mul_scalar(1e4).reshape([b, 1, n]);
    for _ in 0..config.iterations {
        let q = a.clone() * plan; // [B, n, m]
        let mut delta = Tensor::<3>::zeros([b, 1, n], &device);
        for _ in 0..config.k {
            delta = (y_len.clone() * q.clone().matmul(sigma.clone()).reshape([b, 1, n])
                + y_mask.clone())
            .recip();
            sigma = (x_len.clone() * delta.clone().matmul(q.clone()) + x_mask.clone())
                .recip()
                .reshape([b, m, 1]);
        }
        plan = delta.reshape([b, n, 1]) * q * sigma.clone().reshape([b, 1, m]);
    }
    plan.mask_fill(joint_t, 0.0)
}

/// OT distance `trace(C T)` per pair `[B]`, differentiable through the cost (the plan is
/// detached). Padded positions contribute nothing.
pub fn ot_distance(
    text: Tensor<3>,
    regions: Tensor<3>,
    text_pad: Tensor<2, Bool>,
    region_pad: Tensor<2, Bool>,
    config: &IpotConfig,
) -> Tensor<1> {
    let [b, m, n] = [text.dims()[0], text.dims()[1], regions.dims()[1]];
    let joint = text_pad
        .clone()
        .reshape([b, m, 1])
        .expand([b, m, n])
        .bool_or(region_pad.clone().reshape([b, 1, n]).expand([b, m, n]));
    let cost = cosine_cost(text, regions).mask_fill(joint, 0.0);
    let plan = ipot(cost.clone(), text_pad, region_pad, config); // [B, n, m]
    // trace(C [m x n] @ T [n x m]) = sum_ij C_ij T_ji.
    (cost * plan.swap_dims(1, 2))
        .sum_dim(2)
        .sum_dim(1)
        .reshape([b])
}
