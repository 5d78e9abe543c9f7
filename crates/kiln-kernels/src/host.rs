//! The host buffer of a CPU backend's tensor, borrowed in place.
//!
//! [`HostTensor::new`] takes a tensor of any backend and succeeds when it is an `f32` tensor of a
//! CPU backend compiled into this crate (`flex`, `ndarray` features), stored contiguously from the
//! start of its buffer; otherwise it gives the tensor back untouched, and the caller uses burn's
//! tensor operations. The backend is recognized at run time by downcasting its tensor primitive,
//! so generic code needs no extra trait bound.

use std::any::Any;
use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// A float tensor whose `f32` elements can be read and written on the host without a copy.
pub struct HostTensor<B: Backend, const D: usize> {
    primitive: B::FloatTensorPrimitive,
    len: usize,
    _backend: PhantomData<B>,
}

impl<B: Backend, const D: usize> HostTensor<B, D> {
    /// Borrows `tensor`'s buffer, or gives `tensor` back when its backend, dtype or layout do not
    /// allow it.
    pub fn new(tensor: Tensor<B, D>) -> Result<Self, Tensor<B, D>> {
        let len = tensor.shape().num_elements();
        let primitive = match tensor.into_primitive() {
            TensorPrimitive::Float(p) => p,
            other => return Err(Tensor::from_primitive(other)),
        };
        let this = Self {
            primitive,
            len,
            _backend: PhantomData,
        };
        if this.supported() {
            Ok(this)
        } else {
            Err(this.into_tensor())
        }
    }

    /// Whether the buffer is one of the known CPU types, `f32`, contiguous from offset 0.
    fn supported(&self) -> bool {
        let len = self.len;
        let any = &self.primitive as &dyn Any;
        #[cfg(feature = "flex")]
        if let Some(t) = any.downcast_ref::<burn::backend::flex::FlexTensor>() {
            return t.dtype() == burn::tensor::DType::F32
                && t.layout().contiguous_offsets() == Some((0, len));
        }
        #[cfg(feature = "ndarray")]
        if let Some(burn::backend::ndarray::NdArrayTensor::F32(s)) =
            any.downcast_ref::<burn::backend::ndarray::NdArrayTensor>()
        {
            let view = s.view();
            return view.is_standard_layout() && view.len() == len;
        }
        let _ = (any, len);
        false
    }

    /// The tensor's shape.
    pub fn shape(&self) -> Vec<usize> {
        use burn::tensor::TensorMetadata;
        self.primitive.shape().to_vec()
    }

    /// The tensor's device.
    pub fn device(&self) -> B::Device {
        B::float_device(&self.primitive)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        let any = &self.primitive as &dyn Any;
        #[cfg(feature = "flex")]
        if let Some(t) = any.downcast_ref::<burn::backend::flex::FlexTensor>() {
            return &t.storage::<f32>()[..self.len];
        }
        #[cfg(feature = "ndarray")]
        if let Some(burn::backend::ndarray::NdArrayTensor::F32(s)) =
            any.downcast_ref::<burn::backend::ndarray::NdArrayTensor>()
        {
            return s
                .view()
                .to_slice()
                .expect("checked in new: standard layout");
        }
        let _ = any;
        unreachable!("HostTensor::new accepts only the CPU tensor types")
    }

    /// The elements, writable; a buffer shared with another tensor is copied first
    /// (copy-on-write), so the other tensor never sees the writes.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.len;
        #[allow(unused_variables)]
        let any = &mut self.primitive as &mut dyn Any;
        #[cfg(feature = "flex")]
        if any.is::<burn::backend::flex::FlexTensor>() {
            let t = any
                .downcast_mut::<burn::backend::flex::FlexTensor>()
                .expect("checked");
            return &mut t.storage_mut::<f32>()[..len];
        }
        #[cfg(feature = "ndarray")]
        if let Some(burn::backend::ndarray::NdArrayTensor::F32(s)) =
            any.downcast_mut::<burn::backend::ndarray::NdArrayTensor>()
        {
            return s
                .ensure_owned()
                .as_slice_mut()
                .expect("checked in new: standard layout");
        }
        let _ = len;
        unreachable!("HostTensor::new accepts only the CPU tensor types")
    }

    /// The tensor again, with whatever was written.
    pub fn into_tensor(self) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(self.primitive))
    }
}

/// Whether tensors of backend `B` can be borrowed as [`HostTensor`]s (`B` is a CPU backend
/// compiled into this crate).
pub fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    HostTensor::<B, 1>::new(Tensor::zeros([1], device)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::TensorData;

    fn roundtrip<B: Backend>() {
        let device = Default::default();
        let t =
            Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [2, 2]), &device);
        let kept = t.clone();
        let mut h = HostTensor::new(t).unwrap_or_else(|_| unreachable!("a CPU tensor"));
        assert_eq!(h.as_slice(), &[1., 2., 3., 4.]);
        h.as_mut_slice()[3] = 9.0;
        let out = h.into_tensor().into_data().to_vec::<f32>().unwrap();
        assert_eq!(out, vec![1., 2., 3., 9.]);
        // The clone shared the buffer: copy-on-write left it alone.
        assert_eq!(
            kept.into_data().to_vec::<f32>().unwrap(),
            vec![1., 2., 3., 4.]
        );
    }

    #[test]
    fn flex_and_ndarray_buffers_are_borrowed_and_written() {
        roundtrip::<Flex>();
        roundtrip::<NdArray>();
        assert!(is_host_backend::<Flex>(&Default::default()));
    }

    fn transposed_is_declined<B: Backend>() {
        let device = Default::default();
        let t = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [2, 3]),
            &device,
        );
        let t = t.transpose();
        let back = HostTensor::new(t)
            .err()
            .expect("a transposed view is not contiguous");
        assert_eq!(
            back.into_data().to_vec::<f32>().unwrap(),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn non_contiguous_views_are_given_back_unchanged() {
        transposed_is_declined::<Flex>();
        transposed_is_declined::<NdArray>();
    }
}
