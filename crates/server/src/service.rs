//! `rewarddance.v1.RewardService`: the one `impl` of the generated trait, routing each RPC to
//! its handler in [`crate::handlers`].

use std::pin::Pin;
use std::sync::Arc;

use rewarddance_engine::Engine;
use rewarddance_proto::v1;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::ServerArgs;
use crate::handlers::{info, rank, score, score_grad, score_stream};
use crate::shared::Core;

/// The service implementation (cheap to clone).
#[derive(Clone)]
pub struct RewardApi {
    core: Core,
    info: Arc<v1::InfoResponse>,
}

impl RewardApi {
    /// Builds the service over a started engine.
    pub fn new(engine: Engine, args: &ServerArgs) -> Self {
        let info = Arc::new(info::response(&engine, args));
        crate::telemetry::register_families(&info);
        RewardApi {
            core: Core::new(engine, args),
            info,
        }
    }
}

#[tonic::async_trait]
impl v1::reward_service_server::RewardService for RewardApi {
    async fn score(
        &self,
        request: Request<v1::ScoreRequest>,
    ) -> Result<Response<v1::ScoreResponse>, Status> {
        score::handle(&self.core, request).await
    }

    async fn score_grad(
        &self,
        request: Request<v1::ScoreGradRequest>,
    ) -> Result<Response<v1::ScoreGradResponse>, Status> {
        score_grad::handle(&self.core, request).await
    }

    type ScoreStreamStream =
        Pin<Box<dyn Stream<Item = Result<v1::ScoreResponse, Status>> + Send + 'static>>;

    async fn score_stream(
        &self,
        request: Request<Streaming<v1::ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        let responses = score_stream::handle(&self.core, request)?;
        Ok(responses.map(|out| Box::pin(out) as Self::ScoreStreamStream))
    }

    async fn rank(
        &self,
        request: Request<v1::RankRequest>,
    ) -> Result<Response<v1::RankResponse>, Status> {
        rank::handle(&self.core, request).await
    }

    async fn info(
        &self,
        request: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        info::handle(&self.info, request)
    }
}
