//! `/api/v1/cluster`: the members as this node sees them.

use actix_web::{HttpResponse, web};

use valueverse_cluster::node::ClusterNode;

use super::schemas::ClusterView;

/// Members with their state (alive, suspect, down), addresses, lease,
/// load, and this node's view of how ownership spreads over them.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "this node's view of the cluster", body = ClusterView),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn view(cluster: web::Data<ClusterNode>) -> HttpResponse {
    HttpResponse::Ok().json(ClusterView::from(cluster.view().await))
}
