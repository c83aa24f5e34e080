//! One module per RPC of `rewarddance.v1.RewardService`, each a function over the shared
//! [`Core`](crate::shared::Core); [`crate::service`] routes the trait's methods to them. The
//! handlers do not import each other.

pub(crate) mod info;
pub(crate) mod rank;
pub(crate) mod score;
pub(crate) mod score_grad;
pub(crate) mod score_stream;
