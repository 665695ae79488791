//! RoIAlign properties beyond torchvision parity (which `tuwen parity` checks on fixtures).

use burn::tensor::{Tensor, TensorData};
use tuwen_regions::{RoiAlign, RoiAlignError};
use tuwen_testkit::{assert_close, flex};

fn op(aligned: bool, ratio: i32) -> RoiAlign {
    RoiAlign {
        output_size: [2, 2],
        spatial_scale: 1.0,
        sampling_ratio: ratio,
        aligned,
    }
}

#[test]
fn constant_map_pools_to_the_constant_inside_the_image() {
    let device = flex();
    let features = Tensor::<4>::ones([1, 3, 8, 8], &device).mul_scalar(2.5);
    let out = op(true, -1)
        .forward_boxes(features, &[[0.0, 1.0, 1.0, 6.0, 5.0]])
        .unwrap();
    assert_eq!(out.dims(), [1, 3, 2, 2]);
    assert_close(
        "constant",
        &out,
        &Tensor::ones([1, 3, 2, 2], &device).mul_scalar(2.5),
        1e-6,
    );
}

#[test]
fn gradient_reaches_only_the_sampled_cells() {
    let device = flex().autodiff();
    let features = Tensor::<4>::ones([1, 1, 8, 8], &device).require_grad();
    let out = op(false, 2)
        .forward_boxes(features.clone(), &[[0.0, 0.0, 0.0, 3.0, 3.0]])
        .unwrap();
    let grads = out.sum().backward();
    let grad: Vec<f32> = features
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    // Every sampled weight sums to one per bin: 4 bins -> total gradient 4.
    assert!((grad.iter().sum::<f32>() - 4.0).abs() < 1e-5);
    // Cells far from the box get nothing.
    assert_eq!(grad[7 * 8 + 7], 0.0);
}

#[test]
fn boxes_on_several_images_keep_their_order() {
    let device = flex();
    let a = Tensor::<4>::ones([1, 1, 4, 4], &device);
    let features = Tensor::cat(vec![a.clone(), a.mul_scalar(3.0)], 0);
    let out = op(true, 1)
        .forward_boxes(
            features,
            &[[1.0, 0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 2.0, 2.0]],
        )
        .unwrap();
    let v: Vec<f32> = out.into_data().try_into_vec_as().unwrap();
    assert!(v[..4].iter().all(|&x| (x - 3.0).abs() < 1e-6), "{v:?}");
    assert!(v[4..].iter().all(|&x| (x - 1.0).abs() < 1e-6), "{v:?}");
}

#[test]
fn bad_boxes_are_errors() {
    let device = flex();
    let features = Tensor::<4>::zeros([1, 1, 4, 4], &device);
    let err = op(true, 1)
        .forward_boxes(features.clone(), &[[1.0, 0.0, 0.0, 1.0, 1.0]])
        .unwrap_err();
    assert!(matches!(err, RoiAlignError::BatchIndex { .. }), "{err}");
    let err = op(true, 1)
        .forward_boxes(features.clone(), &[[0.0, f32::NAN, 0.0, 1.0, 1.0]])
        .unwrap_err();
    assert_eq!(err, RoiAlignError::NonFinite(0));
    let boxes = Tensor::<2>::from_data(TensorData::new(vec![0.0f32; 4], [1, 4]), &device);
    assert!(matches!(
        op(true, 1).forward(features, boxes),
        Err(RoiAlignError::BoxShape(_))
    ));
}
