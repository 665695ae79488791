//! A differentiable matrix product in bf16 with f32 accumulation on Flex: a Burn backend
//! extension ([`Bf16Matmul`]) whose Flex implementation runs `tuwen_kernels::bf16` and whose
//! autodiff implementation has its own backward — the two gradient products run in bf16 too, as
//! under PyTorch's `torch.autocast(dtype=bfloat16)`: `dA = dC Bᵀ`, `dB = Aᵀ dC`, operands
//! rounded to bf16, sums in f32.
//!
//! Written by hand: Burn 0.22's Flex computes a bf16 product by converting to f32, so bf16
//! training needs an operation of tuwen's own, and Burn's backend extensions generate only the
//! routing (`#[backend_extension]`), not the backward.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, BackendTensor, Dispatch, DispatchTensorKind, Flex, TensorMetadata,
    backend_extension,
};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use tuwen_kernels::bf16::{Operand, PackedB};

/// Burn backend extension: `lhs [m, k] x rhs [k, n]` with both operands rounded to bf16
/// (nearest even) and the products summed in f32. Implemented for Flex (f32 tensors; other
/// dtypes multiply through Flex's own product) and for autodiff over it.
#[backend_extension(Flex, Autodiff)]
pub trait Bf16Matmul: Backend {
    /// The product; see the trait.
    fn bf16_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `[rows, cols]` of a matrix operand.
fn matrix_dims(shape: &Shape, what: &str) -> [usize; 2] {
    match shape.as_slice() {
        &[rows, cols] => [rows, cols],
        dims => panic!("bf16_matmul: {what} must be a matrix, got shape {dims:?}"),
    }
}

impl Bf16Matmul for Flex {
    fn bf16_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
            return Self::float_matmul(lhs, rhs);
        }
        let [m, k] = matrix_dims(&lhs.shape(), "the left operand");
        let [k_rhs, n] = matrix_dims(&rhs.shape(), "the right operand");
        assert_eq!(
            k, k_rhs,
            "bf16_matmul: inner sizes differ ({m}x{k} by {k_rhs}x{n})"
        );
        let device = lhs.device();
        let (lhs, rhs) = (MatrixView::of(lhs), MatrixView::of(rhs));
        let packed = PackedB::new(rhs.operand(), k, n);
        let out = crate::precision::bf16_product(lhs.operand(), m, &packed);
        Self::float_from_data(TensorData::new(out, [m, n]), &device)
    }
}

/// An f32 Flex matrix as the kernel reads it: row-major, or a transposed view of a row-major
/// matrix (the backward's `xᵀ` and `Wᵀ`: read where they lie, not copied); any other layout
/// is copied to row-major first.
struct MatrixView {
    tensor: FloatTensor<Flex>,
    transposed: bool,
}

impl MatrixView {
    fn of(tensor: FloatTensor<Flex>) -> Self {
        if tensor.as_slice::<f32>().is_some() {
            return Self {
                tensor,
                transposed: false,
            };
        }
        let layout = tensor.layout();
        let [rows, _] = matrix_dims(layout.shape(), "an operand");
        if layout.strides() == [1, rows as isize] {
            return Self {
                tensor,
                transposed: true,
            };
        }
        Self {
            tensor: tensor.to_contiguous(),
            transposed: false,
        }
    }

    fn operand(&self) -> Operand<'_> {
        if !self.transposed {
            let values = self.tensor.as_slice::<f32>();
            return Operand::Rows(values.expect("a row-major f32 tensor has a slice"));
        }
        let layout = self.tensor.layout();
        let start = layout.start_offset();
        let len = layout.num_elements();
        Operand::Transposed(&self.tensor.storage::<f32>()[start..start + len])
    }
}

/// The backward of [`Bf16Matmul::bf16_matmul`] under autodiff.
#[derive(Debug)]
struct Bf16MatmulBackward;

impl<B: Bf16Matmul> Backward<B, 2> for Bf16MatmulBackward {
    /// The operands, kept only where the other one needs a gradient.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| checkpointer.retrieve_node_output(id));
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::bf16_matmul(grad, B::float_transpose(rhs.expect("kept for dA"))),
            |grad| B::bf16_matmul(B::float_transpose(lhs.expect("kept for dB")), grad),
        );
    }
}

impl<B: Bf16Matmul, C: CheckpointStrategy> Bf16Matmul for Autodiff<B, C> {
    fn bf16_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match Bf16MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::bf16_matmul(lhs.into_primitive(), rhs.into_primitive());
                prep.finish((lhs_state, rhs_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::bf16_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }
}

/// A weight packed for the kernel, and the Flex tensor it was packed from (kept alive, so its
/// buffer's address cannot be reused by other values while the entry exists).
struct PackedWeight {
    source: FloatTensor<Flex>,
    packed: Rc<PackedB>,
}

thread_local! {
    /// Inference weights packed in this thread's bf16 scope, by their buffer's address.
    static PACKED: RefCell<HashMap<usize, PackedWeight>> = RefCell::new(HashMap::new());
}

/// `weight` (`[d_in, d_out]`, a plain Flex tensor) packed for the kernel, packed once while
/// this thread's bf16 scope lasts. Entries are keyed by the weight's buffer (address, layout),
/// not by parameter id: two models (even with the same ids, as runs fine-tuned from one
/// pretraining run have) never share one. The entry holds the weight, so its buffer can neither
/// be reused for other values nor written in place (Flex copies a buffer it does not own alone
/// before writing) while the entry exists. The entries go when the scope ends
/// ([`forget_packed_weights`]).
pub(crate) fn packed_weight(weight: Tensor<2>) -> Rc<PackedB> {
    let [d_in, d_out] = weight.dims();
    let DispatchTensorKind::Flex(BackendTensor::Float(source)) = weight.into_dispatch().kind else {
        panic!("packed_weight takes a plain f32 Flex tensor");
    };
    let key = Arc::as_ptr(&source.data_arc()) as *const u8 as usize;
    let same =
        |entry: &PackedWeight| entry.source.layout() == source.layout() && entry.packed.k() == d_in;
    if let Some(packed) = PACKED.with_borrow(|cache| {
        cache
            .get(&key)
            .filter(|e| same(e))
            .map(|e| Rc::clone(&e.packed))
    }) {
        return packed;
    }
    let view = MatrixView::of(source.clone());
    let packed = Rc::new(PackedB::new(view.operand(), d_in, d_out));
    let entry = PackedWeight {
        source,
        packed: Rc::clone(&packed),
    };
    PACKED.with_borrow_mut(|cache| cache.insert(key, entry));
    packed
}

/// Drops this thread's packed weights (its last bf16 scope ended).
pub(crate) fn forget_packed_weights() {
    PACKED.with_borrow_mut(HashMap::clear);
}

/// `lhs x rhs` in bf16 with f32 sums, on a Flex device (with or without autodiff).
pub(crate) fn bf16_matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let out = <Dispatch as Bf16Matmul>::bf16_matmul(lhs.into_dispatch(), rhs.into_dispatch());
    Tensor::from_dispatch(out)
}
