//! `/api/v1/cluster`: the members as this node sees them.

use super::scope::Scope;
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
pub(crate) async fn view(scope: Scope, cluster: web::Data<ClusterNode>) -> HttpResponse {
    let view = ClusterView::from(cluster.view().await);
    // The operator sees the links between nodes; a tenant only members.
    let view = if scope.sees_operations() {
        view
    } else {
        view.for_tenant()
    };
    HttpResponse::Ok().json(view)
}
