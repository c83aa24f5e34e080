//! `Score`: one request's items, answered together.

use rewarddance_proto::v1;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::calls::Call;
use crate::convert;
use crate::deadline::{self, Arrived};
use crate::shared::{collect, Core, ItemAdmitError};

/// Handles one `Score` call.
pub(crate) async fn handle(
    core: &Core,
    request: Request<v1::ScoreRequest>,
) -> Result<Response<v1::ScoreResponse>, Status> {
    let mut call = Call::start("Score", &request);
    let deadline = deadline::deadline_of(request.metadata(), Arrived::of(request.extensions()));
    let body = request.into_inner();
    call.items(body.items.len());
    let span = tracing::info_span!("score", items = body.items.len());
    let result = async {
        deadline::check_budget(deadline, body.items.len())?;
        let items = convert::request(body, &core.limits).map_err(ItemAdmitError::Invalid)?;
        let items = match core.admit(items, deadline, &tracing::Span::current(), &[]) {
            Ok(items) => items,
            Err(ItemAdmitError::Refused(e)) => {
                tracing::warn!(error = %e, "request refused");
                return Err(ItemAdmitError::Refused(e).into());
            }
            Err(invalid) => return Err(invalid.into()),
        };
        let response = collect(items, deadline, &core.model_id, None).await?;
        Ok(Response::new(response))
    }
    .instrument(span)
    .await;
    call.finish_with(&result);
    result
}
