//! Objectives against PyTorch reference values (`fixtures/make_reference.py`).

use std::collections::BTreeMap;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use tuwen_objectives::itc::symmetric_infonce;
use tuwen_objectives::mrm::{mrc_kl_loss, mrc_loss, mrfr_loss};
use tuwen_objectives::ot::{IpotConfig, cosine_cost, ipot, ot_distance};
use tuwen_testkit::{assert_close, devices};

const TOL: f32 = 1e-5;

fn reference() -> BTreeMap<String, TensorData> {
    let path = tuwen_testkit::package_path("tests/fixtures/reference.safetensors");
    tuwen_fusion::weights::read_tensors(&path).unwrap()
}

fn scalar(x: Tensor<1>) -> f32 {
    x.into_scalar::<f32>()
}

#[test]
fn losses_match_pytorch_on_every_backend() {
    let r = reference();
    for backend in devices("losses_match_pytorch_on_every_backend") {
        let d = &backend.device;
        let f3 = |n: &str| Tensor::<3>::from_data(r[n].clone(), d);
        let f2 = |n: &str| Tensor::<2>::from_data(r[n].clone(), d);
        let value = |n: &str| r[n].clone().try_into_vec_as::<f32>().unwrap()[0];
        let pad = |n: &str| Tensor::<2, Int>::from_data(r[n].clone(), d).equal_elem(1);
        let close = |what: &str, got: f32, want: f32| {
            assert!(
                (got - want).abs() < TOL,
                "[{}] {what}: {got} vs {want}",
                backend.name
            );
        };

        // Optimal transport: plan and distance.
        let (text_pad, region_pad): (Tensor<2, Bool>, Tensor<2, Bool>) =
            (pad("ot_text_pad"), pad("ot_region_pad"));
        let dist = ot_distance(
            f3("ot_text"),
            f3("ot_regions"),
            text_pad.clone(),
            region_pad.clone(),
            &IpotConfig::default(),
        );
        let want: Vec<f32> = r["ot_distance"].clone().try_into_vec_as().unwrap();
        let got: Vec<f32> = dist.into_data().try_into_vec_as().unwrap();
        for (g, w) in got.iter().zip(&want) {
            close("OT distance", *g, *w);
        }
        let [b, m, n] = [2, 5, 4];
        let joint = text_pad
            .clone()
            .reshape([b, m, 1])
            .expand([b, m, n])
            .bool_or(region_pad.clone().reshape([b, 1, n]).expand([b, m, n]));
        let cost = cosine_cost(f3("ot_text"), f3("ot_regions")).mask_fill(joint, 0.0);
        let plan = ipot(cost, text_pad, region_pad, &IpotConfig::default());
        assert_close(
            &format!("[{}] IPOT plan", backend.name),
            &plan,
            &f3("ot_plan"),
            TOL,
        );

        // Masked region modelling at flat positions 1, 4, 6.
        let positions = [1usize, 4, 6];
        close(
            "MRC-KL",
            scalar(mrc_kl_loss(f3("mrc_logits"), f3("mrc_target"), &positions).loss),
            value("mrc_kl"),
        );
        close(
            "MRC",
            scalar(mrc_loss(f3("mrc_logits"), f3("mrc_target"), &positions).loss),
            value("mrc_ce"),
        );
        close(
            "MRFR",
            scalar(mrfr_loss(f3("mrfr_pred"), f3("mrfr_orig"), &positions).loss),
            value("mrfr_mse"),
        );

        // ITC and label-smoothed cross-entropy.
        close(
            "ITC",
            scalar(symmetric_infonce(f2("itc_sim"))),
            value("itc_loss"),
        );
        let targets = Tensor::<1, Int>::from_data(r["ce_targets"].clone(), d);
        let smoothed = CrossEntropyLossConfig::new()
            .with_smoothing(Some(0.1))
            .init(d)
            .forward(f2("ce_logits"), targets);
        close("label-smoothed CE", scalar(smoothed), value("ce_smoothed"));
    }
}
