//! A weight source that records the names of the tensors a model reads while it loads, so
//! that an adapter's change of a tensor nobody reads (a layer the model skips) can be told
//! apart from a change the model would need but cannot apply.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// The names a [`RecordingWeights`] was asked for.
#[derive(Clone, Default)]
pub struct ReadLog(Arc<Mutex<BTreeSet<String>>>);

impl ReadLog {
    /// Whether the model read `name`.
    pub fn contains(&self, name: &str) -> bool {
        match self.0.lock() {
            Ok(read) => read.contains(name),
            Err(poisoned) => poisoned.into_inner().contains(name),
        }
    }

    /// Those of `names` the model never read: tensors of layers it skips (e.g. vision layers
    /// after `select_layer`), where an adapter has no effect.
    pub fn unread<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !self.contains(n))
            .map(str::to_string)
            .collect()
    }

    fn record(&self, name: &str) {
        match self.0.lock() {
            Ok(mut read) => read.insert(name.to_string()),
            Err(poisoned) => poisoned.into_inner().insert(name.to_string()),
        };
    }
}

/// `base`, recording each name read.
pub struct RecordingWeights {
    base: VarBuilder<'static>,
    log: ReadLog,
}

impl RecordingWeights {
    /// `base` behind a recorder, and the log it writes.
    pub fn wrap(base: VarBuilder<'static>) -> (VarBuilder<'static>, ReadLog) {
        let log = ReadLog::default();
        let (dtype, device) = (base.dtype(), base.device().clone());
        let weights = RecordingWeights {
            base,
            log: log.clone(),
        };
        (
            VarBuilder::from_backend(Box::new(weights), dtype, device),
            log,
        )
    }
}

impl SimpleBackend for RecordingWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.log.record(name);
        self.base.get_with_hints_dtype(s, name, h, dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.log.record(name);
        self.base.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_was_read_and_nothing_else() {
        let device = Device::Cpu;
        let tensors = [
            (
                "a.weight".to_string(),
                Tensor::zeros((2, 3), DType::F32, &device).unwrap(),
            ),
            (
                "b.weight".to_string(),
                Tensor::ones(4, DType::F32, &device).unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        let base = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let (vb, log) = RecordingWeights::wrap(base);
        let a = vb.pp("a").get((2, 3), "weight").unwrap();
        assert_eq!(a.dims(), &[2, 3]);
        assert!(vb.contains_tensor("b.weight"));
        assert!(log.contains("a.weight"));
        assert!(!log.contains("b.weight"), "contains_tensor is not a read");
    }
}
